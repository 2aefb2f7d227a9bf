// The blocking group: a front-end over the flight engine that runs the work
// on the calling thread and parks followers on the flight's state.
//
// Invariants (see also `engine/mod.rs` and `flight.rs`):
// - Every caller that joins ends in exactly one of: the flight's end, a
//   claimed retry (it then drives), or `leave` (its deadline passed).
// - The driver always ends its flight with `finish`, panic or not: the work
//   runs under `catch_unwind`.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::builder::Builder;
use super::flight::{Flight, Waited};
use crate::engine::{
    Accepts, Ended, Engine, ErrorObject, Following, Joined, KeyArg, Received, Returned, Stop,
    Ticket, accepts, accepts_none, checked_result, received, try_result,
};
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Overflow, Policies, Stats};
use crate::{Error, Outcome, Panicked, Source};

/// Coalesces concurrent calls for the same key on threads: the work runs once
/// and every caller gets its result. This is Go's `singleflight.Group`.
///
/// A call whose key has no flight in progress becomes the flight's *leader*:
/// it runs the work on its own thread. Calls that arrive for the same key
/// while it runs are *followers*: they sleep until it ends and receive a clone
/// of its value. A call that arrives after the flight ended starts a new one;
/// nothing is remembered unless the group has a memo.
///
/// Calls take the key by reference (`&str` for `String` keys, as
/// `HashMap::get` does): it is cloned into the group only when the call
/// starts a flight, so a call that joins one, or that the memo answers,
/// allocates nothing for its key. `T` must be `Clone` (wrap it in an
/// [`Arc`] when cloning is dear) and `Send + Sync`, as it is shared between
/// threads. Fallible work goes through [`Group::try_call`], whose error
/// needs no `Clone`.
///
/// # Concurrent calls on the same key
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::{Arc, Barrier};
/// use std::thread;
/// use std::time::Duration;
///
/// use singleflight::sync::Group;
///
/// let group = Arc::new(Group::<String, String>::new());
/// let executions = Arc::new(AtomicUsize::new(0));
/// let barrier = Arc::new(Barrier::new(8));
///
/// let handles: Vec<_> = (0..8)
///     .map(|_| {
///         let (group, executions, barrier) = (group.clone(), executions.clone(), barrier.clone());
///         thread::spawn(move || {
///             barrier.wait();
///             group.call("status", || {
///                 executions.fetch_add(1, Ordering::SeqCst);
///                 thread::sleep(Duration::from_millis(100)); // a slow upstream
///                 "200 OK".to_string()
///             })
///         })
///     })
///     .collect();
///
/// for handle in handles {
///     let out = handle.join().unwrap();
///     assert_eq!(out.value, "200 OK");
///     println!("status: {}, shared: {}", out.value, out.shared);
/// }
/// // The eight threads met within the 100 ms the work took:
/// // it ran once, and every caller saw `shared: true`.
/// assert_eq!(executions.load(Ordering::SeqCst), 1);
/// assert!(group.is_empty());
/// ```
///
/// prints eight times `status: 200 OK, shared: true`.
pub struct Group<K, T, S = RandomState> {
    engine: Engine<K, T, S, Flight<T>>,
}

impl<K, T> Group<K, T, RandomState> {
    /// An empty group with the standard hasher.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, Vec<u8>>::new();
    /// assert!(group.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_hasher(RandomState::new())
    }

    /// A builder for a group with policies (memo, error policy, deadlines,
    /// waiter cap, metrics) or another hasher.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<String, u64>::builder()
    ///     .memo_all(Duration::from_secs(5))
    ///     .capacity(1_000)
    ///     .build();
    /// assert_eq!(group.call("k", || 1).value, 1);
    /// assert_eq!(group.call("k", || 2).value, 1); // from the memo
    /// ```
    pub fn builder() -> Builder<K, T, RandomState> {
        Builder::new(RandomState::new(), super::builder::Blocking)
    }
}

impl<K, T> Default for Group<K, T, RandomState> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T, S> Group<K, T, S> {
    /// An empty group that hashes keys with `hasher`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let group = singleflight::sync::Group::<u64, u64, _>::with_hasher(
    ///     BuildHasherDefault::<DefaultHasher>::default(),
    /// );
    /// assert_eq!(group.call(&1, || 2).value, 2);
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self::from_parts(hasher, None)
    }

    pub(super) fn from_parts(hasher: S, policy: Option<Box<Policies<K, T>>>) -> Self {
        Self {
            engine: Engine::new(hasher, policy),
        }
    }

    /// The number of flights in progress (forgotten ones included, until they end).
    pub fn len(&self) -> usize {
        self.engine.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the group's counters, or `None` unless the builder
    /// turned metrics on.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<u8, u8>::builder().metrics("g").build();
    /// group.call(&1, || 1);
    /// assert_eq!(group.stats().unwrap().calls, 1);
    /// assert!(singleflight::sync::Group::<u8, u8>::new().stats().is_none());
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.engine.policy().and_then(Policies::stats)
    }
}

impl<K, T, S> Group<K, T, S>
where
    K: Hash + Eq,
    T: Clone,
    S: BuildHasher,
{
    /// Runs `work` for `key`, unless a flight for `key` is already in
    /// progress, in which case it waits for that flight and returns a clone of
    /// its value.
    ///
    /// `work` is called only when this call leads a new flight, on this
    /// thread. No lock of the group is held while it runs, so flights of
    /// different keys run in parallel and `work` may call the group for
    /// another key.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u16>::new();
    /// let out = group.call("status", || 200);
    /// assert_eq!(out.value, 200);
    /// assert!(!out.shared);
    /// ```
    ///
    /// # Panics
    ///
    /// When `work` panics, every caller of that flight panics: the leader with
    /// the original payload, the followers with its message as a `String`.
    /// The key is freed first and the group stays usable: the next call runs
    /// afresh. [`Group::call_checked`] returns the panic as a value instead.
    ///
    /// When called for `key` from inside the work of `key`'s own flight
    /// (which would otherwise wait for itself forever).
    ///
    /// No policy makes `call` panic: past a waiter cap set to
    /// [`Overflow::Refuse`], it runs its own work, alone
    /// ([`Source::Bypass`]); [`Group::call_checked`] returns
    /// [`Error::TooManyWaiters`] instead. The builder's `timeout` applies
    /// to `call_checked` only.
    #[track_caller]
    pub fn call<Q, F>(&self, key: &Q, work: F) -> Outcome<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> T,
    {
        self.infallible(KeyArg::borrowed(key), work)
    }

    #[inline]
    #[track_caller]
    fn infallible<Q, F>(&self, key: KeyArg<'_, K, Q>, work: F) -> Outcome<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce() -> T,
    {
        if self.engine.policy().is_none() {
            return self.call_plain(key, work);
        }
        if let Some(hit) = self.engine.hit(key.get()) {
            return hit;
        }
        let work = || Ok(work());
        match self.run(key, work, accepts_none, false, None) {
            Ok(outcome) => outcome,
            Err(stop) => stop.resume(),
        }
    }

    /// `call` in a group without policies, the commonest: the lone call's
    /// outcome is built in place.
    #[inline(never)]
    #[track_caller]
    fn call_plain<Q, F>(&self, key: KeyArg<'_, K, Q>, work: F) -> Outcome<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce() -> T,
    {
        match self.engine.join_plain(key) {
            Ok(ticket) => {
                let running = self.engine.running(ticket);
                let result = panic::catch_unwind(AssertUnwindSafe(work));
                drop(running);
                match result {
                    Ok(value) => self.engine.finish_value(ticket, value),
                    Err(payload) => match self.engine.finish(ticket, Ended::Panicked(payload)) {
                        Ok(_) => unreachable!("a panic ends its flight as one"),
                        Err(stop) => stop.resume(),
                    },
                }
            }
            Err(following) => {
                let work = || Ok(work());
                match self.follow(following, work, accepts_none, None) {
                    Ok(outcome) => outcome,
                    Err(stop) => stop.resume(),
                }
            }
        }
    }

    /// Like [`Group::call`], with the key by value: for a key made for
    /// this call (`format!`), which the group then keeps instead of a
    /// clone when the call starts a flight.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u64>::new();
    /// let id = 42;
    /// assert_eq!(group.call_owned(format!("user:{id}"), || 7).value, 7);
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Group::call`].
    #[track_caller]
    pub fn call_owned<F>(&self, key: K, work: F) -> Outcome<T>
    where
        F: FnOnce() -> T,
    {
        self.infallible(KeyArg::Owned(key), work)
    }

    /// Runs fallible `work` for `key`, or waits for the flight in
    /// progress: every caller of a flight whose work failed gets the same
    /// error, behind one [`Arc`], so `E` need not be `Clone` (an
    /// `anyhow::Error`, an `io::Error` fit).
    ///
    /// Errors are failures: they are not memoised (unless the builder sets
    /// a `negative_ttl`), and `ErrorPolicy::RetryOnce` retries them. A call
    /// that joins a flight whose error is of another type than its own `E`
    /// (another entry point was used for the same key) runs its own work.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// #[derive(Debug)]
    /// struct Unavailable;
    ///
    /// let group = singleflight::sync::Group::<String, u16>::new();
    /// let err: Arc<Unavailable> = group.try_call("status", || Err(Unavailable)).unwrap_err();
    /// assert!(matches!(*err, Unavailable));
    /// assert_eq!(group.try_call::<_, Unavailable, _>("status", || Ok(200)).unwrap().value, 200);
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Group::call`]: a panic in the work reaches every caller.
    #[track_caller]
    pub fn try_call<Q, E, F>(&self, key: &Q, work: F) -> Result<Outcome<T>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        E: Send + Sync + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        self.fallible(KeyArg::borrowed(key), work)
    }

    #[inline]
    #[track_caller]
    fn fallible<Q, E, F>(&self, key: KeyArg<'_, K, Q>, work: F) -> Result<Outcome<T>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        E: Send + Sync + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        if let Some(hit) = self.engine.hit(key.get()) {
            return Ok(hit);
        }
        let work = || work().map_err(|error| Arc::new(error) as ErrorObject);
        try_result(self.run(key, work, accepts::<E>, false, None))
    }

    /// Like [`Group::try_call`], with the key by value (see
    /// [`Group::call_owned`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u64>::new();
    /// let out = group.try_call_owned("k".to_string(), || Ok::<_, std::io::Error>(7));
    /// assert_eq!(out.unwrap().value, 7);
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Group::call`].
    #[track_caller]
    pub fn try_call_owned<E, F>(&self, key: K, work: F) -> Result<Outcome<T>, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> Result<T, E>,
    {
        self.fallible(KeyArg::Owned(key), work)
    }

    /// Like [`Group::call`], but every way a call can end without a value
    /// is an [`Error`]: the work panicked, the builder's `timeout` passed
    /// while waiting for another caller's flight, or the waiter cap refused
    /// the call.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::{policy::Overflow, sync::Group, Error};
    ///
    /// let group = Group::<String, u8>::builder().max_waiters(0, Overflow::Refuse).build();
    /// // Alone on its key, the call leads its flight: the cap is not in play.
    /// assert_eq!(group.call_checked("k", || 1).unwrap().value, 1);
    /// match group.call_checked("k", || panic!("boom")) {
    ///     Err(Error::Panicked(p)) => assert_eq!(p.message(), "boom"),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was, or
    /// when called for `key` from inside the work of `key`'s own flight.
    #[track_caller]
    pub fn call_checked<Q, F>(&self, key: &Q, work: F) -> Result<Outcome<T>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> T,
    {
        let deadline = self
            .engine
            .policy()
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
    /// let group = singleflight::sync::Group::<String, u8>::new();
    /// let out = group.call_with_timeout("k", Duration::from_secs(1), || 3).unwrap();
    /// assert_eq!(out.value, 3);
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Group::call_checked`].
    #[track_caller]
    pub fn call_with_timeout<Q, F>(
        &self,
        key: &Q,
        timeout: Duration,
        work: F,
    ) -> Result<Outcome<T>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> T,
    {
        self.checked(key, work, Instant::now().checked_add(timeout))
    }

    #[track_caller]
    fn checked<Q, F>(
        &self,
        key: &Q,
        work: F,
        deadline: Option<Instant>,
    ) -> Result<Outcome<T>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> T,
    {
        if let Some(hit) = self.engine.hit(key) {
            return Ok(hit);
        }
        let work = || Ok(work());
        checked_result(self.run(KeyArg::borrowed(key), work, accepts_none, true, deadline))
    }

    /// Every entry point but a plain `call`, past the memo's hit path.
    #[track_caller]
    fn run<Q, W>(
        &self,
        key: KeyArg<'_, K, Q>,
        work: W,
        accepts: Accepts,
        refuse: bool,
        deadline: Option<Instant>,
    ) -> Received<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        W: FnOnce() -> Returned<T>,
    {
        match self.engine.join(key, accepts, false) {
            Joined::Lead(ticket) => self.lead(ticket, work),
            Joined::Follow(following) => self.follow(following, work, accepts, deadline),
            Joined::OverCap(Overflow::Refuse) if refuse => Err(Stop::TooManyWaiters),
            Joined::OverCap(_) => self.run_own(work),
            Joined::Hit(hit) | Joined::Refresh(hit, _) => hit,
        }
    }

    /// Runs `work` as the driver of flight `ticket` and ends the flight.
    #[inline]
    fn lead<W>(&self, ticket: Ticket, work: W) -> Received<T>
    where
        W: FnOnce() -> Returned<T>,
    {
        let running = self.engine.running(ticket);
        let result = panic::catch_unwind(AssertUnwindSafe(work));
        drop(running);
        let received = self.engine.finish(ticket, Ended::of(result));
        if matches!(&received, Ok(outcome) if outcome.shared) {
            self.engine.count(Event::Shared);
        }
        received
    }

    /// Waits for the flight `following` joined.
    #[inline(never)]
    fn follow<W>(
        &self,
        following: Following<Flight<T>>,
        work: W,
        accepts: Accepts,
        deadline: Option<Instant>,
    ) -> Received<T>
    where
        W: FnOnce() -> Returned<T>,
    {
        let retry = self.engine.policy().is_some_and(|p| p.retry_once);
        let waited = if deadline.is_none() && !retry {
            // Nothing but the end can come: block on it directly.
            Waited::Ended(following.flight.wait())
        } else {
            following.flight.wait_until(deadline)
        };
        match waited {
            Waited::Ended(published) => {
                self.engine.gauge(Gauge::Waiters, -1);
                match received(published) {
                    Err(Stop::Error(error)) if !accepts(&error) => self.run_own(work),
                    received => {
                        if received.is_ok() {
                            self.engine.count(Event::Shared);
                        }
                        received
                    }
                }
            }
            Waited::Claimed => {
                self.engine.gauge(Gauge::Waiters, -1);
                self.engine.count(Event::Execution);
                self.lead(following.ticket, work)
            }
            Waited::TimedOut => {
                self.engine.count(Event::Timeout);
                let orphan = self.engine.leave(&following, (), false);
                debug_assert!(orphan.is_none(), "blocking flights leave no work behind");
                Err(Stop::Timeout)
            }
        }
    }

    /// Runs `work` alone, outside any flight.
    fn run_own<W>(&self, work: W) -> Received<T>
    where
        W: FnOnce() -> Returned<T>,
    {
        self.engine.count(Event::Execution);
        match panic::catch_unwind(AssertUnwindSafe(work)) {
            Ok(Ok(value)) => Ok(Outcome::from(value, false, Source::Bypass)),
            Ok(Err(error)) => Err(Stop::Error(error)),
            Err(payload) => {
                self.engine.count(Event::Panic);
                Err(Stop::Panicked(Box::new(Panicked::leader(payload))))
            }
        }
    }

    /// Forgets the flight in progress for `key`, if any: callers already
    /// waiting on it still receive its value, but calls from now on start a
    /// new flight. Returns whether there was a flight to forget.
    ///
    /// This is Go's `Forget`. When the old flight ends, it removes only its
    /// own entry, never the new flight's.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u8>::new();
    /// assert!(!group.forget("nothing in flight"));
    /// ```
    pub fn forget<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.forget(key)
    }

    /// Whether a flight for `key` is in progress (and not forgotten).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u8>::new();
    /// assert!(!group.contains("idle"));
    /// ```
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.contains(key)
    }

    /// The number of callers waiting on the flight in progress for `key`,
    /// its leader not counted; 0 when no flight for `key` is in progress.
    ///
    /// A snapshot, for observation and tests: it may change as soon as it
    /// is read.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u8>::new();
    /// let out = group.call("key", || {
    ///     assert_eq!(group.waiters("key"), 0); // the leader alone
    ///     1
    /// });
    /// assert_eq!(group.waiters("key"), 0);
    /// ```
    pub fn waiters<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.waiters(key)
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
    /// group.call("k", || 1);
    /// assert!(group.invalidate("k"));
    /// assert_eq!(group.call("k", || 2).value, 2);
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.invalidate(key)
    }
}

impl<K, T, S> fmt::Debug for Group<K, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("flights", &self.len())
            .finish_non_exhaustive()
    }
}
