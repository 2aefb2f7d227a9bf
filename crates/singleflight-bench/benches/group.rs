//! Criterion benches of the groups alone, one call with a fresh key (the
//! distinct-keys path, where the group's own cost is the whole figure), for
//! our blocking and async groups against the floor and the peers, side by side.
//!
//! `cargo bench -p singleflight-bench --bench group`
//!
//! `sf-compare` (via `scripts/bench`) runs the multi-thread scenarios and Go;
//! this bench gives criterion's statistics for the single-call path.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use singleflight_bench::asynch::{AsyncSingleflight, Coalescer, SingleflightAsync};
use singleflight_bench::blocking::{Blocking, Crate03, Floor};
use singleflight_bench::{asynch, blocking, key};

fn sync_distinct(c: &mut Criterion) {
    let mut bench = c.benchmark_group("sync_distinct_key");
    fn one<G: Blocking>(
        bench: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ) {
        let group = G::create();
        let mut i = 0;
        bench.bench_function(G::NAME, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    key(i)
                },
                |k| black_box(group.call(k, || 42)),
                BatchSize::SmallInput,
            )
        });
    }
    one::<blocking::Ours>(&mut bench);
    one::<Floor>(&mut bench);
    one::<Crate03>(&mut bench);
    bench.finish();
}

/// Polls `fut` to its end with a no-op waker: every call here ends at its
/// first poll (the work is ready at once), so no executor is involved.
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn async_distinct(c: &mut Criterion) {
    let mut bench = c.benchmark_group("async_distinct_key");
    fn one<C: Coalescer>(
        bench: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ) {
        let group = C::create();
        let mut i = 0;
        bench.bench_function(C::NAME, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    key(i)
                },
                |k| black_box(run(group.call(k, || async { 42 }))),
                BatchSize::SmallInput,
            )
        });
    }
    one::<asynch::Ours>(&mut bench);
    one::<SingleflightAsync>(&mut bench);
    one::<AsyncSingleflight>(&mut bench);
    bench.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sync_distinct, async_distinct
}
criterion_main!(benches);
