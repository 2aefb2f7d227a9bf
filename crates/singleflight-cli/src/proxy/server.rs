//! Handling one client request: the body cap, the coalescing layer, the
//! per-request wait limit, and the access log line written when the
//! response's body is done (or dropped).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use metrics::Counter;
use singleflight_tower::{BoxError, Coalesce, CoalescedBody};
use tower::ServiceExt as _;

use super::forward::{ArcForward, BodyEnd, Downstream, ProxyBody, plain};
use crate::args::fmt_duration;
use crate::net::Peer;

/// What the request handler needs of the settings.
#[derive(Clone, Debug)]
pub(super) struct Handling {
    pub(super) max_body_bytes: u64,
    pub(super) max_wait: Option<Duration>,
    pub(super) memo_ttl: Option<Duration>,
    pub(super) tls: bool,
    pub(super) access_log: bool,
}

/// What every connection shares.
pub(super) struct Proxy {
    pub(super) coalesce: Coalesce<ArcForward>,
    pub(super) handling: Handling,
    pub(super) requests: Counter,
}

/// The proxy's answer: the layer's body, or one made here (413, 504 on
/// `--max-wait`), counted for the access log.
pub(super) type Answer = Response<Logged<Either<CoalescedBody<ProxyBody>, ProxyBody>>>;

impl Proxy {
    /// Answers one request from `peer`.
    pub(super) async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: Peer,
    ) -> Result<Answer, Infallible> {
        let arrived = Instant::now();
        self.requests.increment(1);
        let line = self.handling.access_log.then(|| AccessLine {
            peer,
            method: request.method().clone(),
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            status: 0,
            shared: "-",
            source: "local",
            arrived,
            bytes: 0,
        });
        request.extensions_mut().insert(Downstream {
            peer,
            tls: self.handling.tls,
        });
        absolute_uri(&mut request, self.handling.tls);
        let too_large = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > self.handling.max_body_bytes);
        let response = if too_large {
            local(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n".into(),
            ))
        } else {
            let limit = usize::try_from(self.handling.max_body_bytes).unwrap_or(usize::MAX);
            let request = request.map(|body| Limited::new(body, limit));
            let call = self.coalesce.clone().oneshot(request);
            match self.handling.max_wait {
                None => match call.await {
                    Ok(response) => response.map(Either::Left),
                    Err(never) => match never {},
                },
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(Ok(response)) => response.map(Either::Left),
                    Ok(Err(never)) => match never {},
                    Err(_) => local(plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("gave up waiting after {}\n", fmt_duration(limit)),
                    )),
                },
            }
        };
        let line = line.map(|mut line| {
            line.status = response.status().as_u16();
            if let Either::Left(_) = response.body() {
                (line.shared, line.source) = provenance(&response, arrived, self.handling.memo_ttl);
            }
            line
        });
        Ok(response.map(|inner| Logged { inner, line }))
    }
}

/// Gives the request the absolute URI an HTTP/2 request has (scheme from
/// the listener, authority from `Host`), so that HTTP/1.1 and HTTP/2
/// requests for one resource have one key and join one flight.
fn absolute_uri<B>(request: &mut Request<B>, tls: bool) {
    let uri = request.uri();
    if uri.scheme().is_some() {
        return;
    }
    let Some(authority) = uri.authority().cloned().or_else(|| {
        let host = request.headers().get(header::HOST)?;
        http::uri::Authority::try_from(host.as_bytes()).ok()
    }) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(absolute) = http::Uri::from_parts(parts) {
        *request.uri_mut() = absolute;
    }
}

/// Whether a response from the layer was shared, and where it came from:
/// `flight` (led or joined), `memo` (kept after its flight), `stale` (kept,
/// past its TTL, while a refresh runs) or `bypass` (not coalesced).
fn provenance<B>(
    response: &Response<B>,
    arrived: Instant,
    memo_ttl: Option<Duration>,
) -> (&'static str, &'static str) {
    let Some(shared) = response
        .headers()
        .get(singleflight_tower::DEFAULT_SHARED_HEADER)
    else {
        return ("-", "bypass");
    };
    let shared = if shared == HeaderValue::from_static("true") {
        "true"
    } else {
        "false"
    };
    // A body that had ended before this request arrived was not joined in
    // flight: the memo kept it.
    let ended = response.extensions().get::<BodyEnd>().and_then(BodyEnd::at);
    let source = match (ended, memo_ttl) {
        (Some(ended), Some(ttl)) if ended < arrived => {
            if arrived.duration_since(ended) > ttl {
                "stale"
            } else {
                "memo"
            }
        }
        _ => "flight",
    };
    (shared, source)
}

fn local(response: Response<ProxyBody>) -> Response<Either<CoalescedBody<ProxyBody>, ProxyBody>> {
    response.map(Either::Right)
}

/// One access log line, written when it is dropped: once the response's
/// body is done, or abandoned.
struct AccessLine {
    peer: Peer,
    method: Method,
    target: String,
    status: u16,
    shared: &'static str,
    source: &'static str,
    arrived: Instant,
    bytes: u64,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let elapsed = self.arrived.elapsed();
        tracing::info!(
            target: "singleflight::access",
            peer = %self.peer,
            method = %self.method,
            path = %self.target,
            status = self.status,
            bytes = self.bytes,
            duration_ms = (elapsed.as_secs_f64() * 1e4).round() / 10.0,
            shared = %self.shared,
            source = %self.source,
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its bytes for the access log.
    pub(super) struct Logged<B> {
        #[pin]
        inner: B,
        line: Option<AccessLine>,
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(line), Some(data)) = (this.line.as_mut(), frame.data_ref()) {
                    line.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
