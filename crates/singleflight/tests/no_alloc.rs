//! A memo hit with a `String` key allocates nothing, in either group: the
//! call borrows its key and clones it only to start a flight.
//!
//! Counted with `stats_alloc`, which counts for the whole process: this
//! binary holds one test, so nothing else runs while it counts.

use std::alloc::System;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use singleflight::{Source, future, sync};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const HITS: usize = 1_000;

/// The fewest allocations made in three runs of `f`: the count is the
/// process's, and a thread of the runtime or the harness may allocate once
/// during one run, where an allocation of `f` shows in every run.
fn allocations_in(mut f: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            f();
            let change = region.change();
            change.allocations + change.reallocations
        })
        .min()
        .unwrap_or(usize::MAX)
}

#[test]
fn a_memo_hit_with_a_string_key_allocates_nothing() {
    // The counter counts: a key made per call is one allocation per call.
    let owned = sync::Group::<String, u64>::builder()
        .memo_all(Duration::from_secs(60))
        .build();
    owned.call("key", || 1);
    let made = allocations_in(|| {
        for _ in 0..HITS {
            black_box(owned.call_owned(String::from("key"), || unreachable!("a hit")));
        }
    });
    assert_eq!(made, HITS, "one allocation per owned key");

    let group = sync::Group::<String, u64>::builder()
        .memo_all(Duration::from_secs(60))
        .build();
    assert_eq!(group.call("key", || 7).source, Source::Flight);
    let made = allocations_in(|| {
        for _ in 0..HITS {
            let out = group.call("key", || unreachable!("a hit"));
            assert_eq!((out.value, out.source), (7, Source::Memo));
        }
    });
    assert_eq!(made, 0, "the blocking group's hits allocated");

    let group = future::Group::<String, u64>::builder()
        .memo_all(Duration::from_secs(60))
        .build();
    let mut cx = Context::from_waker(Waker::noop());
    let first = pin!(group.call("key", || async { 7 })).poll(&mut cx);
    assert!(matches!(first, Poll::Ready(ref out) if out.source == Source::Flight));
    let made = allocations_in(|| {
        for _ in 0..HITS {
            let call = pin!(group.call("key", || async { unreachable!("a hit") }));
            match call.poll(&mut cx) {
                Poll::Ready(out) => assert_eq!((out.value, out.source), (7, Source::Memo)),
                Poll::Pending => panic!("a hit is ready at its first poll"),
            }
        }
    });
    assert_eq!(made, 0, "the async group's hits allocated");
}
