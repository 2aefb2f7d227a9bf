//! The memo's hit path against a bare `get` on the same cache crate
//! (quick_cache), side by side in one run. Target: at most 1.2x.
//!
//! `cargo bench -p singleflight --bench memo`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;

const KEYS: u64 = 1_000;

fn memo_hit(c: &mut Criterion) {
    let mut bench = c.benchmark_group("memo_hit");

    // The floor: the cache crate alone, same key and value types, same
    // hasher and capacity as the memo's.
    let bare = quick_cache::sync::Cache::<u64, u64>::new(10_000);
    for k in 0..KEYS {
        bare.insert(k, k);
    }
    let mut k = 0;
    bench.bench_function("quick_cache_get", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(bare.get(black_box(&k)))
        })
    });

    let group = singleflight::sync::Group::<u64, u64>::builder()
        .memo(Duration::from_secs(3600))
        .build();
    for k in 0..KEYS {
        group.call(k, || k);
    }
    let mut k = 0;
    bench.bench_function("sync_group_memo_hit", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(group.call(black_box(k), || unreachable!("memo hit")).value)
        })
    });

    struct Frozen(std::time::Instant);
    impl singleflight::policy::Clock for Frozen {
        fn now(&self) -> std::time::Instant {
            self.0
        }
    }
    let frozen = singleflight::sync::Group::<u64, u64>::builder()
        .memo(Duration::from_secs(3600))
        .clock(Frozen(std::time::Instant::now()))
        .build();
    for k in 0..KEYS {
        frozen.call(k, || k);
    }
    let mut k = 0;
    bench.bench_function("sync_group_memo_hit_frozen_clock", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(frozen.call(black_box(k), || unreachable!("memo hit")).value)
        })
    });

    let group = singleflight::future::Group::<u64, u64>::builder()
        .memo(Duration::from_secs(3600))
        .build();
    for k in 0..KEYS {
        group.call(k, move || async move { k }).now_or_never();
    }
    let mut k = 0;
    bench.bench_function("future_group_memo_hit", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            let call = group.call(black_box(k), || async { unreachable!("memo hit") });
            black_box(call.now_or_never().map(|out| out.value))
        })
    });

    // For scale: one read of the system clock, which every hit pays.
    bench.bench_function("instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    bench.bench_function("coarse_now", |b| {
        b.iter(|| black_box(coarsetime::Instant::now_without_cache_update()))
    });

    // For scale: the plain group (no policy), a lone call that runs the work.
    let plain = singleflight::sync::Group::<u64, u64>::new();
    let mut k = 0;
    bench.bench_function("sync_group_plain_call", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(plain.call(black_box(k), || k).value)
        })
    });
    bench.finish();
}

criterion_group!(benches, memo_hit);
criterion_main!(benches);
