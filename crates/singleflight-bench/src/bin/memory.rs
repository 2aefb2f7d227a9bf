//! `sf-memory`: the bytes the groups allocate, counted by a counting global
//! allocator (`stats_alloc`, which wraps the system allocator).
//!
//! The counters are global, so every measurement keeps the other threads
//! parked (or has none) while its window is open, and builds keys, values,
//! channels and threads before the window. Keys are moved into the calls
//! already built, values are `u64`; what the window sees is the groups' own
//! allocation, plus the value where a group boxes it (reported apart).
//!
//! ```text
//! sf-memory
//! ```

use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use singleflight_bench::asynch::{self, AsyncSingleflight, Coalescer, Moka, SingleflightAsync};
use singleflight_bench::blocking::{self, Blocking, Crate03, Floor};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated (cumulative), allocations, and bytes still live (net).
#[derive(Clone, Copy, Debug)]
struct Bytes {
    allocated: usize,
    allocations: usize,
    live: isize,
}

fn since(region: &Region<'_, System>) -> Bytes {
    let s = region.change();
    Bytes {
        allocated: s.bytes_allocated,
        allocations: s.allocations,
        live: s.bytes_allocated as isize - s.bytes_deallocated as isize,
    }
}

const VALUE: usize = size_of::<u64>();
const KEY: usize = size_of::<String>();

/// Keys that warm a group up: enough distinct keys that every shard of a
/// sharded table has made its first allocation, which is the group's, not
/// a flight's (tables keep their buckets when flights leave).
const WARM_KEYS: usize = 1024;

fn warm_sync<G: Blocking>(group: &G) {
    for i in 0..WARM_KEYS {
        group.call(format!("warm-{i}"), || 1);
    }
}

fn warm_async<C: Coalescer>(group: &C) {
    for i in 0..WARM_KEYS {
        let mut f = Box::pin(group.call(format!("warm-{i}"), || async { 1 }));
        while poll_once(&mut f).is_pending() {}
    }
}

/// One flight that nobody joins, on a warmed-up group: bytes per call.
fn sync_alone<G: Blocking>() -> Bytes {
    let group = G::create();
    let keys: Vec<String> = (0..1000).map(singleflight_bench::key).collect();
    warm_sync(&group);
    let region = Region::new(GLOBAL);
    for k in keys {
        group.call(k, || 1);
    }
    let b = since(&region);
    Bytes {
        allocated: b.allocated / 1000,
        allocations: b.allocations / 1000,
        live: b.live / 1000,
    }
}

/// `depth` flights in progress at once (each flight's work calls the group
/// for the next key): live bytes per flight at the innermost call.
fn sync_nested<G: Blocking>(depth: usize) -> isize {
    thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let group = G::create();
            let keys: Vec<String> = (0..depth).map(singleflight_bench::key).collect();
            let region = Region::new(GLOBAL);
            let mut live = 0;
            nest(&group, keys, &region, &mut live);
            live / depth as isize
        })
        .expect("spawn")
        .join()
        .expect("nested flights panicked")
}

fn nest<G: Blocking>(
    group: &G,
    mut keys: Vec<String>,
    region: &Region<'_, System>,
    live: &mut isize,
) {
    let Some(key) = keys.pop() else {
        *live = since(region).live;
        return;
    };
    let keys = std::cell::RefCell::new(Some(keys));
    let live = std::cell::RefCell::new(live);
    group.call(key, || {
        if let Some(keys) = keys.borrow_mut().take() {
            nest(group, keys, region, &mut live.borrow_mut());
        }
        1
    });
}

/// One flight with `followers` threads waiting on it: bytes allocated over
/// the whole flight, and the executions (must be 1).
/// [`sync_followed_once`] until every follower joined the one flight (up to
/// five tries on a busy machine).
fn sync_followed<G: Blocking>(followers: usize) -> (Bytes, usize) {
    let mut last = sync_followed_once::<G>(followers);
    for _ in 0..4 {
        if last.1 == 1 {
            break;
        }
        last = sync_followed_once::<G>(followers);
    }
    last
}

fn sync_followed_once<G: Blocking>(followers: usize) -> (Bytes, usize) {
    let group = Arc::new(G::create());
    let executions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Released by main (window open), then by the leader once in its work.
    let go = Arc::new(Barrier::new(2));
    let in_work = Arc::new(Barrier::new(followers + 1));
    let done = Arc::new(Barrier::new(followers + 2));
    warm_sync(&*group);
    let mut handles = vec![];
    {
        let (group, go, in_work, done, executions) = (
            group.clone(),
            go.clone(),
            in_work.clone(),
            done.clone(),
            executions.clone(),
        );
        let key = "flight".to_string();
        handles.push(thread::spawn(move || {
            go.wait();
            group.call(key, || {
                executions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                in_work.wait();
                // Followers join within this; the count of executions checks it.
                thread::sleep(Duration::from_millis(300));
                2
            });
            done.wait();
        }));
    }
    for _ in 0..followers {
        let (group, in_work, done, executions) = (
            group.clone(),
            in_work.clone(),
            done.clone(),
            executions.clone(),
        );
        let key = "flight".to_string();
        handles.push(thread::spawn(move || {
            in_work.wait();
            // A follower scheduled too late runs a flight of its own: the
            // count of executions tells, and the caller measures again.
            group.call(key, || {
                executions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                3
            });
            done.wait();
        }));
    }
    // Let every thread finish its start-up allocations before the window.
    thread::sleep(Duration::from_millis(50));
    let region = Region::new(GLOBAL);
    go.wait();
    done.wait();
    let b = since(&region);
    for h in handles {
        h.join().expect("a thread panicked");
    }
    (b, executions.load(std::sync::atomic::Ordering::SeqCst))
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

/// Async flight on one thread, polled by hand with a no-op waker (so no
/// executor allocates): one leader whose work waits on a oneshot, then
/// `waiters` followers. Returns (bytes of the leader's first poll, live bytes
/// added by the waiters, bytes of the whole flight cumulative, boxed work size).
fn async_flight<C: Coalescer>(waiters: usize) -> (Bytes, Bytes, Bytes) {
    let group = C::create();
    warm_async(&group);
    let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
    let keys: Vec<String> = (0..=waiters).map(|_| "flight".to_string()).collect();
    let mut keys = keys.into_iter();
    let mut leader = Box::pin(
        group.call(keys.next().unwrap_or_default(), move || async move {
            rx.await.unwrap_or(0)
        }),
    );
    let mut followers: Vec<_> = keys
        .map(|k| Box::pin(group.call(k, || async { 3 })))
        .collect();
    let region = Region::new(GLOBAL);
    assert!(poll_once(&mut leader).is_pending());
    let lead = since(&region);
    for f in &mut followers {
        assert!(poll_once(f).is_pending());
    }
    let after = since(&region);
    let waiting = Bytes {
        allocated: after.allocated - lead.allocated,
        allocations: after.allocations - lead.allocations,
        live: after.live - lead.live,
    };
    let _ = tx.send(2);
    assert!(matches!(poll_once(&mut leader), Poll::Ready(2)));
    for f in &mut followers {
        assert!(
            matches!(poll_once(f), Poll::Ready(2)),
            "a follower ran its own flight"
        );
    }
    let total = since(&region);
    (lead, waiting, total)
}

/// `nests`: whether the group lets a flight's work call it for another key
/// (the crate 0.3 holds its lock while the work runs, so nesting deadlocks).
fn sync_report<G: Blocking>(out: &mut String, nests: bool, coalesces: bool) {
    eprintln!("sf-memory: {}", G::NAME);
    let alone = sync_alone::<G>();
    // hashbrown holds 896 entries in 1,024 buckets: in one table, 896 flights
    // fill it and 1,024 have just doubled it, the two ends of the share per
    // flight. A sharded table spreads them, and lands in between.
    let nested = nests.then(|| (sync_nested::<G>(896), sync_nested::<G>(1024)));
    let nested_s = nested.map_or(
        "n/a (work runs under its lock)".to_string(),
        |(full, grown)| format!("{full} B / {grown} B"),
    );
    if !coalesces {
        out.push_str(&format!(
            "| {} | {} B in {} allocations | {nested_s} | n/a (no coalescing) | | | | |\n",
            G::NAME,
            alone.allocated,
            alone.allocations
        ));
        return;
    }
    let (f1, e1) = sync_followed::<G>(1);
    let (f64_, e64) = sync_followed::<G>(64);
    let per_waiter = (f64_.allocated as f64 - f1.allocated as f64) / 63.0;
    let state = f1.allocated as f64 - per_waiter - VALUE as f64;
    // The table's share beyond the key's own `String` header, plus the state.
    let total = nested.map_or("n/a".to_string(), |(full, grown)| {
        format!(
            "**{:.0} B / {:.0} B**",
            full as f64 - KEY as f64 + state,
            grown as f64 - KEY as f64 + state
        )
    });
    out.push_str(&format!(
        "| {} | {} B in {} allocations | {nested_s} | {} B in {} allocations (executions: {e1}) | {} B in {} allocations (executions: {e64}) | {per_waiter:.1} B | {state:.1} B | {total} |\n",
        G::NAME,
        alone.allocated,
        alone.allocations,
        f1.allocated,
        f1.allocations,
        f64_.allocated,
        f64_.allocations,
    ));
}

/// `n` flights in progress at once, each a leader polled once on its own
/// key, its work `pending()` (a zero-sized future: boxing it allocates
/// nothing): live bytes per flight, the table's share and whatever the group
/// allocates when a flight starts.
fn async_many<C: Coalescer>(n: usize) -> isize {
    let group = C::create();
    {
        let mut f = Box::pin(group.call("warm".to_string(), || async { 1 }));
        while poll_once(&mut f).is_pending() {}
    }
    let mut leaders: Vec<_> = (0..n)
        .map(|i| Box::pin(group.call(singleflight_bench::key(i), std::future::pending::<u64>)))
        .collect();
    let region = Region::new(GLOBAL);
    for f in &mut leaders {
        assert!(poll_once(f).is_pending());
    }
    let live = since(&region).live;
    drop(leaders);
    live / n as isize
}

fn async_report<C: Coalescer>(out: &mut String) {
    eprintln!("sf-memory: {}", C::NAME);
    let (full, grown) = (async_many::<C>(896), async_many::<C>(1024));
    let (lead, w1, t1) = async_flight::<C>(1);
    let (_, w1k, _) = async_flight::<C>(1024);
    // The first follower may allocate the flight's shared state; the others
    // pay only for their place in the queue.
    let per_waiter = (w1k.allocated as f64 - w1.allocated as f64) / 1023.0;
    let per_waiter_live = (w1k.live as f64 - w1.live as f64) / 1023.0;
    // What a flight costs beyond its key and value: what starting it leaves
    // live (table share included, user future excluded), minus the key's
    // `String` header, plus what the flight allocates once followed and
    // ended, minus the one follower's own share and the value.
    let after_lead = t1.allocated as f64 - lead.allocated as f64 - per_waiter - VALUE as f64;
    let total = |share: isize| share as f64 - KEY as f64 + after_lead;
    out.push_str(&format!(
        "| {} | {full} B / {grown} B | **{:.0} B / {:.0} B** | {} B in {} allocations | {} B in {} allocations | **{per_waiter:.1} B** allocated, {per_waiter_live:.1} B live | {} B in {} allocations |\n",
        C::NAME,
        total(full),
        total(grown),
        lead.allocated,
        lead.allocations,
        w1.allocated,
        w1.allocations,
        t1.allocated,
        t1.allocations,
    ));
}

fn main() {
    let mut out = String::from("## Memory (sf-memory, counting allocator)\n\n");
    out += "### Blocking groups (values are `u64`, keys `String`s built before counting)\n\n";
    out += "| contender | flight nobody joins (allocated per call) | table share per flight in progress (live; 896 / 1,024 flights) | flight + 1 follower (allocated) | flight + 64 followers (allocated) | per follower | flight state beyond the value | per flight beyond key and value (table share - key's `String` header + state; 896 / 1,024 flights) |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    sync_report::<blocking::Ours>(&mut out, true, true);
    sync_report::<Crate03>(&mut out, false, true);
    sync_report::<Floor>(&mut out, true, false);
    out += "\n### Async groups (polled by hand with a no-op waker; the work is a future waiting on a oneshot)\n\n";
    out += "| contender | live per flight in progress (896 / 1,024 flights, work `pending()`) | per flight beyond key and value (896 / 1,024 flights) | leader's first poll (work boxed) | first follower | per further waiting caller | whole flight with 1 follower (allocated) |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|\n";
    async_report::<asynch::Ours>(&mut out);
    async_report::<AsyncSingleflight>(&mut out);
    async_report::<SingleflightAsync>(&mut out);
    async_report::<Moka>(&mut out);
    print!("{out}");
}
