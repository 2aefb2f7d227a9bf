//! The layer's memo: a response kept after its flight answers later requests
//! without an upstream request, and only responses a later reader can be
//! given whole are kept.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use singleflight_tower::{BoxError, CoalesceLayer, DEFAULT_SHARED_HEADER};
use tower::{Layer, Service, ServiceExt};

/// A body that announces `len` bytes, then fails: an upstream reset.
struct Reset {
    len: u64,
}

impl Body for Reset {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err("connection reset by upstream".into())))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// What the upstream answers to its n-th request (from 0).
type Answer = fn(usize) -> Response<BoxBody<Bytes, BoxError>>;

fn full(text: &'static str) -> BoxBody<Bytes, BoxError> {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Sends `requests` GETs one after the other through a layer with a memo,
/// to an upstream answering with `answer`; returns the upstream's request
/// count and each response's status, shared header and body (or error).
async fn sequential(
    layer: CoalesceLayer,
    requests: usize,
    answer: Answer,
) -> (
    usize,
    Vec<(StatusCode, Option<String>, Result<Bytes, String>)>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = tower::service_fn({
        let calls = calls.clone();
        move |_: Request<Empty<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(answer(n)) }
        }
    });
    let mut service = layer.layer(upstream);
    let mut seen = Vec::new();
    for _ in 0..requests {
        let request = Request::get("http://example.test/status")
            .body(Empty::new())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let status = response.status();
        let shared = response
            .headers()
            .get(DEFAULT_SHARED_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string());
        seen.push((status, shared, body));
    }
    (calls.load(Ordering::SeqCst), seen)
}

fn memo() -> CoalesceLayer {
    CoalesceLayer::new().memo(Duration::from_secs(3600))
}

#[tokio::test]
async fn a_kept_response_answers_later_requests_without_the_upstream() {
    let (calls, seen) = sequential(memo(), 3, |n| {
        Response::new(full(if n == 0 { "first" } else { "later" }))
    })
    .await;
    assert_eq!(calls, 1);
    for (i, (status, shared, body)) in seen.into_iter().enumerate() {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), "first");
        // The first request was alone; the others were answered from it.
        assert_eq!(
            shared.as_deref(),
            Some(if i == 0 { "false" } else { "true" })
        );
    }
}

#[tokio::test]
async fn without_the_memo_every_sequential_request_goes_upstream() {
    let (calls, _) = sequential(CoalesceLayer::new(), 3, |_| Response::new(full("x"))).await;
    assert_eq!(calls, 3);
}

#[tokio::test]
async fn a_response_with_set_cookie_is_never_kept() {
    let (calls, seen) = sequential(memo(), 2, |n| {
        Response::builder()
            .header("set-cookie", format!("session={n}"))
            .body(full("private"))
            .unwrap()
    })
    .await;
    assert_eq!(calls, 2);
    assert!(
        seen.iter()
            .all(|(_, _, body)| body.as_deref() == Ok(&b"private"[..]))
    );
}

#[tokio::test]
async fn server_errors_and_no_cache_responses_are_not_kept() {
    let (calls, _) = sequential(memo(), 2, |_| {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(full("down"))
            .unwrap()
    })
    .await;
    assert_eq!(calls, 2);
    let (calls, _) = sequential(memo(), 2, |_| {
        Response::builder()
            .header("cache-control", "max-age=60, no-cache")
            .body(full("fresh every time"))
            .unwrap()
    })
    .await;
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn a_body_of_unknown_or_excessive_length_is_not_kept() {
    let (calls, _) = sequential(memo(), 2, |_| {
        // No announced length: a later reader might not get it whole.
        let body = http_body_util::StreamBody::new(futures::stream::iter([Ok::<_, BoxError>(
            Frame::data(Bytes::from_static(b"streamed")),
        )]));
        Response::new(BodyExt::boxed(body))
    })
    .await;
    assert_eq!(calls, 2);
    let (calls, _) = sequential(memo().body_window(4), 2, |_| {
        Response::new(full("longer than four"))
    })
    .await;
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn a_kept_response_whose_body_failed_is_dropped_and_refetched() {
    let (calls, seen) = sequential(memo(), 4, |n| {
        if n == 0 {
            Response::new(Reset { len: 5 }.boxed())
        } else {
            Response::new(full("whole"))
        }
    })
    .await;
    // The first request sees the reset. The second finds the kept response
    // failed, drops it and leads a fresh flight, which is kept and answers
    // the third and the fourth.
    assert!(
        seen[0].2.is_err(),
        "the reset reaches its reader: {:?}",
        seen[0].2
    );
    for (_, _, body) in &seen[1..] {
        assert_eq!(body.as_deref(), Ok(&b"whole"[..]));
    }
    assert_eq!(
        seen[1].1.as_deref(),
        Some("false"),
        "the second went upstream"
    );
    for (_, shared, _) in &seen[2..] {
        assert_eq!(shared.as_deref(), Some("true"), "the memo answered");
    }
    assert_eq!(calls, 2);
}
