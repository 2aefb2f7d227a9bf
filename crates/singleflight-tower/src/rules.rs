//! The HTTP rules the layer applies, as pure functions of headers: what a
//! key is made of, which requests carry credentials, which responses are
//! private to their requester, what a response varies on.
//!
//! Nothing here holds state or touches the network, so every rule is tested
//! here on its own.

use http::header::{
    AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, PROXY_AUTHORIZATION, RANGE, SET_COOKIE, VARY,
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
}
