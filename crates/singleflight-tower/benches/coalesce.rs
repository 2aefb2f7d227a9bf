//! Criterion benches of the coalescing layer, in process (no sockets), each
//! comparing the layer with what it stands in for, side by side in one run:
//!
//! - `not_coalesced`: a POST through the layer against the same POST to the
//!   inner service alone (target: at most 3% more).
//! - `one_key_256`: 256 concurrent GETs on one key through the layer against
//!   one request to the inner service plus copying its body to 256
//!   receivers (target: at most 1.5x). The layer's waiters either gather
//!   their body into one buffer (`layer_256_gets`, one copy each, like the
//!   baseline) or take its frames as they come (`layer_256_gets_frames`,
//!   what a server writing to a socket does).
//!
//! ```text
//! cargo bench -p singleflight-tower --bench coalesce
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

/// A POST to a cheap in-process service, through the layer or not.
fn not_coalesced(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let inner = tower::service_fn(|request: Request<Empty<Bytes>>| async move {
        black_box(request);
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"created"))))
    });
    let layered = CoalesceLayer::new().layer(inner);
    let post = || {
        Request::post("http://example.test/items")
            .body(Empty::<Bytes>::new())
            .expect("a valid request")
    };
    let mut group = c.benchmark_group("not_coalesced");
    group.bench_function("inner", |b| {
        let mut inner = inner;
        b.to_async(&rt).iter(|| {
            let call = inner.call(post());
            async move {
                let response = call.await.expect("infallible");
                black_box(response.into_body().collect().await.expect("a body"));
            }
        });
    });
    group.bench_function("layer", |b| {
        let mut layered = layered.clone();
        b.to_async(&rt).iter(|| {
            let call = layered.call(post());
            async move {
                let response = call.await.expect("infallible");
                black_box(response.into_body().collect().await.expect("a body"));
            }
        });
    });
    group.finish();
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
        b.to_async(&rt).iter(|| {
            let inner = inner.clone();
            async move {
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
        });
    });
    group.bench_function("layer_256_gets", |b| {
        b.to_async(&rt).iter(|| {
            let layered = layered.clone();
            async move {
                let waiters = (0..WAITERS).map(|_| {
                    let layered = layered.clone();
                    async move {
                        let response = layered.oneshot(get()).await.expect("infallible");
                        // Collecting copies the chunks into one buffer: the
                        // same one copy per receiver as `to_vec` above.
                        let body = response.into_body().collect().await.expect("a body");
                        black_box(body.to_bytes());
                    }
                });
                futures::future::join_all(waiters).await;
            }
        });
    });
    // What a server does with each waiter's body: write every frame out as
    // it comes, without gathering them into one buffer first.
    group.bench_function("layer_256_gets_frames", |b| {
        b.to_async(&rt).iter(|| {
            let layered = layered.clone();
            async move {
                let waiters = (0..WAITERS).map(|_| {
                    let layered = layered.clone();
                    async move {
                        let response = layered.oneshot(get()).await.expect("infallible");
                        let mut body = response.into_body();
                        while let Some(frame) = body.frame().await {
                            black_box(frame.expect("a frame"));
                        }
                    }
                });
                futures::future::join_all(waiters).await;
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = not_coalesced, one_key_256
}
criterion_main!(benches);
