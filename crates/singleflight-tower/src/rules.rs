//! The HTTP rules the layer applies, as pure functions of headers: what a
//! key is made of, which requests carry credentials, which responses are
//! private to their requester, what a response varies on.
//!
//! Nothing here holds state or touches the network, so every rule is tested
//! here on its own.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, DATE, EXPIRES, HOST, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, PRAGMA, PROXY_AUTHORIZATION, RANGE, SET_COOKIE,
    VARY,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Request headers that make a request its sender's own: such a request is
/// coalesced only when the header is part of the key.
pub(crate) const CREDENTIALS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// Request headers that change what the response is (a part, or a 304/412
/// instead of the resource): always part of the key when present, so that a
/// conditional or partial response never reaches a waiter that did not ask
/// for it.
pub(crate) const CONDITIONS: [HeaderName; 6] = [
    RANGE,
    IF_RANGE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
];

/// Whether a request carries a credential that is not part of the key.
pub(crate) fn carries_credentials(headers: &HeaderMap, key_headers: &[HeaderName]) -> bool {
    CREDENTIALS
        .iter()
        .any(|name| headers.contains_key(name) && !key_headers.contains(name))
}

/// Appends method, scheme, authority (or `Host`), path and query of a
/// request: what names the resource.
pub(crate) fn push_resource(key: &mut String, head: &Parts) {
    let uri = &head.uri;
    let authority = uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| head.headers.get(HOST).and_then(|host| host.to_str().ok()))
        .unwrap_or("");
    key.push_str(head.method.as_str());
    key.push(' ');
    key.push_str(uri.scheme_str().unwrap_or(""));
    key.push_str("://");
    key.push_str(authority);
    key.push_str(uri.path_and_query().map_or("/", |path| path.as_str()));
}

/// Appends, for each of `names`, a line with the name and the request's
/// values of it, in order (an absent header gives an empty value, so that
/// absent and present always differ).
pub(crate) fn push_header_values<'a>(
    key: &mut String,
    headers: &HeaderMap,
    names: impl IntoIterator<Item = &'a HeaderName>,
) {
    for name in names {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
}

/// The conditional and range headers a request carries.
pub(crate) fn conditions_of(headers: &HeaderMap) -> impl Iterator<Item = &'static HeaderName> {
    CONDITIONS
        .iter()
        .filter(move |name| headers.contains_key(*name))
}

/// A response's `Cache-Control` directives, each trimmed, as written
/// (`max-age=60`, `private`).
pub(crate) fn cache_directives(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
}

/// Whether `Cache-Control` has `directive` (compared without its argument,
/// ignoring case).
pub(crate) fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    cache_directives(headers).any(|written| {
        written
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(directive)
    })
}

/// Whether a response is for its own requester only: it sets a cookie, or
/// is marked `private` or `no-store`.
pub(crate) fn is_private(headers: &HeaderMap) -> bool {
    headers.contains_key(SET_COOKIE)
        || has_directive(headers, "private")
        || has_directive(headers, "no-store")
}

/// Whether a response may reach requests other than the one that fetched
/// it, by the layer's rules: it is not private to its requester
/// (`Set-Cookie`, `Cache-Control: private` or `no-store`) and does not say
/// `Vary: *`. A service behind the layer that shares responses further
/// (across processes, say) keeps the same rule, and must also keep apart
/// requests that differ in a header the response varies on.
///
/// # Examples
///
/// ```
/// use http::header::{HeaderMap, HeaderValue, SET_COOKIE};
///
/// let mut headers = HeaderMap::new();
/// assert!(singleflight_tower::is_shareable(&headers));
/// headers.insert(SET_COOKIE, HeaderValue::from_static("session=1"));
/// assert!(!singleflight_tower::is_shareable(&headers));
/// ```
pub fn is_shareable(headers: &HeaderMap) -> bool {
    !is_private(headers) && !vary_of(headers).1
}

/// The header names of a response's `Vary`, each once, and whether it says
/// `*` (or names something that is not a header name, which is treated the
/// same way: a header we cannot compare on).
pub(crate) fn vary_of(headers: &HeaderMap) -> (Vec<HeaderName>, bool) {
    let mut names = Vec::new();
    let mut star = false;
    let written = headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in written {
        if name == "*" {
            star = true;
        } else if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            if !names.contains(&name) {
                names.push(name);
            }
        } else {
            star = true;
        }
    }
    (names, star)
}

/// The values of `names` in `headers`, in order.
pub(crate) fn values_of(headers: &HeaderMap, names: &[HeaderName]) -> Vec<Vec<HeaderValue>> {
    names
        .iter()
        .map(|name| headers.get_all(name).iter().cloned().collect())
        .collect()
}

/// Whether `headers` has, for each of `names`, exactly the values in
/// `expected` (as [`values_of`] gives them).
pub(crate) fn same_values(
    headers: &HeaderMap,
    names: &[HeaderName],
    expected: &[Vec<HeaderValue>],
) -> bool {
    names
        .iter()
        .zip(expected)
        .all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
}

/// The argument of `Cache-Control`'s `directive` as seconds: `None` when
/// the directive is absent, `Some(None)` when it is present without a number
/// it can be read as (RFC 9111 §1.2.2: treated as invalid).
pub(crate) fn directive_seconds(headers: &HeaderMap, directive: &str) -> Option<Option<u64>> {
    cache_directives(headers).find_map(|written| {
        let (name, argument) = written.split_once('=').unwrap_or((written, ""));
        name.trim().eq_ignore_ascii_case(directive).then(|| {
            let argument = argument.trim().trim_matches('"');
            // Delta-seconds too large for a u64 are "infinity" (§1.2.2).
            if !argument.is_empty() && argument.bytes().all(|b| b.is_ascii_digit()) {
                Some(argument.parse().unwrap_or(u64::MAX))
            } else {
                None
            }
        })
    })
}

/// What a response's headers say about keeping it (RFC 9111, RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Whether it may be kept at all: not `no-store`, `no-cache` or
    /// `private`, and its lifetime, if it states one, is not already over.
    pub(crate) storable: bool,
    /// Its own lifetime: `s-maxage`, else `max-age`, else `Expires` minus
    /// `Date`; `None` when it states none.
    pub(crate) lifetime: Option<Duration>,
    /// Its `Age` when it arrived.
    pub(crate) age: Duration,
    /// `stale-while-revalidate=N`, if given.
    pub(crate) stale_while_revalidate: Option<Duration>,
    /// `stale-if-error=N`, if given.
    pub(crate) stale_if_error: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served
    /// past its lifetime.
    pub(crate) no_stale: bool,
}

/// The freshness of a response received at `received` (the wall clock, for
/// `Expires` when the response has no `Date`).
pub(crate) fn freshness(headers: &HeaderMap, received: SystemTime) -> Freshness {
    let seconds = |directive| directive_seconds(headers, directive);
    let never = has_directive(headers, "no-store")
        || has_directive(headers, "no-cache")
        || has_directive(headers, "private");
    let s_maxage = seconds("s-maxage");
    // An invalid max-age or s-maxage means stale (§5.2.2.1).
    let lifetime = match s_maxage.or_else(|| seconds("max-age")) {
        Some(seconds) => Some(Duration::from_secs(seconds.unwrap_or(0))),
        None => headers.get(EXPIRES).map(|expires| {
            let date = headers
                .get(DATE)
                .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok())
                .unwrap_or(received);
            // An Expires that is not a date means "already expired" (§5.3).
            expires
                .to_str()
                .ok()
                .and_then(|expires| httpdate::parse_http_date(expires).ok())
                .and_then(|expires| expires.duration_since(date).ok())
                .unwrap_or(Duration::ZERO)
        }),
    };
    let age = headers
        .get(AGE)
        .and_then(|age| age.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let window = |directive| seconds(directive).flatten().map(Duration::from_secs);
    Freshness {
        storable: !never && lifetime.is_none_or(|lifetime| lifetime > age),
        lifetime,
        age,
        stale_while_revalidate: window("stale-while-revalidate"),
        stale_if_error: window("stale-if-error"),
        no_stale: s_maxage.is_some()
            || has_directive(headers, "must-revalidate")
            || has_directive(headers, "proxy-revalidate"),
    }
}

/// Whether a request asks not to be answered from a cache: `Cache-Control:
/// no-cache` (or `max-age=0`), or `Pragma: no-cache` without `Cache-Control`.
pub(crate) fn request_no_cache(headers: &HeaderMap) -> bool {
    if headers.contains_key(CACHE_CONTROL) {
        return has_directive(headers, "no-cache")
            || directive_seconds(headers, "max-age") == Some(Some(0));
    }
    headers
        .get_all(PRAGMA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.trim().eq_ignore_ascii_case("no-cache"))
}

#[cfg(test)]
mod tests {
    use http::header::{ACCEPT_ENCODING, ACCEPT_LANGUAGE};
    use http::{Method, Request};

    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(Method::GET).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    fn response_headers(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        map
    }

    #[test]
    fn the_resource_is_method_scheme_authority_path_and_query() {
        let mut key = String::new();
        push_resource(&mut key, &head("http://example.com/a?b=c", &[]));
        assert_eq!(key, "GET http://example.com/a?b=c");
    }

    #[test]
    fn the_host_header_names_the_authority_of_an_origin_form_request() {
        let mut key = String::new();
        push_resource(&mut key, &head("/a", &[("host", "example.com:8080")]));
        assert_eq!(key, "GET ://example.com:8080/a");
    }

    #[test]
    fn header_values_are_keyed_in_order_and_absent_differs_from_present() {
        let headers = head(
            "/",
            &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
        )
        .headers;
        let mut both = String::new();
        push_header_values(&mut both, &headers, [&ACCEPT_ENCODING, &ACCEPT_LANGUAGE]);
        assert_eq!(both, "\naccept-encoding:gzip,br\naccept-language:");
        let mut none = String::new();
        push_header_values(&mut none, &HeaderMap::new(), [&ACCEPT_ENCODING]);
        assert_ne!(both, none);
        assert_eq!(none, "\naccept-encoding:");
    }

    #[test]
    fn credentials_count_unless_they_are_keyed() {
        let headers = head("/", &[("cookie", "a=b")]).headers;
        assert!(carries_credentials(&headers, &[]));
        assert!(!carries_credentials(&headers, &[COOKIE]));
        let headers = head("/", &[("proxy-authorization", "x")]).headers;
        assert!(carries_credentials(&headers, &[AUTHORIZATION]));
        assert!(!carries_credentials(&HeaderMap::new(), &[]));
    }

    #[test]
    fn conditions_are_the_range_and_conditional_headers_present() {
        let headers = head("/", &[("range", "bytes=0-1"), ("if-none-match", "\"x\"")]).headers;
        let found: Vec<_> = conditions_of(&headers).collect();
        assert_eq!(found, [&RANGE, &IF_NONE_MATCH]);
    }

    #[test]
    fn privacy_is_set_cookie_private_or_no_store() {
        assert!(is_private(&response_headers(&[("set-cookie", "a=b")])));
        assert!(is_private(&response_headers(&[(
            "cache-control",
            "max-age=60, Private"
        )])));
        assert!(is_private(&response_headers(&[(
            "cache-control",
            "no-store"
        )])));
        assert!(is_private(&response_headers(&[(
            "cache-control",
            "private=\"x\""
        )])));
        assert!(!is_private(&response_headers(&[(
            "cache-control",
            "public, max-age=60"
        )])));
        assert!(!is_private(&HeaderMap::new()));
    }

    #[test]
    fn directives_are_found_across_headers_ignoring_case_and_arguments() {
        let headers = response_headers(&[
            ("cache-control", "max-age=1"),
            ("cache-control", "No-Cache"),
        ]);
        assert!(has_directive(&headers, "no-cache"));
        assert!(has_directive(&headers, "max-age"));
        assert!(!has_directive(&headers, "no-store"));
        let written: Vec<_> = cache_directives(&headers).collect();
        assert_eq!(written, ["max-age=1", "No-Cache"]);
    }

    #[test]
    fn vary_names_each_header_once_and_star_or_garbage_is_private() {
        let (names, star) = vary_of(&response_headers(&[
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "accept-language"),
        ]));
        assert_eq!(names, [ACCEPT_LANGUAGE, ACCEPT_ENCODING]);
        assert!(!star);
        assert!(vary_of(&response_headers(&[("vary", "*")])).1);
        assert!(vary_of(&response_headers(&[("vary", "not a name")])).1);
        assert_eq!(vary_of(&HeaderMap::new()), (Vec::new(), false));
    }

    #[test]
    fn values_match_only_when_every_one_is_the_same() {
        let leader = head("/", &[("accept-language", "en")]).headers;
        let names = [ACCEPT_LANGUAGE];
        let expected = values_of(&leader, &names);
        assert!(same_values(&leader, &names, &expected));
        let other = head("/", &[("accept-language", "fr")]).headers;
        assert!(!same_values(&other, &names, &expected));
        assert!(!same_values(&HeaderMap::new(), &names, &expected));
    }

    const RECEIVED: SystemTime = SystemTime::UNIX_EPOCH;

    fn fresh(headers: &[(&str, &str)]) -> Freshness {
        freshness(&response_headers(headers), RECEIVED)
    }

    #[test]
    fn no_store_no_cache_and_private_are_never_kept() {
        for directive in ["no-store", "no-cache", "private", "max-age=60, No-Cache"] {
            assert!(
                !fresh(&[("cache-control", directive)]).storable,
                "{directive}"
            );
        }
        assert!(fresh(&[]).storable);
    }

    #[test]
    fn a_zero_lifetime_is_never_kept() {
        for directive in [
            "max-age=0",
            "s-maxage=0",
            "max-age=60, s-maxage=0",
            "max-age=x",
        ] {
            let freshness = fresh(&[("cache-control", directive)]);
            assert!(!freshness.storable, "{directive}");
        }
        // Already as old as its lifetime when it arrived.
        assert!(!fresh(&[("cache-control", "max-age=5"), ("age", "5")]).storable);
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let headers = [
            ("cache-control", "max-age=60, s-maxage=30"),
            ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("expires", "Thu, 01 Jan 1970 00:01:40 GMT"),
        ];
        assert_eq!(fresh(&headers).lifetime, Some(Duration::from_secs(30)));
        assert_eq!(
            fresh(&headers[1..]).lifetime,
            Some(Duration::from_secs(100))
        );
        let mut no_shared = headers;
        no_shared[0] = ("cache-control", "max-age=60");
        assert_eq!(fresh(&no_shared).lifetime, Some(Duration::from_secs(60)));
        assert_eq!(fresh(&[]).lifetime, None);
    }

    #[test]
    fn expires_counts_from_date_or_from_arrival_and_garbage_is_expired() {
        let expires = [("expires", "Thu, 01 Jan 1970 00:00:10 GMT")];
        assert_eq!(fresh(&expires).lifetime, Some(Duration::from_secs(10)));
        let past = fresh(&[
            ("expires", "Thu, 01 Jan 1970 00:00:10 GMT"),
            ("date", "Thu, 01 Jan 1970 00:01:00 GMT"),
        ]);
        assert_eq!(past.lifetime, Some(Duration::ZERO));
        assert!(!past.storable);
        let garbage = fresh(&[("expires", "0")]);
        assert_eq!(garbage.lifetime, Some(Duration::ZERO));
        assert!(!garbage.storable);
    }

    #[test]
    fn age_and_the_stale_directives_are_read() {
        let freshness = fresh(&[
            (
                "cache-control",
                "max-age=60, stale-while-revalidate=5, stale-if-error=\"30\"",
            ),
            ("age", "7"),
        ]);
        assert_eq!(freshness.age, Duration::from_secs(7));
        assert_eq!(
            freshness.stale_while_revalidate,
            Some(Duration::from_secs(5))
        );
        assert_eq!(freshness.stale_if_error, Some(Duration::from_secs(30)));
        assert!(!freshness.no_stale);
    }

    #[test]
    fn revalidation_directives_and_s_maxage_forbid_stale() {
        for directive in ["must-revalidate", "proxy-revalidate", "s-maxage=10"] {
            assert!(
                fresh(&[("cache-control", directive)]).no_stale,
                "{directive}"
            );
        }
    }

    #[test]
    fn a_request_asks_for_no_cache_with_cache_control_or_pragma() {
        let request = |headers: &[(&str, &str)]| request_no_cache(&head("/", headers).headers);
        assert!(request(&[("cache-control", "no-cache")]));
        assert!(request(&[("cache-control", "max-age=0")]));
        assert!(request(&[("pragma", "no-cache")]));
        assert!(!request(&[
            ("cache-control", "max-age=10"),
            ("pragma", "no-cache")
        ]));
        assert!(!request(&[]));
    }
}
