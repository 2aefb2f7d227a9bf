// The async group's policy path: memo (with stale-while-revalidate), error
// policy, waiter cap and metrics. The plain path (`group.rs`) never comes
// here.
//
// Invariants (beyond those of `group.rs`, `flight.rs` and `policy/memo.rs`):
// - A flight writes the memo only if its slot was never forgotten
//   (`forget`/`invalidate` flag it under the same table lock).
// - A refresh (stale-while-revalidate) is started only when no live flight
//   exists for the key, checked and inserted under one table lock: exactly
//   one refresh runs at a time per key. It runs detached, on the spawner.
// - A failed flight opens a retry only if it is not itself a retry and other
//   callers wait; the slot stays, the driver leaves (its count in `callers`
//   goes), and the first follower polled drives its own work on that slot.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc as StdArc;
use std::time::Duration;

use super::deadline::{Checked, Until};
use super::flight::{Flight, Work};
use super::group::{Builder, DetachedLead, Group, Inner, Joined};
use super::spawn::Detached;
use crate::loom::lock;
use crate::loom::sync::Arc;
use crate::policy::memo::Lookup;
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Overflow, Policies, Stats};
use crate::settle::settle;
use crate::{Error, Outcome, Panicked, Source};

impl<K, T, S> Group<K, T, S> {
    /// A snapshot of the group's counters, or `None` unless the builder
    /// turned metrics on.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::builder().metrics("g").build();
    /// group.call(1, || async { 1 }).await;
    /// assert_eq!(group.stats().unwrap().executions, 1);
    /// # });
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.inner.policy.as_ref().and_then(|p| p.stats())
    }
}

impl<K, T, S> Group<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Like [`Group::try_call`], but every way the call can end without a
    /// value is an [`Error`]: the work panicked or the waiter cap refused the
    /// call.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<&str, u8>::new();
    /// assert_eq!(group.call_checked("k", || async { 1 }).await.unwrap().value, 1);
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Group::call`].
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was.
    pub fn call_checked<F, Fut>(&self, key: K, make: F) -> Checked<'_, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Checked::new(self.try_call(key, make))
    }

    /// Like [`Group::call_checked`], but gives up with
    /// [`Error::Timeout`] when `deadline` completes first; any executor's
    /// timer fits. The caller leaves as if dropped: the flight goes on for
    /// its other callers, and is cancelled only if nobody else waits (or
    /// handed to the spawner, with [`Builder::detach`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use singleflight::Error;
    ///
    /// let group = singleflight::future::Group::<&str, u8>::new();
    /// let never = std::future::pending::<u8>();
    /// let out = group.call_until("k", || never, async {}).await;
    /// assert!(matches!(out, Err(Error::Timeout)));
    /// assert!(group.is_empty()); // nobody else waited: the work was dropped
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Group::call`]; the deadline future is dropped with it.
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was.
    pub fn call_until<F, Fut, D>(&self, key: K, make: F, deadline: D) -> Until<'_, K, T, S, F, D>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        D: Future,
    {
        Until::new(self.try_call(key, make), deadline)
    }

    /// [`Group::call_until`] with a tokio timer of `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    ///
    /// let group = singleflight::future::Group::<&str, u8>::new();
    /// let out = group.call_with_timeout("k", Duration::from_secs(1), || async { 5 }).await;
    /// assert_eq!(out.unwrap().value, 5);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Group::call`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with the time driver enabled.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn call_with_timeout<F, Fut>(
        &self,
        key: K,
        timeout: Duration,
        make: F,
    ) -> Until<'_, K, T, S, F, tokio::time::Sleep>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.call_until(key, make, tokio::time::sleep(timeout))
    }

    /// Drops the memo's value for `key` and forgets its flight in progress,
    /// if any: that flight's callers still get its value, but it will not
    /// write the memo, so nothing computed before this call is served after
    /// it. Returns whether there was a value or a flight.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use std::time::Duration;
    ///
    /// let group = singleflight::future::Group::<String, u8>::builder()
    ///     .memo_all(Duration::from_secs(60))
    ///     .build();
    /// group.call("k".to_string(), || async { 1 }).await;
    /// assert!(group.invalidate("k"));
    /// assert_eq!(group.call("k".to_string(), || async { 2 }).await.value, 2);
    /// # });
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut table = inner.table.lock(hash);
        let forgot = table.forget(hash, key);
        let removed = inner
            .policy
            .as_ref()
            .and_then(|p| p.memo.as_ref())
            .and_then(|memo| memo.remove(key));
        drop(table);
        forgot || removed.is_some()
    }
}

impl<K, T, S> Inner<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(super) fn join_policed<F, Fut>(
        self: &StdArc<Self>,
        p: &Policies<K, T>,
        key: K,
        make: F,
    ) -> Joined<T, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        // The hit path ran in `TryCall::poll_steps`: only a miss gets here.
        p.count(Event::Call);
        let mut hash = None;
        loop {
            let (lookup, writes) = p.lookup(&key);
            match lookup {
                Lookup::Fresh(value) => {
                    p.count(Event::MemoHit);
                    return Joined::Ready(Ok(Outcome::from(value, true, Source::Memo)));
                }
                Lookup::Stale(value) => {
                    p.count(Event::StaleHit);
                    let hash = self.hasher.hash_one(&key);
                    self.refresh(p, hash, key, make);
                    return Joined::Ready(Ok(Outcome::from(value, true, Source::Stale)));
                }
                Lookup::Miss => {}
            }
            // Hashed for the table only on a miss: the hit path pays the memo's hash alone.
            let hash = *hash.get_or_insert_with(|| self.hasher.hash_one(&key));
            let mut table = self.table.lock(hash);
            if let Some(slot) = table.live_mut(hash, &key) {
                let id = slot.id();
                #[cfg(feature = "tracing")]
                let span = slot.span.clone();
                let flight = Arc::clone(
                    slot.flight
                        .get_or_insert_with(|| Arc::new(Flight::joined())),
                );
                let mut state = lock(&flight.state);
                match p.over_cap(state.callers.saturating_sub(1)) {
                    Some(Overflow::Refuse) => {
                        return Joined::Ready(Err(Error::TooManyWaiters));
                    }
                    Some(Overflow::RunOwn) => {
                        drop(state);
                        drop(table);
                        p.count(Event::Execution);
                        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            Box::pin(make()) as Work<T>
                        }));
                        return match made {
                            Ok(work) => Joined::Own(work),
                            Err(payload) => {
                                p.count(Event::Panic);
                                Joined::Ready(Err(Panicked::leader(payload).into()))
                            }
                        };
                    }
                    None => {}
                }
                state.callers += 1;
                drop(state);
                drop(table);
                drop(key);
                p.gauge(Gauge::Waiters, 1);
                return Joined::Follow {
                    flight,
                    hash,
                    id,
                    make: p.retry_once.then_some(make),
                    #[cfg(feature = "tracing")]
                    span,
                };
            }
            if writes.is_some_and(|w| p.memo.as_ref().is_some_and(|memo| memo.writes() != w)) {
                // A flight wrote the memo since we looked: look again.
                continue;
            }
            let id = table.insert(hash, key, &self.hasher);
            drop(table);
            p.gauge(Gauge::Flights, 1);
            p.count(Event::Execution);
            return match self.make_work(make, hash, id) {
                Ok(lead) => Joined::Lead(lead),
                Err(result) => Joined::Failed(result),
            };
        }
    }

    /// Starts a background refresh of `key` with `make`, unless a flight for
    /// it is in progress.
    fn refresh<F, Fut>(self: &StdArc<Self>, p: &Policies<K, T>, hash: u64, key: K, make: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let Some(spawner) = &self.spawner else {
            return;
        };
        let mut table = self.table.lock(hash);
        if table.live_mut(hash, &key).is_some() {
            drop(table);
            drop(key);
            return;
        }
        let id = table.insert(hash, key, &self.hasher);
        drop(table);
        p.gauge(Gauge::Flights, 1);
        p.count(Event::Execution);
        if let Ok(lead) = self.make_work(make, hash, id) {
            spawner.spawn(Detached::new(DetachedLead::new(StdArc::clone(self), lead)));
        }
    }

    /// Ends flight `id` with `result` under the policies: a retry, or the
    /// memo, then the followers.
    pub(super) fn finish_policed(
        &self,
        p: &Policies<K, T>,
        hash: u64,
        id: u64,
        result: std::thread::Result<T>,
    ) -> Result<Outcome<T>, Panicked> {
        let ending = p.ending(&result);

        let mut table = self.table.lock(hash);
        if p.retry_once
            && ending.failure
            && let Some(slot) = table.get_mut(hash, id)
            && !slot.retried
            && let Some(flight) = slot.flight.clone()
        {
            let mut state = lock(&flight.state);
            if state.callers > 1 {
                state.callers -= 1;
                state.retry = true;
                let heir = state.heir();
                drop(state);
                slot.retried = true;
                drop(table);
                if let Some(heir) = heir {
                    heir.wake();
                }
                drop(ending);
                let value = result.unwrap_or_else(|_| unreachable!("a failure is a value"));
                return Ok(Outcome::new(value, true));
            }
        }
        let flight = p.close(table, hash, id, ending, result.is_err());
        settle(result, flight.as_deref())
    }
}

impl<K, T, S> Builder<K, T, S> {
    /// Past its TTL, a value is still served ([`Source::Stale`]) for `grace`
    /// while one background refresh runs on the spawner; a failed refresh
    /// leaves the stale value in place until the grace ends. Needs
    /// [`Builder::detach`]: without a spawner it is ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use singleflight::future::{Group, TokioSpawner};
    ///
    /// let group = Group::<&str, u8>::builder()
    ///     .memo_all(Duration::from_secs(30))
    ///     .stale_while_revalidate(Duration::from_secs(300))
    ///     .detach(TokioSpawner::current())
    ///     .build();
    /// assert_eq!(group.call("k", || async { 1 }).await.value, 1);
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn stale_while_revalidate(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }
}
