//! The blocking contenders and the thread scenarios of the blocking group.
//!
//! Every scenario runs one contender at a time on threads it spawns, and
//! returns nanoseconds; the runner interleaves contenders between
//! repetitions.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;

/// A blocking group under test: `call` runs `work` for `key` unless a call
/// for it is in flight, and returns the value.
pub trait Blocking: Send + Sync + 'static {
    /// Name in the tables.
    const NAME: &'static str;
    /// An empty group.
    fn create() -> Self;
    /// One call.
    fn call(&self, key: String, work: impl Fn() -> u64) -> u64;
}

/// Our `singleflight::sync::Group`.
#[derive(Debug, Default)]
pub struct Ours(singleflight::sync::Group<String, u64>);

impl Blocking for Ours {
    const NAME: &'static str = "singleflight (ours)";
    fn create() -> Self {
        Self::default()
    }
    #[inline]
    fn call(&self, key: String, work: impl Fn() -> u64) -> u64 {
        self.0.call_owned(key, work).value
    }
}

/// The `singleflight` crate 0.3 (`work(&str, Fn)`; it copies the key itself).
#[derive(Default)]
pub struct Crate03(singleflight03::Group<u64>);

impl std::fmt::Debug for Crate03 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crate03")
    }
}

impl Blocking for Crate03 {
    const NAME: &'static str = "singleflight 0.3";
    fn create() -> Self {
        Self(singleflight03::Group::new())
    }
    #[inline]
    fn call(&self, key: String, work: impl Fn() -> u64) -> u64 {
        self.0.work(&key, work)
    }
}

/// The floor: the least a group must do, one insert and one remove of the
/// key in a `parking_lot::Mutex` around a hash table, no coalescing.
///
/// The table is hashbrown's `HashTable` (the engine of `HashMap`) so the key
/// is hashed once and removed without being copied: a `HashMap<String, _>`
/// would need a clone of the key to remove it, which no group needs.
#[derive(Debug, Default)]
pub struct Floor {
    table: Mutex<HashTable<String>>,
    hasher: RandomState,
}

impl Blocking for Floor {
    const NAME: &'static str = "floor";
    fn create() -> Self {
        Self::default()
    }
    #[inline]
    fn call(&self, key: String, work: impl Fn() -> u64) -> u64 {
        let hash = self.hasher.hash_one(&key);
        // The heap buffer of a `String` does not move with it: it names the entry.
        let id = key.as_ptr();
        {
            let mut table = self.table.lock();
            // An insert looks the key up first, as `HashMap::insert` does.
            if table.find(hash, |k| *k == key).is_none() {
                table.insert_unique(hash, key, |k| self.hasher.hash_one(k));
            }
        }
        let value = work();
        let removed = {
            let mut table = self.table.lock();
            table
                .find_entry(hash, |k| k.as_ptr() == id)
                .ok()
                .map(|e| e.remove().0)
        };
        drop(removed);
        value
    }
}

/// Spawns `threads` threads that each run `body(thread index)` once, all
/// released together; returns the wall time from release to the last end.
fn timed_threads(threads: usize, body: impl Fn(usize) + Send + Sync + 'static) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let body = Arc::new(body);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, body) = (barrier.clone(), body.clone());
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    body(t);
                })
                .expect("spawn a bench thread")
        })
        .collect();
    let start = Instant::now();
    barrier.wait();
    for h in handles {
        h.join().expect("a bench thread panicked");
    }
    start.elapsed()
}

/// Distinct keys: each of `threads` threads makes `n` calls, each with a
/// fresh key; ns per call as each thread sees it (wall time / `n`).
pub fn distinct<G: Blocking>(threads: usize, n: usize) -> f64 {
    let group = Arc::new(G::create());
    let elapsed = timed_threads(threads, move |t| {
        for i in t * n..(t + 1) * n {
            let v = group.call(crate::key(i), || 42);
            assert_eq!(black_box(v), 42);
        }
    });
    elapsed.as_nanos() as f64 / n as f64
}

/// The key alone: ns to make and drop one fresh key (part of every
/// distinct-keys figure).
pub fn key_only(n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        black_box(crate::key(i));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// One hot key: `threads` threads make `n` calls each on one key whose work
/// returns at once; wall ns per call (wall time / all calls).
pub fn hot<G: Blocking>(threads: usize, n: usize) -> f64 {
    let group = Arc::new(G::create());
    let elapsed = timed_threads(threads, move |_| {
        for _ in 0..n {
            let v = group.call("hot".to_string(), || 42);
            assert_eq!(black_box(v), 42);
        }
    });
    elapsed.as_nanos() as f64 / (threads * n) as f64
}

/// The herd: `threads` pre-spawned threads released together on one key
/// whose work sleeps `work`, `rounds` times; ns per round, from the release
/// to the last call's return. Also returns the executions.
///
/// The release is a `OnceLock` per round: setting it wakes every waiter with
/// one futex broadcast and no lock to re-take, the cheapest release std
/// offers (a `Barrier` makes the 1,000 woken threads queue on its mutex).
pub fn herd<G: Blocking>(threads: usize, work: Duration, rounds: usize) -> (Vec<f64>, usize) {
    let group = Arc::new(G::create());
    let starts: Arc<Vec<OnceLock<()>>> = Arc::new((0..rounds).map(|_| OnceLock::new()).collect());
    let ready = Arc::new(Barrier::new(threads + 1));
    let origin = Instant::now();
    // ns after `origin` of the round's latest return.
    let last = Arc::new(AtomicU64::new(0));
    let executions = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (group, starts, ready, last, executions) = (
                group.clone(),
                starts.clone(),
                ready.clone(),
                last.clone(),
                executions.clone(),
            );
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    for start in starts.iter() {
                        ready.wait();
                        start.wait();
                        let v = group.call("herd".to_string(), || {
                            executions.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(work);
                            42
                        });
                        assert_eq!(v, 42);
                        last.fetch_max(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                })
                .expect("spawn a herd thread")
        })
        .collect();
    let mut out = Vec::with_capacity(rounds);
    let mut released = None;
    for start in starts.iter() {
        // Every thread has ended the previous round and is on its way to
        // `start`; give the barrier's wake-ups time to settle so they are
        // parked on `start` when it is set (outside the timed window).
        ready.wait();
        if let Some(released) = released {
            out.push((last.load(Ordering::Relaxed) - released) as f64);
        }
        thread::sleep(Duration::from_millis(20));
        last.store(0, Ordering::Relaxed);
        released = Some(origin.elapsed().as_nanos() as u64);
        let _ = start.set(());
    }
    for h in handles {
        h.join().expect("a herd thread panicked");
    }
    if let Some(released) = released {
        out.push((last.load(Ordering::Relaxed) - released) as f64);
    }
    (out, executions.load(Ordering::Relaxed))
}

/// Not a group: returns at once without running the work. In the herd it
/// measures the harness alone (waking the parked threads and timing them),
/// the part of every Rust herd figure that no group can remove.
#[derive(Debug, Default)]
pub struct ReleaseOnly;

impl Blocking for ReleaseOnly {
    const NAME: &'static str = "harness alone (release, no call, no work)";
    fn create() -> Self {
        Self
    }
    #[inline]
    fn call(&self, _key: String, _work: impl Fn() -> u64) -> u64 {
        42
    }
}
