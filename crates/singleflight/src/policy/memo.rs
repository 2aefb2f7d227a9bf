// The memo: finished flights' results, kept for a TTL in a bounded
// `quick_cache` cache, with expiry checked on read against our own clock.
// Values (successes, and failures a classifier named) live in one cache;
// the errors of fallible work, kept only for a negative TTL, in a second one
// made only then, so that a value's hit clones nothing but the value.
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
// - A key has a live entry in at most one of the two caches: a value's write
//   removes the key's error, and an error's write removes the key's value
//   unless that value is a success still servable (it stays, as a failed
//   refresh leaves a stale value in place).

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Time;
use crate::engine::{ErrorObject, Returned};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

/// A memoised value and when it stops being fresh. Kept small, as every hit
/// clones it: the failure flag rides in the lowest bit of the expiry (a
/// nanosecond of TTL is not worth 8 bytes a hit), and the end of the grace
/// period is the expiry plus the memo's grace (none for a failure).
#[derive(Clone)]
pub(crate) struct Entry<V> {
    value: V,
    /// Nanoseconds on the group's `Time`, lowest bit cleared, when it stops
    /// being fresh; the lowest bit is set for a failure.
    stamp: u64,
}

impl<V> Entry<V> {
    fn new(value: V, fresh_until: u64, failure: bool) -> Self {
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

/// Entries evicted, replaced or removed while the table lock was held, to
/// be dropped after it is released.
pub(crate) struct Dropped<K, T> {
    values: Vec<(K, Entry<T>)>,
    errors: Vec<(K, Entry<ErrorObject>)>,
}

impl<K, T> Dropped<K, T> {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Whether nothing was dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.errors.is_empty()
    }
}

/// Collects evicted entries instead of dropping them inside the cache.
#[derive(Clone)]
pub(crate) struct Defer;

impl<K, V> Lifecycle<K, Entry<V>> for Defer {
    type RequestState = Vec<(K, Entry<V>)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: K, val: Entry<V>) {
        state.push((key, val));
    }
}

type Store<K, V> = Cache<K, Entry<V>, UnitWeighter, DefaultHashBuilder, Defer>;

fn store<K: Hash + Eq, V: Clone>(capacity: usize) -> Store<K, V> {
    Cache::with(
        capacity,
        capacity as u64,
        UnitWeighter,
        DefaultHashBuilder::default(),
        Defer,
    )
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
    values: Store<K, T>,
    /// The errors of fallible work; `None` without a negative TTL, as
    /// errors are then not memoised.
    errors: Option<Store<K, ErrorObject>>,
    /// The spans, in nanoseconds.
    ttl: u64,
    /// `None`: failures are not memoised.
    negative_ttl: Option<u64>,
    grace: u64,
    /// Bumped by every write, under the table lock (see the invariants).
    writes: AtomicU64,
}

impl<K: Hash + Eq, T: Clone> Memo<K, T> {
    /// A memo of `capacity` values (and as many errors, with a negative TTL).
    pub(crate) fn new(
        capacity: usize,
        ttl: Duration,
        negative_ttl: Option<Duration>,
        grace: Duration,
    ) -> Self {
        let capacity = capacity.max(1);
        Self {
            values: store(capacity),
            errors: negative_ttl.map(|_| store(capacity)),
            ttl: Time::span(ttl),
            negative_ttl: negative_ttl.map(Time::span),
            grace: Time::span(grace),
            writes: AtomicU64::new(0),
        }
    }

    /// The value for `key` if it is fresh at `now`: the hit path, which
    /// reads no write count and no error (a miss looks again with
    /// [`Memo::lookup`]).
    #[inline(always)]
    pub(crate) fn fresh<Q>(&self, key: &Q, now: u64) -> Option<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.values.get(key) {
            Some(entry) if now < entry.fresh_until() => Some(entry.value),
            _ => None,
        }
    }

    #[inline(never)]
    fn fresh_error<Q>(&self, key: &Q, now: u64) -> Option<Returned<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.errors.as_ref()?.get(key) {
            Some(entry) if now < entry.fresh_until() => Some(Err(entry.value)),
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
        let lookup = match self.values.get(key) {
            Some(entry) if now < entry.fresh_until() => Lookup::Fresh(Ok(entry.value)),
            Some(entry) if now < self.stale_until(&entry) => Lookup::Stale(Ok(entry.value)),
            _ => match self.fresh_error(key, now) {
                Some(error) => Lookup::Fresh(error),
                None => Lookup::Miss,
            },
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
        let mut dropped = Dropped::new();
        let value = match value {
            Ok(value) => value,
            Err(error) => {
                let (Some(errors), Some(ttl)) = (&self.errors, self.negative_ttl) else {
                    return dropped;
                };
                if !self.clear_unless_servable(&key, now, &mut dropped) {
                    return dropped;
                }
                // Removed first, so the old error drops after the lock.
                dropped.errors.extend(errors.remove(&key));
                let entry = Entry::new(error, now.saturating_add(ttl), true);
                errors.insert_with_lifecycle(key, entry, &mut dropped.errors);
                self.writes.fetch_add(1, Ordering::Release);
                return dropped;
            }
        };
        if let Some(old) = self.errors.as_ref().and_then(|errors| errors.remove(&key)) {
            dropped.errors.push(old);
        }
        let ttl = if failure {
            let Some(ttl) = self.negative_ttl else {
                return dropped;
            };
            if !self.clear_unless_servable(&key, now, &mut dropped) {
                return dropped;
            }
            ttl
        } else {
            if let Some(old) = self.values.remove(&key) {
                dropped.values.push(old);
            }
            self.ttl
        };
        let entry = Entry::new(value, now.saturating_add(ttl), failure);
        self.values
            .insert_with_lifecycle(key, entry, &mut dropped.values);
        self.writes.fetch_add(1, Ordering::Release);
        dropped
    }

    /// Before a failure is kept: removes the key's value unless it is a
    /// success still servable at `now`, which a failed refresh leaves in
    /// place until its grace ends. Returns whether the failure may be kept.
    fn clear_unless_servable(&self, key: &K, now: u64, dropped: &mut Dropped<K, T>) -> bool {
        if let Some(old) = self
            .values
            .remove_if(key, |old| old.failure() || now >= self.stale_until(old))
        {
            dropped.values.push(old);
            return true;
        }
        !self.values.contains_key(key)
    }

    /// When `entry` stops being servable: failures are never served stale.
    fn stale_until(&self, entry: &Entry<T>) -> u64 {
        if entry.failure() {
            entry.fresh_until()
        } else {
            entry.fresh_until().saturating_add(self.grace)
        }
    }

    /// Removes the value and the error for `key`. Call with the table lock
    /// held; drop what it returns after releasing it.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Dropped<K, T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut dropped = Dropped::new();
        dropped.values.extend(self.values.remove(key));
        if let Some(errors) = &self.errors {
            dropped.errors.extend(errors.remove(key));
        }
        dropped
    }

    /// The write count; read before a lookup, compared under the table lock.
    #[inline]
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }
}
