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
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Time;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, UnitWeighter};

/// A memoised value and when it stops being fresh and servable.
#[derive(Clone)]
pub(crate) struct Entry<T> {
    value: T,
    failure: bool,
    /// In the group's `Time` unit.
    fresh_until: u64,
    stale_until: u64,
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
    /// The spans, in the group's `Time` unit.
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
        time: &Time,
    ) -> Self {
        let capacity = capacity.max(1);
        let (ttl, negative_ttl, grace) = (
            time.span(ttl),
            negative_ttl.map(|ttl| time.span(ttl)),
            time.span(grace),
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

/// A borrowed form of a key, erased, for `invalidate(&Q)` through [`Store`].
pub(crate) trait Probe<K> {
    fn hash_into(&self, state: &mut dyn Hasher);
    fn matches(&self, key: &K) -> bool;
}

/// A borrowed key `&Q`, sized, to be passed as a `&dyn Probe<K>`.
pub(crate) struct Borrowed<'a, Q: ?Sized>(pub(crate) &'a Q);

impl<K, Q> Probe<K> for Borrowed<'_, Q>
where
    K: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    fn hash_into(&self, mut state: &mut dyn Hasher) {
        self.0.hash(&mut state);
    }

    fn matches(&self, key: &K) -> bool {
        self.0 == key.borrow()
    }
}

/// Hashes and compares like the key it probes for (`Hasher` calls are
/// forwarded one by one, so the hash is the key's own).
struct Erased<'a, K>(&'a dyn Probe<K>);

impl<K> Hash for Erased<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash_into(state);
    }
}

impl<K> Equivalent<K> for Erased<'_, K> {
    fn equivalent(&self, key: &K) -> bool {
        self.0.matches(key)
    }
}

/// The memo as a group holds it. A trait object, so that the group stays
/// `Send + Sync` whatever its bounds say: one is only made (by builder
/// methods bounded `K: Send + Sync`) where the memo is.
pub(crate) trait Store<K, T>: Send + Sync {
    /// What the memo holds for `key` at `now`, and the write count read
    /// just before looking (to compare under the table lock on a miss).
    fn lookup(&self, key: &K, now: u64) -> (Lookup<T>, u64);

    /// Stores `value`, the result of a flight for `key` that ended at `now`
    /// (cloned by the caller before locking). Call with the table lock held;
    /// drop what it returns after releasing it.
    fn store(&self, key: K, value: T, failure: bool, now: u64) -> Dropped<K, T>;

    /// Removes the entry for `key`. Call with the table lock held; drop what
    /// it returns after releasing it.
    fn remove(&self, key: &dyn Probe<K>) -> Option<(K, Entry<T>)>;

    /// The write count; read before a lookup, compared under the table lock.
    fn writes(&self) -> u64;
}

/// Makes the memo; captured by a builder method where `K: Send + Sync`.
pub(crate) type MakeStore<K, T> =
    fn(usize, Duration, Option<Duration>, Duration, &Time) -> Box<dyn Store<K, T>>;

impl<K, T> Memo<K, T>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// A boxed memo; a [`MakeStore`].
    pub(crate) fn boxed(
        capacity: usize,
        ttl: Duration,
        negative_ttl: Option<Duration>,
        grace: Duration,
        time: &Time,
    ) -> Box<dyn Store<K, T>> {
        Box::new(Self::new(capacity, ttl, negative_ttl, grace, time))
    }
}

impl<K, T> Store<K, T> for Memo<K, T>
where
    K: Hash + Eq + Send + Sync,
    T: Clone + Send + Sync,
{
    #[inline]
    fn lookup(&self, key: &K, now: u64) -> (Lookup<T>, u64) {
        let writes = self.writes.load(Ordering::Acquire);
        let lookup = match self.cache.get(key) {
            Some(entry) if now < entry.fresh_until => Lookup::Fresh(entry.value),
            Some(entry) if now < entry.stale_until => Lookup::Stale(entry.value),
            _ => Lookup::Miss,
        };
        (lookup, writes)
    }

    fn store(&self, key: K, value: T, failure: bool, now: u64) -> Dropped<K, T> {
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
            fresh_until: now.saturating_add(ttl),
            // Failures are never served stale.
            stale_until: now.saturating_add(ttl).saturating_add(if failure {
                0
            } else {
                self.grace
            }),
        };
        self.cache.insert_with_lifecycle(key, entry, &mut dropped);
        self.writes.fetch_add(1, Ordering::Release);
        dropped
    }

    fn remove(&self, key: &dyn Probe<K>) -> Option<(K, Entry<T>)> {
        self.cache.remove(&Erased(key))
    }

    #[inline]
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }
}
