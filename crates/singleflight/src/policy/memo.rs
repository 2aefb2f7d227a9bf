// The memo: finished flights' results, kept for a TTL in a bounded
// `quick_cache` cache, with expiry checked on read against our own clock.
//
// Invariants:
// - Writes (`store`) and `invalidate`'s removal happen under the group's table
//   lock, in the same critical section that removes or forgets the flight's
//   slot, so a flight that was forgotten or invalidated never writes, and a
//   caller that finds no flight under the table lock either sees the memo
//   entry or sees `writes` moved on (and looks the memo up again).
// - Reads take no lock of the group (only the cache's shard lock).
// - Entries the cache evicts or replaces are handed back to the caller in a
//   `Dropped` list, to be dropped after the table lock is released: user
//   `Drop` code never runs under the group's lock.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Time;
use crate::engine::Returned;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

/// A memoised value and when it stops being fresh. Kept small, as every hit
/// clones it: the failure flag rides in the lowest bit of the expiry (a
/// nanosecond of TTL is not worth 8 bytes a hit), and the end of the grace
/// period is the expiry plus the memo's grace (none for a failure).
#[derive(Clone)]
pub(crate) struct Entry<T> {
    value: Returned<T>,
    /// Nanoseconds on the group's `Time`, lowest bit cleared, when it stops
    /// being fresh; the lowest bit is set for a failure.
    stamp: u64,
}

impl<T> Entry<T> {
    fn new(value: Returned<T>, fresh_until: u64, failure: bool) -> Self {
        Self {
            value,
            stamp: (fresh_until & !1) | u64::from(failure),
        }
    }

    #[inline]
    fn fresh_until(&self) -> u64 {
        self.stamp & !1
    }

    fn failure(&self) -> bool {
        self.stamp & 1 == 1
    }
}

/// Entries evicted or replaced while the table lock was held, dropped later.
pub(crate) type Dropped<K, T> = Vec<(K, Entry<T>)>;

/// Collects evicted entries instead of dropping them inside the cache.
#[derive(Clone)]
pub(crate) struct Defer;

impl<K, T> Lifecycle<K, Entry<T>> for Defer {
    type RequestState = Dropped<K, T>;

    fn on_evict(&self, state: &mut Self::RequestState, key: K, val: Entry<T>) {
        state.push((key, val));
    }
}

/// What the memo holds for a key, as of a given time.
pub(crate) enum Lookup<T> {
    /// Within its TTL.
    Fresh(Returned<T>),
    /// Past its TTL, within its grace period.
    Stale(Returned<T>),
    /// Nothing servable.
    Miss,
}

pub(crate) struct Memo<K, T> {
    cache: Cache<K, Entry<T>, UnitWeighter, DefaultHashBuilder, Defer>,
    /// The spans, in nanoseconds.
    ttl: u64,
    /// `None`: failures are not memoised.
    negative_ttl: Option<u64>,
    grace: u64,
    /// Bumped by every write, under the table lock (see the invariants).
    writes: AtomicU64,
}

impl<K: Hash + Eq, T: Clone> Memo<K, T> {
    pub(crate) fn new(
        capacity: usize,
        ttl: Duration,
        negative_ttl: Option<Duration>,
        grace: Duration,
    ) -> Self {
        let capacity = capacity.max(1);
        let (ttl, negative_ttl, grace) = (
            Time::span(ttl),
            negative_ttl.map(Time::span),
            Time::span(grace),
        );
        Self {
            cache: Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                Defer,
            ),
            ttl,
            negative_ttl,
            grace,
            writes: AtomicU64::new(0),
        }
    }
}

impl<K: Hash + Eq, T: Clone> Memo<K, T> {
    /// The value for `key` if it is fresh at `now`: the hit path, which
    /// reads no write count (a miss looks again with [`Memo::lookup`]).
    #[inline]
    pub(crate) fn fresh<Q>(&self, key: &Q, now: u64) -> Option<Returned<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.cache.get(key) {
            Some(entry) if now < entry.fresh_until() => Some(entry.value),
            _ => None,
        }
    }

    /// What the memo holds for `key` at `now`, and the write count read
    /// just before looking (to compare under the table lock on a miss).
    #[inline]
    pub(crate) fn lookup<Q>(&self, key: &Q, now: u64) -> (Lookup<T>, u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let writes = self.writes.load(Ordering::Acquire);
        let lookup = match self.cache.get(key) {
            Some(entry) if now < entry.fresh_until() => Lookup::Fresh(entry.value),
            Some(entry) if now < self.stale_until(&entry) => Lookup::Stale(entry.value),
            _ => Lookup::Miss,
        };
        (lookup, writes)
    }

    /// Stores `value`, the result of a flight for `key` that ended at `now`
    /// (cloned by the caller before locking). Call with the table lock held;
    /// drop what it returns after releasing it.
    pub(crate) fn store(
        &self,
        key: K,
        value: Returned<T>,
        failure: bool,
        now: u64,
    ) -> Dropped<K, T> {
        let mut dropped = Vec::new();
        let ttl = if failure {
            let Some(ttl) = self.negative_ttl else {
                return dropped;
            };
            // A failed refresh keeps a servable success until its grace ends:
            // remove anything else, and leave that one alone.
            if let Some(old) = self
                .cache
                .remove_if(&key, |old| old.failure() || now >= self.stale_until(old))
            {
                dropped.push(old);
            } else if self.cache.contains_key(&key) {
                return dropped;
            }
            ttl
        } else {
            if let Some(old) = self.cache.remove(&key) {
                dropped.push(old);
            }
            self.ttl
        };
        let entry = Entry::new(value, now.saturating_add(ttl), failure);
        self.cache.insert_with_lifecycle(key, entry, &mut dropped);
        self.writes.fetch_add(1, Ordering::Release);
        dropped
    }

    /// When `entry` stops being servable: failures are never served stale.
    fn stale_until(&self, entry: &Entry<T>) -> u64 {
        if entry.failure() {
            entry.fresh_until()
        } else {
            entry.fresh_until().saturating_add(self.grace)
        }
    }

    /// Removes the entry for `key`. Call with the table lock held; drop what
    /// it returns after releasing it.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<(K, Entry<T>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.remove(key)
    }

    /// The write count; read before a lookup, compared under the table lock.
    #[inline]
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }
}
