//! The memo's hit path against a bare `get` on the same cache crate
//! (quick_cache), side by side in one run. Target: at most 1.2x.
//!
//! `cargo bench -p oneflight --bench memo`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;

/// Polls a call's future once where it stands, as `.await` does (moving it
/// into `now_or_never` would time a 72-byte copy), with a waker that does
/// nothing: a memo hit is ready at the first poll.
#[inline(always)]
fn poll_once<F: Future<Output = singleflight::Outcome<u64>>>(call: F) -> Option<u64> {
    let call = pin!(call);
    match call.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out.value),
        Poll::Pending => None,
    }
}

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
        .memo_all(Duration::from_secs(3600))
        .build();
    for k in 0..KEYS {
        group.call(&k, || k);
    }
    let mut k = 0;
    bench.bench_function("sync_group_memo_hit", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(group.call(&black_box(k), || unreachable!("memo hit")).value)
        })
    });

    struct Frozen(std::time::Instant);
    impl singleflight::policy::Clock for Frozen {
        fn now(&self) -> std::time::Instant {
            self.0
        }
    }
    let frozen = singleflight::sync::Group::<u64, u64>::builder()
        .memo_all(Duration::from_secs(3600))
        .clock(Frozen(std::time::Instant::now()))
        .build();
    for k in 0..KEYS {
        frozen.call(&k, || k);
    }
    let mut k = 0;
    bench.bench_function("sync_group_memo_hit_frozen_clock", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(
                frozen
                    .call(&black_box(k), || unreachable!("memo hit"))
                    .value,
            )
        })
    });

    let group = singleflight::future::Group::<u64, u64>::builder()
        .memo_all(Duration::from_secs(3600))
        .build();
    for k in 0..KEYS {
        group.call(&k, move || async move { k }).now_or_never();
    }
    let mut k = 0;
    bench.bench_function("future_group_memo_hit", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            let key = black_box(k);
            let call = group.call(&key, || async { unreachable!("memo hit") });
            black_box(poll_once(call))
        })
    });

    // For scale: one read of the system clock, which a hit would pay without
    // the ticking clock (and pays with `SystemClock`).
    bench.bench_function("instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });

    // For scale: the plain group (no policy), a lone call that runs the work.
    let plain = singleflight::sync::Group::<u64, u64>::new();
    let mut k = 0;
    bench.bench_function("sync_group_plain_call", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(plain.call(&black_box(k), || k).value)
        })
    });
    bench.finish();
}

/// The same two paths, interleaved: batches of bare gets and memo hits take
/// turns, so load from other processes hits both alike; prints the median
/// of the per-pair ratios. (Criterion measures one function after the
/// other, which on a busy 2-core machine swings the ratio either way.)
fn interleaved_ratio(_: &mut Criterion) {
    const BATCH: u64 = 20_000;
    const PAIRS: usize = 201;
    let bare = quick_cache::sync::Cache::<u64, u64>::new(10_000);
    let group = singleflight::sync::Group::<u64, u64>::builder()
        .memo_all(Duration::from_secs(3600))
        .build();
    // For scale: moka, whose `get` reads a clock itself.
    let moka = moka::sync::Cache::<u64, u64>::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let future_group = singleflight::future::Group::<u64, u64>::builder()
        .memo_all(Duration::from_secs(3600))
        .build();
    for k in 0..KEYS {
        bare.insert(k, k);
        group.call(&k, || k);
        moka.insert(k, k);
        future_group
            .call(&k, move || async move { k })
            .now_or_never();
    }
    let time = |f: &mut dyn FnMut(u64)| {
        let start = std::time::Instant::now();
        for i in 0..BATCH {
            f(i % KEYS);
        }
        start.elapsed().as_secs_f64() * 1e9 / BATCH as f64
    };
    let mut bare_get = |k: u64| {
        black_box(bare.get(black_box(&k)));
    };
    let mut memo_hit = |k: u64| {
        black_box(group.call(&black_box(k), || unreachable!("memo hit")).value);
    };
    let mut moka_get = |k: u64| {
        black_box(moka.get(black_box(&k)));
    };
    let mut async_hit = |k: u64| {
        let key = black_box(k);
        let call = future_group.call(&key, || async { unreachable!("memo hit") });
        black_box(poll_once(call));
    };
    let mut mokas = Vec::with_capacity(PAIRS);
    let mut asyncs = Vec::with_capacity(PAIRS);
    let mut pairs: Vec<(f64, f64)> = (0..PAIRS)
        .map(|i| {
            mokas.push(time(&mut moka_get));
            asyncs.push(time(&mut async_hit));
            // Alternate which goes first, so neither always gets the warm cache.
            if i % 2 == 0 {
                let b = time(&mut bare_get);
                (b, time(&mut memo_hit))
            } else {
                let m = time(&mut memo_hit);
                (time(&mut bare_get), m)
            }
        })
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut ratios: Vec<f64> = pairs.iter().map(|(b, m)| m / b).collect();
    let mut async_ratios: Vec<f64> = pairs.iter().zip(&asyncs).map(|((b, _), a)| a / b).collect();
    let mut bares: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let mut memos: Vec<f64> = pairs.drain(..).map(|p| p.1).collect();
    println!(
        "memo_hit/interleaved: quick_cache_get {:.1} ns, sync_group_memo_hit {:.1} ns, \
         median ratio {:.2}x over {PAIRS} pairs of {BATCH} ops; future_group_memo_hit {:.1} ns, \
         median ratio {:.2}x; moka::sync get {:.1} ns",
        median(&mut bares),
        median(&mut memos),
        median(&mut ratios),
        median(&mut asyncs),
        median(&mut async_ratios),
        median(&mut mokas),
    );
}

criterion_group!(benches, memo_hit, interleaved_ratio);
criterion_main!(benches);
