//! Forwarding one request to the upstream: the target URL, the headers a
//! proxy removes (hop-by-hop) and adds (`X-Forwarded-*`, `Via`, `Host`),
//! and upstream failures as 502/504 responses with a one-line reason.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use metrics::{Counter, Histogram};
use singleflight_tower::BoxError;

use super::idle::IdleTimeout;
use crate::args::{HttpUrl, fmt_duration};
use crate::net::{HttpClient, describe_failure};

/// The body type between the proxy's parts.
pub(super) type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that describe one hop, never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Who sent a request to the proxy, put in the request's extensions by the
/// server for the forwarding headers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Downstream {
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// Whether it came over TLS.
    pub(super) tls: bool,
}

/// Sends requests to the upstream; never fails: errors become 502/504 responses.
pub(super) struct Forward {
    pub(super) client: HttpClient<ProxyBody>,
    pub(super) upstream: HttpUrl,
    pub(super) timeout: Duration,
    pub(super) preserve_host: bool,
    pub(super) upstream_requests: Counter,
    /// With `--redis`: flights shared with the other instances.
    pub(super) redis: Option<super::redis::RedisShare>,
    /// Seconds from sending a request to its response head (or failure).
    pub(super) upstream_seconds: Histogram,
}

impl Forward {
    pub(super) async fn send(
        self: Arc<Self>,
        request: Request<Limited<Incoming>>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        self.send_boxed(request.map(|body| body.boxed())).await
    }

    pub(super) async fn send_boxed(
        self: Arc<Self>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (mut parts, body) = request.into_parts();
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1 in `Host`.
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        strip_hop_by_hop(&mut parts.headers);
        let downstream = parts.extensions.get::<Downstream>().copied();
        add_forwarding(
            &mut parts.headers,
            downstream,
            client_host.as_ref(),
            parts.version,
        );
        let host = match (&client_host, self.preserve_host) {
            (Some(host), true) => Some(host.clone()),
            _ => self
                .upstream
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = self.target(&parts.uri);
        // The client picks the version per connection (HTTP/2 by ALPN).
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        self.upstream_requests.increment(1);
        let sent = Instant::now();
        let answered = tokio::time::timeout(self.timeout, self.client.request(request)).await;
        self.upstream_seconds.record(sent.elapsed());
        let response = match answered {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if caused_by::<LengthLimitError>(&e) => {
                return Ok(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n".into(),
                ));
            }
            Ok(Err(e)) => {
                let why = describe_failure(&e, &self.upstream);
                tracing::debug!("upstream {}: {why}", self.upstream);
                return Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unreachable: {why}\n"),
                ));
            }
            Err(_) => {
                return Ok(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream timed out after {}\n", fmt_duration(self.timeout)),
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The same limit holds between two pieces of the body as for the
        // head: a body that stalls fails every reader, as a reset does.
        let body = IdleTimeout::new(body, self.timeout);
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// The upstream's scheme and authority, its path as a prefix, then the request's path and query.
    fn target(&self, uri: &Uri) -> Uri {
        let base = self.upstream.uri();
        let prefix = base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut parts = base.clone().into_parts();
        parts.path_and_query = format!("{prefix}{path_and_query}").parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
    }
}

/// The headers that tell the upstream about the client and this hop:
/// `X-Forwarded-For` (the peer appended to what earlier proxies said),
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Via` (appended).
fn add_forwarding(
    headers: &mut HeaderMap,
    downstream: Option<Downstream>,
    client_host: Option<&HeaderValue>,
    version: Version,
) {
    if let Some(downstream) = downstream {
        let ip = downstream.peer.ip().to_string();
        append_list(headers, X_FORWARDED_FOR, &ip);
        let proto = if downstream.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = client_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    append_list(headers, header::VIA, &format!("{protocol} singleflight"));
}

/// Appends `item` to a comma-separated list header, joining the header's
/// lines into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut items: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    items.push(item);
    if let Ok(value) = HeaderValue::from_str(&items.join(", ")) {
        headers.insert(name, value);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A short plain-text response made by the proxy itself.
pub(super) fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

type ForwardFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// The service the coalescing layer wraps: cheap to clone, always ready.
#[derive(Clone)]
pub(super) struct ArcForward(pub(super) Arc<Forward>);

impl tower::Service<Request<Limited<Incoming>>> for ArcForward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Limited<Incoming>>) -> Self::Future {
        let forward = Arc::clone(&self.0);
        let key = request
            .extensions()
            .get::<singleflight_tower::FlightKey>()
            .cloned();
        match key {
            // A flight's request, with instances to share it with.
            Some(key) if forward.redis.is_some() => Box::pin(forward.send_across(key, request)),
            _ => Box::pin(forward.send(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(existing: &[(&str, &str)], tls: bool, version: Version) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in existing {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let downstream = Downstream {
            peer: "192.0.2.7:5000".parse().unwrap(),
            tls,
        };
        let host = HeaderValue::from_static("example.test");
        add_forwarding(&mut headers, Some(downstream), Some(&host), version);
        headers
    }

    #[test]
    fn the_peer_is_appended_to_an_earlier_proxys_x_forwarded_for() {
        let headers = forwarded(
            &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "198.51.100.2"),
                ("via", "1.1 edge"),
            ],
            true,
            Version::HTTP_2,
        );
        assert_eq!(
            headers.get("x-forwarded-for").unwrap(),
            "203.0.113.1, 198.51.100.2, 192.0.2.7"
        );
        assert_eq!(headers.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(headers.get("x-forwarded-host").unwrap(), "example.test");
        assert_eq!(headers.get("via").unwrap(), "1.1 edge, 2 singleflight");
    }

    #[test]
    fn a_first_hop_starts_the_lists() {
        let headers = forwarded(&[], false, Version::HTTP_11);
        assert_eq!(headers.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(headers.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(headers.get("via").unwrap(), "1.1 singleflight");
    }

    #[test]
    fn headers_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("x-secret, close"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("accept"));
    }
}
