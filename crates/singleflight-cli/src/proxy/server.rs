//! Handling one client request: the body cap, the coalescing layer, and,
//! when the response's body is done (or dropped), its duration in the
//! histogram of where it came from and its access log line. Where it came
//! from is what the layer says ([`Served`]), never guessed here.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use metrics::{Counter, Histogram};
use singleflight_tower::{BoxError, Coalesce, CoalescedBody, Served};
use tower::ServiceExt as _;

use super::forward::{ArcForward, Downstream, ProxyBody, plain};
use crate::net::Peer;

/// What the request handler needs of the settings.
#[derive(Clone, Debug)]
pub(super) struct Handling {
    pub(super) max_body_bytes: u64,
    pub(super) tls: bool,
    pub(super) access_log: bool,
}

/// What every connection shares.
pub(super) struct Proxy {
    pub(super) coalesce: Coalesce<ArcForward>,
    pub(super) handling: Handling,
    pub(super) requests: Counter,
    /// Request durations, by [`Served`] (in the order of [`Served::ALL`]).
    pub(super) durations: Arc<[Histogram; 5]>,
}

/// The proxy's answer: the layer's body, or one made here (413), counted
/// for the access log.
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
            match self.coalesce.clone().oneshot(request).await {
                Ok(response) => response.map(Either::Left),
                Err(never) => match never {},
            }
        };
        let served = response.extensions().get::<Served>().copied();
        let line = line.map(|mut line| {
            line.status = response.status().as_u16();
            if let Some(served) = served {
                line.source = served.as_str();
                line.shared = match response
                    .headers()
                    .get(singleflight_tower::DEFAULT_SHARED_HEADER)
                {
                    Some(value) if value == "true" => "true",
                    Some(_) => "false",
                    None => "-",
                };
            }
            line
        });
        let timer = served.map(|served| Timer {
            arrived,
            histogram: self.durations[served as usize].clone(),
        });
        Ok(response.map(|inner| Logged { inner, line, timer }))
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

/// Records a request's duration, from its arrival to the end of its
/// response's body (or its drop), when it is dropped.
struct Timer {
    arrived: Instant,
    histogram: Histogram,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.record(self.arrived.elapsed());
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its bytes for the access log, and times
    /// the request.
    pub(super) struct Logged<B> {
        #[pin]
        inner: B,
        line: Option<AccessLine>,
        timer: Option<Timer>,
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
