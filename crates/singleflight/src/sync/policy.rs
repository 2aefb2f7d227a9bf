// The blocking group's policy path: memo, error policy, deadlines, waiter cap
// and metrics. The plain path (`group.rs`) never comes here.
//
// Invariants (beyond those of `group.rs` and `policy/memo.rs`):
// - A slot's `followers` counts the callers waiting on it, under the table
//   lock: +1 on joining, -1 on leaving (result, timeout or claiming a retry).
// - A failed flight opens a retry only if it is not itself a retry and has
//   followers; its slot then stays in the table. If every follower leaves
//   before one claims it, the last one to leave removes the slot.
// - A flight writes the memo only if its slot was never forgotten
//   (`forget`/`invalidate` flag it under the same table lock): generation
//   safety without a counter.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::flight::{Flight, Waited};
use super::group::Group;
use crate::loom::sync::Arc;
use crate::policy::memo::Lookup;
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Overflow, Policies, Stats};
use crate::settle::{received, settle};
use crate::{Error, Outcome, Panicked, Source};

impl<K, T, S> Group<K, T, S> {
    /// A snapshot of the group's counters, or `None` unless the builder
    /// turned metrics on.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<u8, u8>::builder().metrics("g").build();
    /// group.call(1, || 1);
    /// assert_eq!(group.stats().unwrap().calls, 1);
    /// assert!(singleflight::sync::Group::<u8, u8>::new().stats().is_none());
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.policy.as_ref().and_then(|p| p.stats())
    }
}

impl<K, T, S> Group<K, T, S>
where
    K: Hash + Eq,
    T: Clone,
    S: BuildHasher,
{
    /// Like [`Group::try_call`], but every way a call can end without a
    /// value is an [`Error`]: the work panicked, the builder's `timeout`
    /// passed while waiting for another caller's flight, or the waiter cap
    /// refused the call.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::{policy::Overflow, sync::Group, Error};
    ///
    /// let group = Group::<&str, u8>::builder().max_waiters(0, Overflow::Refuse).build();
    /// // Alone on its key, the call leads its flight: the cap is not in play.
    /// assert_eq!(group.call_checked("k", || 1).unwrap().value, 1);
    /// ```
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was.
    pub fn call_checked<F>(&self, key: K, work: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> T,
    {
        let deadline = self
            .policy
            .as_ref()
            .and_then(|p| p.timeout)
            .and_then(|t| Instant::now().checked_add(t));
        self.checked(key, work, deadline)
    }

    /// Like [`Group::call_checked`], but waits at most `timeout` for another
    /// caller's flight. A caller that times out leaves; the flight goes on
    /// for the others. The leader runs its own work and is never timed out.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<&str, u8>::new();
    /// let out = group.call_with_timeout("k", Duration::from_secs(1), || 3).unwrap();
    /// assert_eq!(out.value, 3);
    /// ```
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was.
    pub fn call_with_timeout<F>(
        &self,
        key: K,
        timeout: Duration,
        work: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> T,
    {
        self.checked(key, work, Instant::now().checked_add(timeout))
    }

    /// Drops the memo's value for `key` and forgets its flight in progress,
    /// if any: that flight's callers still get its value, but it will not
    /// write the memo, so nothing computed before this call is served after
    /// it. Returns whether there was a value or a flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<String, u8>::builder()
    ///     .memo_all(Duration::from_secs(60))
    ///     .build();
    /// group.call("k".to_string(), || 1);
    /// assert!(group.invalidate("k"));
    /// assert_eq!(group.call("k".to_string(), || 2).value, 2);
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let mut table = self.table.lock(hash);
        let forgot = table.forget(hash, key);
        let removed = self
            .policy
            .as_ref()
            .and_then(|p| p.memo.as_ref())
            .and_then(|memo| memo.remove(key));
        drop(table);
        forgot || removed.is_some()
    }

    /// `try_call` with policies, after the memo had no fresh value: the
    /// errors `call` cannot express panic.
    #[inline(never)]
    pub(super) fn try_call_missed<F>(
        &self,
        policy: &Policies<K, T>,
        key: K,
        work: F,
    ) -> Result<Outcome<T>, Panicked>
    where
        F: FnOnce() -> T,
    {
        match self.policed_miss(policy, key, work, None) {
            Ok(outcome) => Ok(outcome),
            Err(Error::Panicked(panicked)) => Err(panicked),
            Err(Error::TooManyWaiters) => {
                panic!("singleflight: too many waiters on this key (use `call_checked`)")
            }
            Err(Error::Timeout) => unreachable!("no deadline was given"),
        }
    }

    fn checked<F>(&self, key: K, work: F, deadline: Option<Instant>) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> T,
    {
        match &self.policy {
            Some(policy) => self.policed(policy, key, work, deadline),
            None if deadline.is_none() => self.try_call(key, work).map_err(Error::from),
            None => {
                // A deadline on a plain group: the policy path with none on.
                let policy = Policies::plain();
                self.policed(&policy, key, work, deadline)
            }
        }
    }

    #[inline]
    fn policed<F>(
        &self,
        p: &Policies<K, T>,
        key: K,
        work: F,
        deadline: Option<Instant>,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> T,
    {
        match p.hit(&key) {
            Some(outcome) => Ok(outcome),
            None => self.policed_miss(p, key, work, deadline),
        }
    }

    /// The rest of `policed`, after the memo had no fresh value.
    #[inline]
    fn policed_miss<F>(
        &self,
        p: &Policies<K, T>,
        key: K,
        work: F,
        deadline: Option<Instant>,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> T,
    {
        p.count(Event::Call);
        let mut hash = None;
        let (flight, id) = loop {
            let (lookup, writes) = p.lookup(&key);
            if let Lookup::Fresh(value) | Lookup::Stale(value) = lookup {
                p.count(Event::MemoHit);
                return Ok(Outcome::from(value, true, Source::Memo));
            }
            // Hashed for the table only on a miss: the hit path pays the memo's hash alone.
            let hash = *hash.get_or_insert_with(|| self.hasher.hash_one(&key));
            let mut table = self.table.lock(hash);
            if let Some(slot) = table.live_mut(hash, &key) {
                match p.over_cap(slot.followers as usize) {
                    Some(Overflow::Refuse) => return Err(Error::TooManyWaiters),
                    Some(Overflow::RunOwn) => {
                        drop(table);
                        p.count(Event::Execution);
                        return match panic::catch_unwind(AssertUnwindSafe(work)) {
                            Ok(value) => Ok(Outcome::from(value, false, Source::Bypass)),
                            Err(payload) => {
                                p.count(Event::Panic);
                                Err(Panicked::leader(payload).into())
                            }
                        };
                    }
                    None => {}
                }
                slot.followers += 1;
                let id = slot.id();
                let flight = Arc::clone(slot.flight.get_or_insert_with(|| Arc::new(Flight::new())));
                drop(table);
                drop(key);
                break (Some(flight), id);
            }
            if writes.is_some_and(|w| p.memo.as_ref().is_some_and(|memo| memo.writes() != w)) {
                // A flight wrote the memo since we looked: look again.
                continue;
            }
            let id = table.insert(hash, key, &self.hasher);
            drop(table);
            p.gauge(Gauge::Flights, 1);
            break (None, id);
        };
        let hash = hash.unwrap_or_else(|| unreachable!("hashed before leaving the loop"));
        let Some(flight) = flight else {
            return Ok(self.lead(p, hash, id, work)?);
        };

        // A follower.
        p.gauge(Gauge::Waiters, 1);
        let waited = flight.wait_until(deadline);
        p.gauge(Gauge::Waiters, -1);
        match waited {
            Waited::Ended(published) => {
                let outcome = received(published)?;
                p.count(Event::Shared);
                Ok(outcome)
            }
            Waited::Claimed => {
                if let Some(slot) = self.table.lock(hash).get_mut(hash, id) {
                    slot.followers -= 1;
                }
                Ok(self.lead(p, hash, id, work)?)
            }
            Waited::TimedOut => {
                p.count(Event::Timeout);
                let mut table = self.table.lock(hash);
                let mut orphaned = None;
                if let Some(slot) = table.get_mut(hash, id) {
                    slot.followers -= 1;
                    if slot.followers == 0 && flight.retry_unclaimed() {
                        // Nobody is left to run the retry: the flight is over.
                        orphaned = table.remove(hash, id);
                    }
                }
                drop(table);
                if orphaned.is_some() {
                    p.gauge(Gauge::Flights, -1);
                }
                drop(orphaned);
                Err(Error::Timeout)
            }
        }
    }

    /// Runs `work` as the driver of flight `id` and ends the flight.
    fn lead<F>(
        &self,
        p: &Policies<K, T>,
        hash: u64,
        id: u64,
        work: F,
    ) -> Result<Outcome<T>, Panicked>
    where
        F: FnOnce() -> T,
    {
        p.count(Event::Execution);
        let result = panic::catch_unwind(AssertUnwindSafe(work));
        let ending = p.ending(&result);

        let mut table = self.table.lock(hash);
        if p.retry_once
            && ending.failure
            && let Some(slot) = table.get_mut(hash, id)
            && !slot.retried
            && slot.followers > 0
            && let Some(flight) = &slot.flight
        {
            slot.retried = true;
            let flight = Arc::clone(flight);
            drop(table);
            flight.open_retry();
            p.count(Event::Shared);
            let value = result.unwrap_or_else(|_| unreachable!("a failure is a value"));
            return Ok(Outcome::new(value, true));
        }
        let flight = p.close(table, hash, id, ending, result.is_err());
        let outcome = settle(result, flight.as_deref());
        if outcome.as_ref().is_ok_and(|o| o.shared) {
            p.count(Event::Shared);
        }
        outcome
    }
}
