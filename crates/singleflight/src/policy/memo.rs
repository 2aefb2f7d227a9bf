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
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

/// A memoised value and when it stops being fresh and servable.
#[derive(Clone)]
pub(crate) struct Entry<T> {
    value: T,
    failure: bool,
    fresh_until: Instant,
    stale_until: Instant,
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
    Fresh(T),
    /// Past its TTL, within its grace period.
    Stale(T),
    /// Nothing servable.
    Miss,
}

pub(crate) struct Memo<K, T> {
    cache: Cache<K, Entry<T>, UnitWeighter, DefaultHashBuilder, Defer>,
    ttl: Duration,
    /// `None`: failures are not memoised.
    negative_ttl: Option<Duration>,
    grace: Duration,
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

impl<K, T> Memo<K, T> {
    /// Whether stale values are served (a grace period is set).
    pub(crate) fn serves_stale(&self) -> bool {
        !self.grace.is_zero()
    }

    /// The write count; read before a lookup, compared under the table lock.
    #[inline]
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }
}

impl<K: Hash + Eq, T: Clone> Memo<K, T> {
    /// What the memo holds for `key` at `now`.
    #[inline]
    pub(crate) fn lookup<Q>(&self, key: &Q, now: Instant) -> Lookup<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.cache.get(key) {
            Some(entry) if now < entry.fresh_until => Lookup::Fresh(entry.value),
            Some(entry) if now < entry.stale_until => Lookup::Stale(entry.value),
            _ => Lookup::Miss,
        }
    }

    /// Stores `value`, the result of a flight for `key` that ended at `now`
    /// (cloned by the caller before locking). Call with the table lock held;
    /// drop what it returns after releasing it.
    pub(crate) fn store(&self, key: K, value: T, failure: bool, now: Instant) -> Dropped<K, T> {
        let mut dropped = Vec::new();
        let ttl = if failure {
            let Some(ttl) = self.negative_ttl else {
                return dropped;
            };
            // A failed refresh keeps a servable success until its grace ends:
            // remove anything else, and leave that one alone.
            if let Some(old) = self
                .cache
                .remove_if(&key, |old| old.failure || now >= old.stale_until)
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
        let entry = Entry {
            value,
            failure,
            fresh_until: now + ttl,
            // Failures are never served stale.
            stale_until: now + ttl + if failure { Duration::ZERO } else { self.grace },
        };
        self.cache.insert_with_lifecycle(key, entry, &mut dropped);
        self.writes.fetch_add(1, Ordering::Release);
        dropped
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
}
