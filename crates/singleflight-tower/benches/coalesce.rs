//! Criterion benches of the coalescing layer, in process (no sockets), each
//! comparing the layer with what it stands in for, side by side in one run:
//!
//! - `not_coalesced`: a POST through the layer against the same POST to the
//!   inner service alone (target: at most 3% more), and, for scale, through
//!   `wrap_only`, a layer that does nothing but choose by method and wrap
//!   the future and the body: the least any such layer costs.
//! - `one_key_256`: 256 concurrent GETs on one key through the layer
//!   (`layer_256_gets`) against the copying baseline, one request to the
//!   inner service plus copying its body to 256 receivers
//!   (`inner_once_and_256_copies`; target: at most 1.5x), and against the
//!   same 256 GETs answered from memory with no layer and no upstream work
//!   (`memory_256_gets`): what 256 receivers cost by themselves. Each
//!   waiter gathers its body into one buffer (one copy each, like the
//!   baseline); the `_frames` variants take the frames as they come
//!   instead, as a server writing to a socket does.
//! - `not_coalesced/interleaved` and `one_key_256/interleaved` run the same
//!   routines in rounds that take turns and print the median per-round
//!   ratios, which load from other processes hits alike. One process's
//!   ratio still depends on its memory layout (the pass-through path is
//!   mostly copies of 200-240 bytes, whose speed depends on the addresses):
//!   quote the median over a few processes (see BENCHMARKS.md).
//!
//! ```text
//! cargo bench -p oneflight-tower --bench coalesce -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Times are the benchmark thread's CPU time, not wall time: everything runs
//! on that one thread (a current-thread runtime), and the project's machine
//! is shared with other builds, whose load would otherwise skew one side of
//! a comparison more than the other.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use singleflight_tower::CoalesceLayer;
use tower::{Layer, Service, ServiceExt};

/// The CPU time of the calling thread, as a criterion measurement.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }

    fn end(&self, started: ThreadTime) -> Duration {
        started.elapsed()
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanoseconds
    }
}

/// Formats nanoseconds like criterion's wall-time formatter.
struct Nanoseconds;

impl ValueFormatter for Nanoseconds {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        for value in values {
            *value *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        match throughput {
            Throughput::Elements(elements) => {
                for value in values {
                    *value = *elements as f64 / (*value * 1e-9);
                }
                "elem/s"
            }
            _ => "",
        }
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

const WAITERS: usize = 256;
const CHUNKS: usize = 16;
const CHUNK: usize = 4096;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// The least any layer that chooses by method can do, for scale: look at
/// the method, and wrap the inner future and body in a two-arm enum, keeping
/// the inner body's error type. Only ever given POSTs (its other arm stands
/// for whatever a real layer does with the rest, and never completes). Not
/// a target; it shows what of the layer's pass-through cost is the wrapping
/// itself.
mod wrap_only {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{Method, Request, Response};
    use http_body::{Body, Frame};
    use pin_project_lite::pin_project;
    use tower::Service;

    #[derive(Clone)]
    pub(crate) struct WrapOnly<S>(pub(crate) S);

    pin_project! {
        #[project = FutureProj]
        pub(crate) enum WrapFuture<F> {
            Inner { #[pin] future: F },
            Other { other: Box<u8> },
        }
    }

    impl<F, B, E> Future for WrapFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<WrapBody<B>>, E>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                FutureProj::Inner { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        Poll::Ready(Ok(response.map(|body| WrapBody::Inner { body })))
                    }
                    Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                    Poll::Pending => Poll::Pending,
                },
                FutureProj::Other { .. } => Poll::Pending,
            }
        }
    }

    pin_project! {
        #[project = BodyProj]
        pub(crate) enum WrapBody<B> {
            Inner { #[pin] body: B },
            Other { other: Box<u8> },
        }
    }

    impl<B: Body<Data = Bytes>> Body for WrapBody<B> {
        type Data = Bytes;
        type Error = B::Error;

        #[inline]
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
            match self.project() {
                BodyProj::Inner { body } => body.poll_frame(cx),
                BodyProj::Other { .. } => Poll::Ready(None),
            }
        }
    }

    impl<S, ReqBody, B> Service<Request<ReqBody>> for WrapOnly<S>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
    {
        type Response = Response<WrapBody<B>>;
        type Error = S::Error;
        type Future = WrapFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }

        #[inline]
        fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return WrapFuture::Inner {
                    future: self.0.call(request),
                };
            }
            drop(request);
            WrapFuture::Other { other: Box::new(0) }
        }
    }
}

/// The inner service of `not_coalesced`: answers at once, in process.
fn at_once() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Copy
+ Send
+ 'static {
    tower::service_fn(|request: Request<Empty<Bytes>>| async move {
        black_box(request);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"created"))))
    })
}

fn post() -> Request<Empty<Bytes>> {
    Request::post("http://example.test/items")
        .body(Empty::<Bytes>::new())
        .expect("a valid request")
}

/// One request of `not_coalesced`, the same for every service: call it with
/// a new POST, await the response, collect the body.
macro_rules! post_through {
    ($service:expr) => {{
        let call = $service.call(post());
        async move {
            let response = call.await.expect("infallible");
            black_box(response.into_body().collect().await.expect("a body"));
        }
    }};
}

/// A POST to a cheap in-process service: alone, through the layer, and
/// through a layer that only wraps (`wrap_only`, for scale).
fn not_coalesced(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let mut group = c.benchmark_group("not_coalesced");
    group.bench_function("inner", |b| {
        let mut inner = at_once();
        b.to_async(&rt).iter(|| post_through!(inner));
    });
    group.bench_function("layer", |b| {
        let mut layered = CoalesceLayer::new().layer(at_once());
        b.to_async(&rt).iter(|| post_through!(layered));
    });
    group.bench_function("wrap_only", |b| {
        let mut wrapped = wrap_only::WrapOnly(at_once());
        b.to_async(&rt).iter(|| post_through!(wrapped));
    });
    group.finish();
}

/// The three paths of `not_coalesced`, interleaved: batches take turns
/// (the order rotating), so that load from other processes hits them alike;
/// prints the medians and the median of the per-round ratios to the inner
/// service alone. (Criterion measures one function after the other, which
/// on a busy 2-core machine moves a 3% ratio either way.)
fn not_coalesced_interleaved(_: &mut Criterion<ThreadCpu>) {
    if !wanted("not_coalesced/interleaved") {
        return;
    }
    const BATCH: u32 = 4000;
    const ROUNDS: usize = 101;
    let rt = runtime();
    let mut inner = at_once();
    let mut layered = CoalesceLayer::new().layer(at_once());
    let mut wrapped = wrap_only::WrapOnly(at_once());
    // `BATCH` requests on the runtime; CPU time per request.
    macro_rules! batch {
        ($service:expr) => {{
            let started = ThreadTime::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    post_through!($service).await;
                }
            });
            started.elapsed().as_nanos() as f64 / f64::from(BATCH)
        }};
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for turn in 0..3 {
            let path = (round + turn) % 3;
            times[path].push(match path {
                0 => batch!(inner),
                1 => batch!(layered),
                _ => batch!(wrapped),
            });
        }
    }
    let ratio = |path: usize| {
        median(
            times[path]
                .iter()
                .zip(&times[0])
                .map(|(time, inner)| time / inner)
                .collect(),
        )
    };
    println!(
        "not_coalesced/interleaved: inner {:.1} ns, layer {:.1} ns ({:.3}x), wrap_only {:.1} ns \
         ({:.3}x); medians and median per-round ratios over {ROUNDS} rounds of {BATCH}",
        median(times[0].clone()),
        median(times[1].clone()),
        ratio(1),
        median(times[2].clone()),
        ratio(2),
    );
}

/// Whether the command line's filters (criterion's, taken here as plain
/// substrings) ask for `name`: criterion does not filter the benches that
/// print their own numbers.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-') && arg.parse::<f64>().is_err())
        .collect();
    filters.is_empty() || filters.iter().any(|filter| name.contains(filter.as_str()))
}

type Chunks = stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// The upstream of `one_key_256`: answers after yielding once (any real
/// upstream is asynchronous), with a body of `CHUNKS` chunks.
#[derive(Clone)]
struct StreamingUpstream {
    chunk: Bytes,
}

impl Service<Request<Empty<Bytes>>> for StreamingUpstream {
    type Response = Response<StreamBody<Chunks>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Empty<Bytes>>) -> Self::Future {
        let chunk = self.chunk.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            let frames: Vec<_> = (0..CHUNKS)
                .map(|_| Ok(Frame::data(chunk.clone())))
                .collect();
            Ok(Response::new(StreamBody::new(stream::iter(frames))))
        })
    }
}

fn streaming_upstream() -> StreamingUpstream {
    StreamingUpstream {
        chunk: Bytes::from(vec![b'x'; CHUNK]),
    }
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://example.test/report")
        .body(Empty::new())
        .expect("a valid request")
}

/// An in-process service that answers every request at once with the body
/// already in memory (a `Bytes` clone per chunk): the least any server can
/// do to give 256 requests that body, with no upstream work at all.
fn memory() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<StreamBody<Chunks>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<StreamBody<Chunks>>, Infallible>>,
> + Clone {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tower::service_fn(move |_request: Request<Empty<Bytes>>| {
        let frames: Vec<_> = (0..CHUNKS)
            .map(|_| Ok(Frame::data(chunk.clone())))
            .collect();
        async move { Ok(Response::new(StreamBody::new(stream::iter(frames)))) }
    })
}

/// The copying baseline: one request to the inner service, its body
/// gathered, then copied to 256 receivers.
async fn inner_once_and_256_copies(inner: StreamingUpstream) {
    let response = inner.oneshot(get()).await.expect("infallible");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    for _ in 0..WAITERS {
        black_box(body.to_vec());
    }
}

/// 256 concurrent GETs to `service`, each gathering its body into one
/// buffer: collecting copies the chunks into one buffer, the same one copy
/// per receiver as `to_vec` above.
async fn gets_256<S>(service: S)
where
    S: Service<Request<Empty<Bytes>>> + Clone,
    S::Response: IntoBody,
    S::Error: std::fmt::Debug,
{
    let waiters = (0..WAITERS).map(|_| {
        let service = service.clone();
        async move {
            let response = service.oneshot(get()).await.expect("a response");
            let body = response.into_body().collect().await.expect("a body");
            black_box(body.to_bytes());
        }
    });
    futures::future::join_all(waiters).await;
}

/// 256 concurrent GETs to `service`, each taking its body's frames as they
/// come: what a server writing each response to a socket does.
async fn gets_256_frames<S>(service: S)
where
    S: Service<Request<Empty<Bytes>>> + Clone,
    S::Response: IntoBody,
    S::Error: std::fmt::Debug,
{
    let waiters = (0..WAITERS).map(|_| {
        let service = service.clone();
        async move {
            let response = service.oneshot(get()).await.expect("a response");
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                black_box(frame.expect("a frame"));
            }
        }
    });
    futures::future::join_all(waiters).await;
}

/// A response whose body is read: the upstream's and the layer's.
trait IntoBody {
    type Body: http_body::Body<Data = Bytes, Error: std::fmt::Debug> + Unpin;
    fn into_body(self) -> Self::Body;
}

impl<B> IntoBody for Response<B>
where
    B: http_body::Body<Data = Bytes, Error: std::fmt::Debug> + Unpin,
{
    type Body = B;
    fn into_body(self) -> B {
        Response::into_body(self)
    }
}

fn one_key_256(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let layered = CoalesceLayer::new().layer(streaming_upstream());

    // Check once that the 256 requests do share one upstream request.
    rt.block_on(async {
        let before = layered.stats().flights;
        let responses =
            futures::future::join_all((0..WAITERS).map(|_| layered.clone().oneshot(get()))).await;
        assert_eq!(layered.stats().flights - before, 1, "one flight for all");
        for response in responses {
            let body = response.expect("infallible").into_body().collect().await;
            assert_eq!(body.expect("a body").to_bytes().len(), CHUNKS * CHUNK);
        }
    });

    let mut group = c.benchmark_group("one_key_256");
    group.sample_size(50);
    group.bench_function("inner_once_and_256_copies", |b| {
        let inner = streaming_upstream();
        b.to_async(&rt)
            .iter(|| inner_once_and_256_copies(inner.clone()));
    });
    // The receivers alone, in the same harness as the layer's: what 256
    // concurrent GETs cost when the body is already in memory.
    group.bench_function("memory_256_gets", |b| {
        let memory = memory();
        b.to_async(&rt).iter(|| gets_256(memory.clone()));
    });
    group.bench_function("layer_256_gets", |b| {
        b.to_async(&rt).iter(|| gets_256(layered.clone()));
    });
    group.bench_function("memory_256_gets_frames", |b| {
        let memory = memory();
        b.to_async(&rt).iter(|| gets_256_frames(memory.clone()));
    });
    group.bench_function("layer_256_gets_frames", |b| {
        b.to_async(&rt).iter(|| gets_256_frames(layered.clone()));
    });
    group.finish();
}

/// The paths of `one_key_256`, interleaved like `not_coalesced_interleaved`
/// (rounds of each path in turn, the order rotating); prints each path's
/// median and the median per-round ratios of the layer to the copying
/// baseline and to the same 256 GETs answered from memory.
fn one_key_256_interleaved(_: &mut Criterion<ThreadCpu>) {
    if !wanted("one_key_256/interleaved") {
        return;
    }
    const BATCH: u32 = 10;
    const ROUNDS: usize = 61;
    let rt = runtime();
    let inner = streaming_upstream();
    let layered = CoalesceLayer::new().layer(streaming_upstream());
    let memory = memory();
    // `BATCH` runs of a routine on the runtime; CPU time per run.
    macro_rules! batch {
        ($routine:expr) => {{
            let started = ThreadTime::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    $routine.await;
                }
            });
            started.elapsed().as_nanos() as f64 / f64::from(BATCH)
        }};
    }
    const PATHS: usize = 5;
    let mut times: [Vec<f64>; PATHS] = Default::default();
    for round in 0..ROUNDS {
        for turn in 0..PATHS {
            let path = (round + turn) % PATHS;
            times[path].push(match path {
                0 => batch!(inner_once_and_256_copies(inner.clone())),
                1 => batch!(gets_256(memory.clone())),
                2 => batch!(gets_256(layered.clone())),
                3 => batch!(gets_256_frames(memory.clone())),
                _ => batch!(gets_256_frames(layered.clone())),
            });
        }
    }
    let ratio = |path: usize, to: usize| {
        median(
            times[path]
                .iter()
                .zip(&times[to])
                .map(|(time, base)| time / base)
                .collect(),
        )
    };
    let us = |path: usize| median(times[path].clone()) / 1e3;
    println!(
        "one_key_256/interleaved: inner_once_and_256_copies {:.0} µs, memory_256_gets {:.0} µs, \
         layer_256_gets {:.0} µs, memory_256_gets_frames {:.0} µs, layer_256_gets_frames \
         {:.0} µs; layer_256_gets / inner_once_and_256_copies {:.2}x, / memory_256_gets \
         {:.2}x; memory_256_gets / inner_once_and_256_copies {:.2}x; layer_256_gets_frames / \
         inner_once_and_256_copies {:.2}x, / memory_256_gets_frames {:.2}x; medians and \
         median per-round ratios over {ROUNDS} rounds of {BATCH}",
        us(0),
        us(1),
        us(2),
        us(3),
        us(4),
        ratio(2, 0),
        ratio(2, 1),
        ratio(1, 0),
        ratio(4, 0),
        ratio(4, 3),
    );
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = not_coalesced, not_coalesced_interleaved, one_key_256, one_key_256_interleaved
}
criterion_main!(benches);
