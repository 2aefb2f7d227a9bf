//! How a flight's body reaches its waiters, in process: the upstream body is
//! a channel the test feeds chunk by chunk, so every step is driven by the
//! test and nothing depends on timing.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response};
use http_body::Body;
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Empty};
use singleflight_tower::{BoxError, Coalesce, CoalesceLayer, CoalescedBody, Error};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock::{self, Handle, Mock};

type UpstreamBody = Channel<Bytes, BoxError>;
type Upstream = Mock<Request<Empty<Bytes>>, Response<UpstreamBody>>;
type Upstreams = Handle<Request<Empty<Bytes>>, Response<UpstreamBody>>;
type WaiterBody = CoalescedBody<UpstreamBody>;
type Pending = Pin<Box<dyn Future<Output = Result<Response<WaiterBody>, BoxError>> + Send>>;

fn layered(layer: CoalesceLayer) -> (Coalesce<Upstream>, Upstreams) {
    let (upstream, handle) = mock::pair();
    (layer.layer(upstream), handle)
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/file")
        .body(Empty::new())
        .expect("a valid request")
}

async fn start(service: &mut Coalesce<Upstream>) -> Pending {
    let service = service.ready().await.expect("the mock is ready");
    let mut pending: Pending = Box::pin(service.call(get()));
    let first = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx).is_pending()));
    assert!(first.await, "the response must wait for the upstream");
    pending
}

/// Starts `waiters` coalesced requests, answers the flight with a channel
/// body, and returns the waiters' bodies and the channel's sender.
async fn flight(
    layer: CoalesceLayer,
    waiters: usize,
) -> (Vec<WaiterBody>, Sender<Bytes, BoxError>) {
    let (mut service, mut upstreams) = layered(layer);
    let mut pending = Vec::new();
    for _ in 0..waiters {
        pending.push(start(&mut service).await);
    }
    let (sender, body) = Channel::new(4);
    let (_, reply) = upstreams.next_request().await.expect("an upstream request");
    reply.send_response(Response::new(body));
    let mut bodies = Vec::new();
    for pending in pending {
        bodies.push(pending.await.expect("a response").into_body());
    }
    assert!(upstreams.next_request().now_or_never_is_none());
    (bodies, sender)
}

trait NowOrNever {
    fn now_or_never_is_none(self) -> bool;
}

impl<F: Future> NowOrNever for F {
    fn now_or_never_is_none(self) -> bool {
        futures::FutureExt::now_or_never(self).is_none()
    }
}

async fn next_data(body: &mut WaiterBody) -> Bytes {
    let frame = body.frame().await.expect("a frame").expect("no error");
    frame.into_data().expect("a data frame")
}

/// Polls a body once: `None` if it has nothing yet.
async fn try_frame(
    body: &mut WaiterBody,
) -> Option<Option<Result<http_body::Frame<Bytes>, Error>>> {
    let mut body = Pin::new(body);
    std::future::poll_fn(|cx| {
        Poll::Ready(match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
    .await
}

async fn rest(body: WaiterBody) -> Result<Bytes, Error> {
    Ok(body.collect().await?.to_bytes())
}

#[tokio::test]
async fn followers_get_the_first_chunk_before_the_upstream_finishes() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new(), 3).await;
    for body in &mut bodies {
        assert!(try_frame(body).await.is_none(), "nothing sent yet");
    }
    sender
        .send_data(Bytes::from_static(b"first"))
        .await
        .expect("sent");
    for body in &mut bodies {
        assert_eq!(next_data(body).await, "first");
        assert!(!body.is_end_stream());
    }
    // The upstream has not finished: nobody sees an end.
    for body in &mut bodies {
        assert!(try_frame(body).await.is_none());
    }
    sender
        .send_data(Bytes::from_static(b"second"))
        .await
        .expect("sent");
    drop(sender);
    for body in bodies {
        assert_eq!(rest(body).await.expect("a whole body"), "second");
    }
}

#[tokio::test]
async fn the_leader_leaving_mid_body_does_not_stop_the_followers() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new(), 3).await;
    sender
        .send_data(Bytes::from_static(b"a"))
        .await
        .expect("sent");
    for body in &mut bodies {
        assert_eq!(next_data(body).await, "a");
    }
    // The leader's client goes away while every reader waits for more.
    let mut followers = bodies.split_off(1);
    for body in &mut followers {
        assert!(try_frame(body).await.is_none());
    }
    let mut leader = bodies.pop().expect("the leader's body");
    assert!(try_frame(&mut leader).await.is_none());
    drop(leader);
    let readers: Vec<_> = followers
        .into_iter()
        .map(|body| tokio::spawn(rest(body)))
        .collect();
    for chunk in [&b"b"[..], b"c", b"d"] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
    }
    drop(sender);
    for reader in readers {
        assert_eq!(
            reader.await.expect("no panic").expect("a whole body"),
            "bcd"
        );
    }
}

#[tokio::test]
async fn the_leader_leaving_before_the_head_does_not_cancel_the_request() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let leader = start(&mut service).await;
    let followers = vec![start(&mut service).await, start(&mut service).await];
    let (_, reply) = upstreams.next_request().await.expect("an upstream request");
    drop(leader);
    let (mut sender, body) = Channel::new(4);
    reply.send_response(Response::new(body));
    let readers: Vec<_> = followers
        .into_iter()
        .map(|pending| {
            tokio::spawn(async move { rest(pending.await.expect("a response").into_body()).await })
        })
        .collect();
    sender
        .send_data(Bytes::from_static(b"still here"))
        .await
        .expect("sent");
    drop(sender);
    for reader in readers {
        assert_eq!(
            reader.await.expect("no panic").expect("a whole body"),
            "still here"
        );
    }
    assert!(upstreams.next_request().now_or_never_is_none());
    assert_eq!(service.stats().flights, 1);
}

#[tokio::test]
async fn a_stalled_reader_does_not_delay_the_others() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new(), 3).await;
    let mut stalled = bodies.pop().expect("a body");
    sender
        .send_data(Bytes::from_static(b"one"))
        .await
        .expect("sent");
    assert_eq!(next_data(&mut stalled).await, "one");
    // `stalled` now stops reading; the others read the rest to the end.
    let mut others = bodies;
    for body in &mut others {
        assert_eq!(next_data(body).await, "one");
    }
    for chunk in [&b"two"[..], b"three"] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        for body in &mut others {
            assert_eq!(next_data(body).await, chunk);
        }
    }
    drop(sender);
    for body in &mut others {
        assert!(body.frame().await.is_none(), "the end");
    }
    // Within the buffer cap, the stalled one still gets every byte later.
    assert_eq!(rest(stalled).await.expect("a whole body"), "twothree");
}

#[tokio::test]
async fn a_reader_that_vanished_while_pulling_strands_nobody() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new(), 2).await;
    let mut puller = bodies.pop().expect("a body");
    let waiter = bodies.pop().expect("a body");
    // The puller polls the upstream first, then goes away.
    assert!(try_frame(&mut puller).await.is_none());
    let reader = tokio::spawn(rest(waiter));
    tokio::task::yield_now().await;
    drop(puller);
    sender
        .send_data(Bytes::from_static(b"woken"))
        .await
        .expect("sent");
    drop(sender);
    assert_eq!(
        reader.await.expect("no panic").expect("a whole body"),
        "woken"
    );
}

#[tokio::test]
async fn an_upstream_failure_mid_body_is_an_error_for_every_waiter() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new(), 3).await;
    sender
        .send_data(Bytes::from_static(b"partial"))
        .await
        .expect("sent");
    // One waiter read the first chunk already, the others have not.
    assert_eq!(next_data(&mut bodies[0]).await, "partial");
    sender.abort("connection reset".into());
    let mut first = true;
    for mut body in bodies {
        if !first {
            assert_eq!(next_data(&mut body).await, "partial");
        }
        first = false;
        match body.frame().await {
            Some(Err(Error::Upstream(source))) => {
                assert_eq!(source.to_string(), "connection reset");
            }
            other => panic!("expected the upstream's error, got {other:?}"),
        }
        assert!(body.frame().await.is_none());
    }
}

#[tokio::test]
async fn trailers_reach_every_waiter() {
    let (bodies, mut sender) = flight(CoalesceLayer::new(), 2).await;
    sender
        .send_data(Bytes::from_static(b"data"))
        .await
        .expect("sent");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("a header value"));
    sender.send_trailers(trailers).await.expect("sent");
    drop(sender);
    for body in bodies {
        let collected = body.collect().await.expect("a whole body");
        assert_eq!(collected.trailers().expect("trailers")["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }
}

#[tokio::test]
async fn a_body_within_the_window_reaches_a_late_reader_whole() {
    let (mut bodies, mut sender) = flight(CoalesceLayer::new().body_window(12), 2).await;
    let late = bodies.pop().expect("a body");
    let mut eager = bodies.pop().expect("a body");
    for chunk in [&b"abcd"[..], b"efgh", b"ijkl"] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, chunk);
    }
    drop(sender);
    assert!(eager.frame().await.is_none());
    assert_eq!(rest(late).await.expect("a whole body"), "abcdefghijkl");
}

const CHUNKS: [&[u8]; 5] = [b"abcd", b"efgh", b"ijkl", b"mnop", b"qrst"];

/// Feeds `CHUNKS` to a flight of three readers: `eager` reads each chunk as
/// it comes, `close` stays one chunk behind (within a window of 8), `late`
/// reads nothing until the end. Returns `late`, after checking that the
/// other two got every byte and a clean end.
async fn eager_close_and_late(layer: CoalesceLayer) -> WaiterBody {
    let (mut bodies, mut sender) = flight(layer.body_window(8), 3).await;
    let late = bodies.pop().expect("a body");
    let mut close = bodies.pop().expect("a body");
    let mut eager = bodies.pop().expect("a body");
    let mut close_read = Vec::new();
    for (i, chunk) in CHUNKS.iter().enumerate() {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, *chunk);
        if i > 0 {
            close_read.extend_from_slice(&next_data(&mut close).await);
        }
    }
    drop(sender);
    assert!(
        eager.frame().await.is_none(),
        "the eager reader gets a clean end"
    );
    close_read.extend_from_slice(&rest(close).await.expect("a whole body"));
    assert_eq!(close_read, CHUNKS.concat());
    late
}

#[tokio::test]
async fn a_reader_behind_the_window_reads_the_spill_file_and_gets_every_byte() {
    let dir = tempfile::tempdir().expect("a directory");
    let late = eager_close_and_late(CoalesceLayer::new().spill_dir(dir.path())).await;
    assert_eq!(rest(late).await.expect("a whole body"), CHUNKS.concat());
    let left = std::fs::read_dir(dir.path()).expect("listed").count();
    assert_eq!(left, 0, "the spill file is never visible in its directory");
}

#[tokio::test]
async fn past_the_spill_cap_a_reader_behind_fails_and_the_others_do_not() {
    // 20 bytes, 8 in memory: 12 would have to be on disk, over the cap of 8.
    let dir = tempfile::tempdir().expect("a directory");
    let layer = CoalesceLayer::new().spill_dir(dir.path()).spill_max(8);
    let mut late = eager_close_and_late(layer).await;
    match late.frame().await {
        Some(Err(Error::FellBehind { window, spill_max })) => {
            assert_eq!((window, spill_max), (8, 8));
        }
        other => panic!("expected FellBehind, got {other:?}"),
    }
    assert!(late.frame().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn with_spilling_off_a_reader_behind_the_window_fails() {
    let mut late = eager_close_and_late(CoalesceLayer::new().spill_max(0)).await;
    match late.frame().await {
        Some(Err(Error::FellBehind { window, spill_max })) => {
            assert_eq!((window, spill_max), (8, 0));
        }
        other => panic!("expected FellBehind, got {other:?}"),
    }
}

#[tokio::test]
async fn a_spill_directory_that_cannot_be_written_fails_only_the_readers_behind() {
    let dir = tempfile::tempdir().expect("a directory");
    let missing = dir.path().join("missing");
    let mut late = eager_close_and_late(CoalesceLayer::new().spill_dir(&missing)).await;
    match late.frame().await {
        Some(Err(error @ Error::Spill(_))) => {
            let message = error.to_string();
            assert!(message.contains("spill directory"), "{message}");
        }
        other => panic!("expected a spill error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_waiter_too_late_for_the_first_byte_sends_its_own_request() {
    // The second waiter's response future is first polled to its end only
    // after the first waiter has read past the window, with nothing kept on
    // disk: it cannot have the first byte, so it asks for its own copy.
    let (mut service, mut upstreams) = layered(CoalesceLayer::new().body_window(8).spill_max(0));
    let first = start(&mut service).await;
    let second = start(&mut service).await;
    let (mut sender, body) = Channel::new(4);
    let (_, reply) = upstreams.next_request().await.expect("an upstream request");
    reply.send_response(Response::new(body));
    let mut eager = first.await.expect("a response").into_body();
    for chunk in [&b"abcd"[..], b"efgh", b"ijkl"] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, chunk);
    }
    let own = tokio::spawn(second);
    let (_, reply) = upstreams.next_request().await.expect("its own request");
    reply.send_response(Response::new(Channel::new(1).1));
    let late = own.await.expect("no panic").expect("a response");
    assert_eq!(late.headers()["x-singleflight-shared"], "false");
    assert_eq!(service.stats().refetched, 1);
    // The first waiter is not held up by it.
    sender
        .send_data(Bytes::from_static(b"mnop"))
        .await
        .expect("sent");
    drop(sender);
    assert_eq!(rest(eager).await.expect("the rest"), "mnop");
}

#[tokio::test]
async fn a_request_arriving_mid_body_joins_and_reads_from_the_first_byte() {
    let dir = tempfile::tempdir().expect("a directory");
    let layer = CoalesceLayer::new().body_window(8).spill_dir(dir.path());
    let (mut service, mut upstreams) = layered(layer);
    let first = start(&mut service).await;
    let (mut sender, body) = Channel::new(4);
    let (_, reply) = upstreams.next_request().await.expect("an upstream request");
    reply.send_response(Response::new(body));
    let mut eager = first.await.expect("a response").into_body();
    assert_eq!(service.flights(), 1, "the body is still streaming");
    // Past the window: the joiner's first bytes come from the spill file.
    for chunk in &CHUNKS[..3] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, *chunk);
    }
    let service = service.ready().await.expect("ready");
    let joiner = service.call(get()).await.expect("a response at once");
    assert_eq!(joiner.headers()["x-singleflight-shared"], "true");
    assert!(
        upstreams.next_request().now_or_never_is_none(),
        "no second upstream request"
    );
    let mut joiner = joiner.into_body();
    let mut joined = Vec::new();
    for _ in 0..3 {
        joined.extend_from_slice(&next_data(&mut joiner).await);
    }
    assert_eq!(joined, CHUNKS[..3].concat(), "what had arrived, at once");
    for chunk in &CHUNKS[3..] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, *chunk);
        assert_eq!(next_data(&mut joiner).await, *chunk, "the rest as it comes");
    }
    drop(sender);
    assert!(joiner.frame().await.is_none(), "a clean end");
    assert!(eager.frame().await.is_none());
    let stats = service.stats();
    assert_eq!((stats.flights, stats.joined, stats.shared), (1, 1, 1));
    assert_eq!(service.flights(), 0, "the flight ended with its body");
    // After the end, a request starts a flight of its own.
    let next = start(service).await;
    let (_, reply) = upstreams.next_request().await.expect("a new flight");
    reply.send_response(Response::new(Channel::new(1).1));
    drop(next.await.expect("a response"));
}

#[tokio::test]
async fn a_body_past_the_spill_cap_is_no_longer_joined() {
    let layer = CoalesceLayer::new().body_window(8).spill_max(4);
    let (mut service, mut upstreams) = layered(layer);
    let first = start(&mut service).await;
    let (mut sender, body) = Channel::new(4);
    let (_, reply) = upstreams.next_request().await.expect("an upstream request");
    reply.send_response(Response::new(body));
    let mut eager = first.await.expect("a response").into_body();
    // 12 bytes, 8 in memory: 4 on disk, within the cap; joinable.
    for chunk in &CHUNKS[..3] {
        sender
            .send_data(Bytes::from_static(chunk))
            .await
            .expect("sent");
        assert_eq!(next_data(&mut eager).await, *chunk);
    }
    assert_eq!(service.flights(), 1);
    // 16 bytes: 8 would be on disk, over the cap; the first bytes are gone.
    sender
        .send_data(Bytes::from_static(CHUNKS[3]))
        .await
        .expect("sent");
    assert_eq!(next_data(&mut eager).await, CHUNKS[3]);
    assert_eq!(service.flights(), 0, "no longer joinable");
    let late = start(&mut service).await;
    let (_, reply) = upstreams
        .next_request()
        .await
        .expect("a request of its own");
    reply.send_response(Response::new(Channel::new(1).1));
    let late = late.await.expect("a response");
    assert_eq!(late.headers()["x-singleflight-shared"], "false");
    drop(sender);
    assert!(
        eager.frame().await.is_none(),
        "the eager reader is unaffected"
    );
    assert_eq!(service.stats().joined, 0);
}
