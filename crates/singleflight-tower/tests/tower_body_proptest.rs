//! Random schedules of a shared body: chunks arriving, readers reading at
//! their own pace, requests arriving mid-body, the upstream ending or
//! failing, under random windows and spill caps. Whatever the schedule,
//! every reader gets exactly the upstream's bytes and a clean end, or a
//! prefix of them and an error; never a short body that ends cleanly, and
//! never a hang.
//!
//! Everything is polled by hand with a no-op waker, so each step of a
//! schedule is deterministic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::channel::{Channel, Sender};
use http_body_util::{Empty, Full};
use proptest::prelude::*;
use singleflight_tower::{BoxError, Coalesce, CoalesceLayer, CoalescedBody, Error};
use tower::{Layer, Service};
use tower_test::mock::{self, Handle, Mock};

type UpstreamBody = http_body_util::Either<Channel<Bytes, BoxError>, Full<Bytes>>;
type Upstream = Mock<Request<Empty<Bytes>>, Response<UpstreamBody>>;
type Upstreams = Handle<Request<Empty<Bytes>>, Response<UpstreamBody>>;
type Pending =
    Pin<Box<dyn Future<Output = Result<Response<CoalescedBody<UpstreamBody>>, BoxError>>>>;

#[derive(Debug, Clone)]
enum Step {
    /// The upstream sends its next chunk.
    Send,
    /// Reader `i` (modulo the readers there are) polls its body once.
    Read(usize),
    /// A request for the same resource arrives.
    Arrive,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(Step::Send),
            4 => (0usize..8).prop_map(Step::Read),
            1 => Just(Step::Arrive),
        ],
        0..60,
    )
}

fn poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A request and, once it has its head, what its body gave so far.
struct Client {
    pending: Option<Pending>,
    /// Its response came from a request of its own, not the flight's.
    own: bool,
    body: Option<CoalescedBody<UpstreamBody>>,
    read: Vec<u8>,
    end: Option<Result<(), Error>>,
}

impl Client {
    fn new(service: &mut Coalesce<Upstream>) -> Self {
        assert!(
            poll(Pin::new(&mut std::future::poll_fn(
                |cx| service.poll_ready(cx)
            )))
            .is_ready()
        );
        let request = Request::get("/file").body(Empty::new()).expect("a request");
        Self {
            pending: Some(Box::pin(service.call(request))),
            own: false,
            body: None,
            read: Vec::new(),
            end: None,
        }
    }

    /// One step: the head if it has come, else one frame of the body.
    fn step(&mut self) {
        if let Some(pending) = self.pending.as_mut() {
            if let Poll::Ready(response) = poll(pending.as_mut()) {
                self.pending = None;
                let response = response.expect("a response");
                self.own = response.headers().contains_key("x-own-request");
                self.body = Some(response.into_body());
            }
            return;
        }
        let (Some(body), None) = (self.body.as_mut(), &self.end) else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    self.read.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(error))) => self.end = Some(Err(error)),
            Poll::Ready(None) => self.end = Some(Ok(())),
            Poll::Pending => {}
        }
    }

    fn done(&self) -> bool {
        self.end.is_some()
    }
}

/// Answers every upstream request waiting: the first with the streaming
/// body, later ones (requests that could not join) with the whole body.
fn answer(
    upstreams: &mut Upstreams,
    stream: &mut Option<Channel<Bytes, BoxError>>,
    body: &Bytes,
) -> usize {
    let mut answered = 0;
    while let Poll::Ready(Some((_, reply))) = poll(Box::pin(upstreams.next_request()).as_mut()) {
        let response = match stream.take() {
            Some(channel) => Response::new(http_body_util::Either::Left(channel)),
            None => Response::builder()
                .header("x-own-request", "1")
                .body(http_body_util::Either::Right(Full::new(body.clone())))
                .expect("a response"),
        };
        reply.send_response(response);
        answered += 1;
    }
    answered
}

/// Sends a chunk into a channel with room for it.
fn push(sender: &mut Sender<Bytes, BoxError>, chunk: Bytes) {
    let sent = poll(std::pin::pin!(sender.send_data(chunk)));
    assert!(matches!(sent, Poll::Ready(Ok(()))), "room in the channel");
}

/// `fail`: the upstream fails after this many chunks (or all of them).
fn run(
    window: usize,
    spill_max: u64,
    chunks: Vec<Vec<u8>>,
    fail: Option<usize>,
    schedule: Vec<Step>,
) {
    let dir = tempfile::tempdir().expect("a directory");
    let layer = CoalesceLayer::new()
        .body_window(window)
        .spill_max(spill_max)
        .spill_dir(dir.path());
    let (upstream, mut upstreams): (Upstream, Upstreams) = mock::pair();
    let mut service = layer.layer(upstream);
    let sent = fail.map_or(chunks.len(), |after| after.min(chunks.len()));
    // What the upstream sends before it ends or fails; a request of its
    // own gets all of the resource.
    let flown = Bytes::from(chunks[..sent].concat());
    let body = Bytes::from(chunks.concat());
    let (mut sender, channel): (Sender<Bytes, BoxError>, _) = Channel::new(chunks.len() + 1);
    let mut stream = Some(channel);
    let mut next_chunk = 0;
    let mut clients = vec![Client::new(&mut service)];
    let mut requests = answer(&mut upstreams, &mut stream, &body);
    for step in schedule {
        match step {
            Step::Send if next_chunk < sent => {
                let chunk = Bytes::from(chunks[next_chunk].clone());
                push(&mut sender, chunk);
                next_chunk += 1;
            }
            Step::Send => {}
            Step::Read(i) => {
                let n = clients.len();
                clients[i % n].step();
            }
            Step::Arrive => clients.push(Client::new(&mut service)),
        }
        requests += answer(&mut upstreams, &mut stream, &body);
    }
    // The rest of the body, then its end or a failure.
    for chunk in &chunks[next_chunk..sent] {
        push(&mut sender, Bytes::from(chunk.clone()));
    }
    if fail.is_some() {
        sender.abort("upstream reset".into());
    } else {
        drop(sender);
    }
    // Everyone reads to the end; a reader that never gets there hangs.
    for _ in 0..10_000 {
        requests += answer(&mut upstreams, &mut stream, &body);
        if clients.iter().all(Client::done) {
            break;
        }
        for client in &mut clients {
            client.step();
        }
    }
    for (i, client) in clients.iter().enumerate() {
        let end = client
            .end
            .as_ref()
            .unwrap_or_else(|| panic!("reader {i} hangs"));
        let whole = if client.own { &body } else { &flown };
        assert!(
            whole.starts_with(&client.read),
            "reader {i} got bytes the upstream did not send"
        );
        match end {
            Ok(()) => {
                assert!(
                    client.own || fail.is_none(),
                    "reader {i} ended cleanly a failed body"
                );
                assert_eq!(
                    client.read.len(),
                    whole.len(),
                    "reader {i} ended short, cleanly"
                );
            }
            Err(Error::Upstream(_)) => {
                assert!(
                    fail.is_some() && !client.own,
                    "reader {i}: an upstream error that was not"
                );
            }
            Err(Error::FellBehind { .. }) => {
                // Only when the spill file could not hold what left the
                // window (chunks leave it whole, so that can be a little
                // more than the body's length less the window).
                assert!(
                    (flown.len() as u64) > spill_max,
                    "reader {i} fell behind a body the spill file could hold"
                );
            }
            Err(other) => panic!("reader {i}: {other}"),
        }
    }
    if fail.is_none() {
        // Every request was answered from the first flight, or went up on
        // its own when it could not join: never more requests than clients.
        assert!(requests <= clients.len());
    }
    let left = std::fs::read_dir(dir.path()).expect("listed").count();
    assert_eq!(left, 0, "nothing is left in the spill directory");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_reader_gets_the_whole_body_or_an_error(
        window in 1usize..48,
        spill_max in prop_oneof![Just(0u64), 1u64..64, Just(1u64 << 30)],
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..12), 0..16),
        fail in prop::option::of(0usize..16),
        schedule in steps(),
    ) {
        run(window, spill_max, chunks, fail, schedule);
    }
}
