// The async group: the table of flights, and what happens to a flight when
// callers arrive, finish or leave. `call.rs` holds the futures that drive it.
//
// Invariants (see also `table.rs` and `flight.rs`):
// - No lock is held while user code runs (the work, `make`, `Clone`, a key's
//   or a work's `Drop`, a waker, the spawner).
// - A flight's slot leaves the table when the flight ends (`finish`) or is
//   abandoned by its last caller (`abandon`, `leave`), under the table lock,
//   at once: no new caller can join a flight that will never end.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc as StdArc;

use super::call::{Call, Handle, Lead, TryCall};
use super::flight::{Flight, Work};
use super::spawn::{Detached, Spawn};
use crate::loom::lock;
use crate::loom::sync::{Arc, MutexGuard};
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Policies};
use crate::table::{Shards, Table};
use crate::{Error, Outcome, Panicked};

/// Coalesces concurrent async calls for the same key: the work runs once and
/// every caller gets its result.
///
/// A flight belongs to *all* its callers. Dropping the caller that started it
/// does not cancel it: one of the callers still waiting carries on polling the
/// same work, which is neither restarted nor run twice. When the *last* caller
/// is dropped the work is dropped (cancelled) and the key freed at once, so no
/// later call joins a flight that will never end; with [`Builder::detach`] the
/// flight is instead handed to an executor and runs to completion.
///
/// The group needs no runtime: it works on any executor. It is cheap to clone
/// (a reference count), and clones share their flights.
///
/// # Concurrent calls on the same key
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use singleflight::future::Group;
///
/// # #[tokio::main]
/// # async fn main() {
/// let group = Group::<String, String>::new();
/// let executions = Arc::new(AtomicUsize::new(0));
///
/// let tasks: Vec<_> = (0..8)
///     .map(|_| {
///         let (group, executions) = (group.clone(), executions.clone());
///         tokio::spawn(async move {
///             group
///                 .call("status".to_string(), || async move {
///                     executions.fetch_add(1, Ordering::SeqCst);
///                     tokio::time::sleep(Duration::from_millis(100)).await; // a slow upstream
///                     "200 OK".to_string()
///                 })
///                 .await
///         })
///     })
///     .collect();
///
/// for task in tasks {
///     let out = task.await.unwrap();
///     println!("status: {}, shared: {}", out.value, out.shared);
/// }
/// assert_eq!(executions.load(Ordering::SeqCst), 1);
/// assert!(group.is_empty());
/// # }
/// ```
///
/// prints eight times `status: 200 OK, shared: true`.
pub struct Group<K, T, S = RandomState> {
    pub(super) inner: StdArc<Inner<K, T, S>>,
}

pub(crate) struct Inner<K, T, S> {
    pub(super) table: Shards<K, Arc<Flight<T>>>,
    pub(super) hasher: S,
    pub(super) spawner: Option<StdArc<dyn Spawn>>,
    /// `None` unless the builder turned a policy on: the plain path pays one
    /// branch on it per call.
    pub(crate) policy: Option<Box<Policies<K, T>>>,
}

impl<K, T> Group<K, T, RandomState> {
    /// An empty group with the standard hasher, whose flights are cancelled
    /// when their last caller is dropped.
    pub fn new() -> Self {
        Self {
            inner: StdArc::new(Inner {
                table: Shards::new(),
                hasher: RandomState::new(),
                spawner: None,
                policy: None,
            }),
        }
    }

    /// A builder for a group with other settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    ///
    /// let group = singleflight::future::Group::<u64, u64>::builder()
    ///     .hasher(BuildHasherDefault::<DefaultHasher>::default())
    ///     .build();
    /// assert!(group.is_empty());
    /// ```
    pub fn builder() -> Builder<K, T, RandomState> {
        Builder::new(RandomState::new(), Async { spawner: None })
    }
}

impl<K, T> Default for Group<K, T, RandomState> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T, S> Clone for Group<K, T, S> {
    fn clone(&self) -> Self {
        Self {
            inner: StdArc::clone(&self.inner),
        }
    }
}

impl<K, T, S> Group<K, T, S> {
    /// The number of flights in progress (forgotten ones included, until they end).
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, T, S> Group<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Runs the future `make()` returns for `key`, unless a flight for `key`
    /// is in progress, in which case it waits for that flight and returns a
    /// clone of its value.
    ///
    /// Nothing happens until the returned future is first polled; `make` is
    /// then called only if this call starts a new flight. The work is polled
    /// by whichever of the flight's callers currently drives it, with no lock
    /// held.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<&str, Result<u16, String>>::new();
    /// let out = group.call("status", || async { Ok(200) }).await;
    /// assert_eq!(out.value, Ok(200));
    /// assert!(!out.shared);
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future leaves the flight to its other callers:
    /// if it was driving the work, a waiting caller takes the work over where
    /// it stands. Dropping the last caller's future drops the work (its
    /// destructors run, on the dropping thread) and frees the key at once; the
    /// next call starts afresh and never sees that flight's result. With
    /// [`Builder::detach`], the work is instead handed to the spawner and runs
    /// to completion, and new calls for the key still join it.
    ///
    /// # Panics
    ///
    /// When the work (or `make`) panics, every caller of that flight panics:
    /// the one whose poll ran it with the original payload, the others with
    /// its message as a `String`. The key is freed first and the group stays
    /// usable. [`Group::try_call`] returns the panic as an error instead.
    ///
    /// Awaiting a call for the *same* key from inside the work never
    /// completes, as it waits for itself.
    ///
    /// The future borrows the group; to spawn it, or keep it where a
    /// borrow cannot go, use [`Group::call_owned`].
    pub fn call<F, Fut>(&self, key: K, make: F) -> Call<'_, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Call::new(self.try_call(key, make))
    }

    /// Like [`Group::call`], in a future that holds a reference count of
    /// the group instead of borrowing it: it is `'static` (when `K`, `T`,
    /// `S` and `F` are) and can be spawned. It costs two atomic operations
    /// more than `call`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = singleflight::future::Group::<&str, u16>::new();
    /// let task = tokio::spawn(group.call_owned("status", || async { 200 }));
    /// assert_eq!(task.await.unwrap().value, 200);
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn call_owned<F, Fut>(&self, key: K, make: F) -> Call<'static, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Call::new(self.try_call_owned(key, make))
    }

    /// Like [`Group::call`], but a panic in the work is returned as
    /// [`Panicked`] to every caller of the flight instead of re-raised.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::new();
    /// let err = group.try_call(1, || async { panic!("boom") }).await.unwrap_err();
    /// assert_eq!(err.message(), "boom");
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Group::call`].
    pub fn try_call<F, Fut>(&self, key: K, make: F) -> TryCall<'_, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        TryCall::new(Handle::Borrowed(&self.inner), key, make)
    }

    /// Like [`Group::try_call`], in a `'static` future (see
    /// [`Group::call_owned`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::new();
    /// let call = group.try_call_owned(1, || async { 2 });
    /// drop(group); // the call holds the group
    /// assert_eq!(call.await.unwrap().value, 2);
    /// # });
    /// ```
    pub fn try_call_owned<F, Fut>(&self, key: K, make: F) -> TryCall<'static, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        TryCall::new(Handle::Owned(StdArc::clone(&self.inner)), key, make)
    }

    /// Forgets the flight in progress for `key`, if any: callers already
    /// waiting on it still receive its value, but calls from now on start a
    /// new flight. Returns whether there was a flight to forget.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::future::Group::<String, u8>::new();
    /// assert!(!group.forget("nothing in flight"));
    /// ```
    pub fn forget<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.inner.hasher.hash_one(key);
        self.inner.table.lock(hash).forget(hash, key)
    }

    /// Whether a flight for `key` is in progress (and not forgotten).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::future::Group::<String, u8>::new();
    /// assert!(!group.contains("idle"));
    /// ```
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.inner.hasher.hash_one(key);
        self.inner.table.lock(hash).contains(hash, key)
    }

    /// The number of callers waiting on the flight in progress for `key`,
    /// the one driving its work not counted; 0 when no flight for `key` is in
    /// progress.
    ///
    /// A snapshot, for observation and tests: it may change as soon as it
    /// is read.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::future::Group::<String, u8>::new();
    /// assert_eq!(group.waiters("key"), 0);
    /// ```
    pub fn waiters<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.inner.hasher.hash_one(key);
        let table = self.inner.table.lock(hash);
        table
            .live(hash, key)
            .and_then(|slot| slot.flight.as_ref())
            .map_or(0, |flight| lock(&flight.state).callers.saturating_sub(1))
    }
}

impl<K, T, S> fmt::Debug for Group<K, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("flights", &self.len())
            .field("detached", &self.inner.spawner.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Group`]; from [`Group::builder`]. Its calls are
/// [`policy::Builder`](crate::policy::Builder)'s, plus [`Builder::detach`],
/// [`Builder::stale_while_revalidate`] and [`Builder::build`].
pub type Builder<K, T, S> = crate::policy::Builder<K, T, S, Async>;

/// What a [`Builder`] of the async group holds beyond the policies: the
/// spawner of [`Builder::detach`].
pub struct Async {
    spawner: Option<StdArc<dyn Spawn>>,
}

impl fmt::Debug for Async {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Async")
            .field("detached", &self.spawner.is_some())
            .finish()
    }
}

impl<K, T, S> Builder<K, T, S> {
    /// Hands a flight whose every caller was dropped to `spawner`, which runs
    /// it to completion, instead of cancelling it. Calls for its key keep
    /// joining it meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = singleflight::future::Group::<String, u32>::builder()
    ///     .detach(singleflight::future::TokioSpawner::current())
    ///     .build();
    /// # drop(group);
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn detach(mut self, spawner: impl Spawn) -> Self {
        self.group.spawner = Some(StdArc::new(spawner));
        self
    }
}

impl<K: Hash + Eq, T: Clone, S> Builder<K, T, S> {
    /// The group.
    pub fn build(self) -> Group<K, T, S> {
        let spawner = self.group.spawner;
        let policy = self.settings.build(spawner.is_some());
        Group {
            inner: StdArc::new(Inner {
                table: Shards::new(),
                hasher: self.hasher,
                spawner,
                policy,
            }),
        }
    }
}

/// Where a call stands after looking its key up.
pub(crate) enum Joined<T, F> {
    /// It started a new flight and drives its work.
    Lead(Lead<T>),
    /// It joined the flight in progress; keeps `make` for a retry.
    Follow {
        flight: Arc<Flight<T>>,
        hash: u64,
        id: u64,
        make: Option<F>,
        /// The flight's span, to follow from (feature `tracing`).
        #[cfg(feature = "tracing")]
        span: Option<tracing::Id>,
    },
    /// Past the waiter cap: it runs its own work, alone.
    Own(Work<T>),
    /// It started a new flight, but `make` panicked.
    Failed(Result<Outcome<T>, Panicked>),
    /// Answered without a flight (memo), or refused.
    Ready(Result<Outcome<T>, Error>),
}

impl<K, T, S> Inner<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Joins the flight for `key`, or starts one with `make`.
    pub(crate) fn join<F, Fut>(self: &StdArc<Self>, key: K, make: F) -> Joined<T, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if let Some(policy) = &self.policy {
            return self.join_policed(policy, key, make);
        }
        let hash = self.hasher.hash_one(&key);
        let mut table = self.table.lock(hash);
        if let Some(slot) = table.live_mut(hash, &key) {
            let id = slot.id();
            #[cfg(feature = "tracing")]
            let span = slot.span.clone();
            let flight = Arc::clone(
                slot.flight
                    .get_or_insert_with(|| Arc::new(Flight::joined())),
            );
            lock(&flight.state).callers += 1;
            drop(table);
            return Joined::Follow {
                flight,
                hash,
                id,
                make: None,
                #[cfg(feature = "tracing")]
                span,
            };
        }
        let id = table.insert(hash, key, &self.hasher);
        drop(table);
        match self.make_work(make, hash, id) {
            Ok(lead) => Joined::Lead(lead),
            Err(result) => Joined::Failed(result),
        }
    }

    /// Calls `make` for flight `id`; if it panics, ends the flight with it.
    pub(crate) fn make_work<F, Fut>(
        &self,
        make: F,
        hash: u64,
        id: u64,
    ) -> Result<Lead<T>, Result<Outcome<T>, Panicked>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        #[cfg(feature = "tracing")]
        let make = {
            use tracing::Instrument as _;
            // The flight's span, recorded in its slot for the waiters to
            // follow from. A waiter that joins before it is recorded (the
            // instant between the slot's insertion and this) is not linked.
            let span = tracing::info_span!("singleflight.flight", flight.id = id);
            if let Some(span_id) = span.id()
                && let Some(slot) = self.table.lock(hash).get_mut(hash, id)
            {
                slot.span = Some(span_id);
            }
            move || {
                let work = span.in_scope(make);
                work.instrument(span)
            }
        };
        let made =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Box::pin(make()) as Work<T>));
        match made {
            Ok(work) => Ok(Lead { work, hash, id }),
            Err(payload) => Err(self.finish(hash, id, Err(payload))),
        }
    }

    /// Counts `event`, if metrics are on.
    #[inline]
    pub(crate) fn count(&self, event: Event) {
        if let Some(policy) = &self.policy {
            policy.count(event);
        }
    }

    /// Moves `gauge` by `delta`, if metrics are on.
    #[inline]
    pub(crate) fn gauge(&self, gauge: Gauge, delta: i64) {
        if let Some(policy) = &self.policy {
            policy.gauge(gauge, delta);
        }
    }

    /// Ends flight `id` with `result`: frees its key and hands the result to
    /// every caller still waiting.
    pub(crate) fn finish(
        &self,
        hash: u64,
        id: u64,
        result: std::thread::Result<T>,
    ) -> Result<Outcome<T>, Panicked> {
        if let Some(policy) = &self.policy {
            return self.finish_policed(policy, hash, id, result);
        }
        let slot = self.table.lock(hash).remove(hash, id);
        let flight = slot.and_then(|slot| slot.flight);
        crate::settle::settle(result, flight.as_deref())
    }

    /// The driver of flight `lead` was dropped before the work ended: hand
    /// the work to a waiting caller, or to the spawner, or cancel it.
    ///
    /// `may_detach` is false for a detached driver, which is only dropped when
    /// its executor shuts down: handing it back would loop.
    pub(crate) fn abandon(self: &StdArc<Self>, lead: Lead<T>, may_detach: bool) {
        let Lead { work, hash, id } = lead;
        let mut table = self.table.lock(hash);
        let Some(slot) = table.get_mut(hash, id) else {
            return;
        };
        let Some(flight) = slot.flight.clone() else {
            // Nobody ever joined: we were its only caller.
            return self.detach_or_cancel(table, None, Lead { work, hash, id }, may_detach);
        };
        let mut state = lock(&flight.state);
        if state.callers == 1 {
            drop(state);
            return self.detach_or_cancel(
                table,
                Some(&flight),
                Lead { work, hash, id },
                may_detach,
            );
        }
        state.callers -= 1;
        state.orphan = Some(work);
        let heir = state.heir();
        drop(state);
        drop(table);
        if let Some(heir) = heir {
            heir.wake();
        }
    }

    /// Flight `lead` has lost its last caller while its work was unfinished:
    /// hand the work to the spawner, where the flight stays in the table with
    /// the detached driver as its one caller, or cancel it: its slot leaves
    /// the table at once and the work is dropped once the lock is released.
    ///
    /// `may_detach` is false for a detached driver, which is only dropped when
    /// its executor shuts down: handing it back would loop.
    fn detach_or_cancel(
        self: &StdArc<Self>,
        mut table: MutexGuard<'_, Table<K, Arc<Flight<T>>>>,
        flight: Option<&Arc<Flight<T>>>,
        lead: Lead<T>,
        may_detach: bool,
    ) {
        match &self.spawner {
            Some(spawner) if may_detach => {
                if let Some(flight) = flight {
                    lock(&flight.state).callers = 1;
                }
                drop(table);
                spawner.spawn(Detached::new(DetachedLead::new(StdArc::clone(self), lead)));
            }
            _ => {
                let removed = table.remove(lead.hash, lead.id);
                drop(table);
                self.count(Event::Cancellation);
                self.gauge(Gauge::Flights, -1);
                drop(removed);
                drop(lead);
            }
        }
    }

    /// A follower of `flight` was dropped before receiving its result.
    pub(crate) fn leave(
        self: &StdArc<Self>,
        flight: &Arc<Flight<T>>,
        hash: u64,
        id: u64,
        waiter: Option<usize>,
    ) {
        let mut table = self.table.lock(hash);
        let mut state = lock(&flight.state);
        if flight.result.get().is_some() {
            // Ended: `publish` took the waiters; nothing to undo.
            return;
        }
        if let Some(waiter) = waiter {
            state.waiters.try_remove(waiter);
        }
        state.callers -= 1;
        if state.callers > 0 {
            // If the work (or a retry) is waiting for a follower to pick it
            // up, we may have been the one woken for it: pass the turn on.
            let heir = if state.orphan.is_some() || state.retry {
                state.heir()
            } else {
                None
            };
            drop(state);
            drop(table);
            if let Some(heir) = heir {
                heir.wake();
            }
            return;
        }
        // We were the last caller, so the driver is gone and the work orphaned
        // (or a retry is open that nobody is left to run).
        let Some(work) = state.orphan.take() else {
            if state.retry {
                state.retry = false;
                drop(state);
                let removed = table.remove(hash, id);
                drop(table);
                self.gauge(Gauge::Flights, -1);
                drop(removed);
            }
            return;
        };
        drop(state);
        self.detach_or_cancel(table, Some(flight), Lead { work, hash, id }, true);
    }
}

/// A flight run by the spawner after its every caller was dropped.
pub(super) struct DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    inner: StdArc<Inner<K, T, S>>,
    lead: Option<Lead<T>>,
}

impl<K, T, S> DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(super) fn new(inner: StdArc<Inner<K, T, S>>, lead: Lead<T>) -> Self {
        Self {
            inner,
            lead: Some(lead),
        }
    }
}

impl<K, T, S> Future for DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(lead) = self.lead.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let result = std::task::ready!(lead.poll_work(cx));
        if let Some(lead) = self.lead.take() {
            let (hash, id) = (lead.hash, lead.id);
            drop(lead);
            // Nobody to re-raise a panic for: followers get it, the hook printed it.
            drop(self.inner.finish(hash, id, result));
        }
        std::task::Poll::Ready(())
    }
}

impl<K, T, S> Drop for DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let Some(lead) = self.lead.take() {
            self.inner.abandon(lead, false);
        }
    }
}
