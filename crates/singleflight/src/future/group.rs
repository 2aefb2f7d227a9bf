// The async group: its entry points and its builder. The flights are the
// engine's (`engine/`); `driver.rs` runs their work and `call.rs` holds the
// futures the entry points return.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc as StdArc;
use std::time::Duration;

use super::call::{Call, Handle, TryCall};
use super::deadline::{Checked, Until};
use super::driver::Inner;
use super::spawn::Spawn;
use crate::engine::{Engine, KeyArg};
use crate::policy::{Policies, Stats};

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
/// Calls take the key by reference and clone it into the group only when
/// they start a flight; [`Group::call_owned`] takes it by value, for a
/// future that must be `'static`. The group needs no runtime: it works on
/// any executor. It is cheap to clone (a reference count), and clones share
/// their flights.
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
///                 .call("status", || async move {
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
    inner: StdArc<Inner<K, T, S>>,
}

impl<K, T> Group<K, T, RandomState> {
    /// An empty group with the standard hasher, whose flights are cancelled
    /// when their last caller is dropped.
    pub fn new() -> Self {
        Self::from_parts(RandomState::new(), None, None)
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
    fn from_parts(
        hasher: S,
        spawner: Option<StdArc<dyn Spawn>>,
        policy: Option<Box<Policies<K, T>>>,
    ) -> Self {
        Self {
            inner: StdArc::new(Inner {
                engine: Engine::new(hasher, policy),
                spawner,
            }),
        }
    }

    /// The number of flights in progress (forgotten ones included, until they end).
    pub fn len(&self) -> usize {
        self.inner.engine.len()
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
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::builder().metrics("g").build();
    /// group.call(&1, || async { 1 }).await;
    /// assert_eq!(group.stats().unwrap().executions, 1);
    /// # });
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.inner.engine.policy().and_then(Policies::stats)
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
    /// let group = singleflight::future::Group::<String, u16>::new();
    /// let out = group.call("status", || async { 200 }).await;
    /// assert_eq!(out.value, 200);
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
    /// usable. [`Group::call_checked`] returns the panic as a value instead.
    ///
    /// When awaited inside the work of `key`'s own flight (which would
    /// otherwise wait for itself forever).
    ///
    /// No policy makes `call` panic: past a waiter cap set to
    /// [`Overflow::Refuse`](crate::policy::Overflow::Refuse), it runs its
    /// own work, alone ([`Source::Bypass`](crate::Source::Bypass));
    /// [`Group::call_checked`] returns
    /// [`Error::TooManyWaiters`](crate::Error::TooManyWaiters) instead.
    ///
    /// The future borrows the group and the key; to spawn it, or keep it
    /// where a borrow cannot go, use [`Group::call_owned`].
    pub fn call<'a, Q, F, Fut>(&'a self, key: &'a Q, make: F) -> Call<'a, K, Q, T, S, F>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Call::new(Handle::Borrowed(&self.inner), KeyArg::borrowed(key), make)
    }

    /// Like [`Group::call`], in a future that owns its key and holds a
    /// reference count of the group instead of borrowing them: it is
    /// `'static` (when `K`, `T`, `S` and `F` are) and can be spawned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = singleflight::future::Group::<String, u16>::new();
    /// let task = tokio::spawn(group.call_owned("status".to_string(), || async { 200 }));
    /// assert_eq!(task.await.unwrap().value, 200);
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn call_owned<F, Fut>(&self, key: K, make: F) -> Call<'static, K, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Call::new(self.owned(), KeyArg::Owned(key), make)
    }

    /// Runs fallible work for `key`, or waits for the flight in progress:
    /// every caller of a flight whose work failed gets the same error,
    /// behind one [`Arc`](std::sync::Arc), so `E` need not be `Clone`.
    ///
    /// Errors are failures: they are not memoised (unless the builder sets
    /// a `negative_ttl`), and `ErrorPolicy::RetryOnce` retries them. A call
    /// that joins a flight whose error is of another type than its own `E`
    /// (another entry point was used for the same key) runs its own work.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<String, u16>::new();
    /// let err = group
    ///     .try_call("status", || async { Err::<u16, _>(std::io::Error::other("down")) })
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "down");
    /// # });
    /// ```
    ///
    /// # Cancel safety and panics
    ///
    /// As for [`Group::call`].
    pub fn try_call<'a, Q, E, F, Fut>(
        &'a self,
        key: &'a Q,
        make: F,
    ) -> TryCall<'a, K, Q, T, E, S, F>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        TryCall::new(Handle::Borrowed(&self.inner), KeyArg::borrowed(key), make)
    }

    /// Like [`Group::try_call`], in a `'static` future (see
    /// [`Group::call_owned`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::new();
    /// let call = group.try_call_owned(1, || async { Ok::<_, std::io::Error>(2) });
    /// drop(group); // the call holds the group
    /// assert_eq!(call.await.unwrap().value, 2);
    /// # });
    /// ```
    pub fn try_call_owned<E, F, Fut>(&self, key: K, make: F) -> TryCall<'static, K, K, T, E, S, F>
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        TryCall::new(self.owned(), KeyArg::Owned(key), make)
    }

    /// Like [`Group::call`], but every way the call can end without a
    /// value is an [`Error`](crate::Error): the work panicked or the waiter
    /// cap refused the call.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use singleflight::Error;
    ///
    /// let group = singleflight::future::Group::<String, u8>::new();
    /// assert_eq!(group.call_checked("k", || async { 1 }).await.unwrap().value, 1);
    /// let out = group.call_checked("k", || async { panic!("boom") }).await;
    /// assert!(matches!(out, Err(Error::Panicked(p)) if p.message() == "boom"));
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`Group::call`].
    ///
    /// # Panics
    ///
    /// Only if `T::clone` panics, for the caller whose clone it was, or
    /// when awaited inside the work of `key`'s own flight.
    pub fn call_checked<'a, Q, F, Fut>(&'a self, key: &'a Q, make: F) -> Checked<'a, K, Q, T, S, F>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Checked::new(Handle::Borrowed(&self.inner), KeyArg::borrowed(key), make)
    }

    /// Like [`Group::call_checked`], in a `'static` future (see
    /// [`Group::call_owned`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let group = singleflight::future::Group::<u8, u8>::new();
    /// let call = group.call_checked_owned(1, || async { 2 });
    /// assert_eq!(call.await.unwrap().value, 2);
    /// # });
    /// ```
    pub fn call_checked_owned<F, Fut>(&self, key: K, make: F) -> Checked<'static, K, K, T, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        Checked::new(self.owned(), KeyArg::Owned(key), make)
    }

    /// Like [`Group::call_checked`], but gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) when `deadline` completes
    /// first; any executor's timer fits. The caller leaves as if dropped:
    /// the flight goes on for its other callers, and is cancelled only if
    /// nobody else waits (or handed to the spawner, with
    /// [`Builder::detach`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use singleflight::Error;
    ///
    /// let group = singleflight::future::Group::<String, u8>::new();
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
    /// As [`Group::call_checked`].
    pub fn call_until<'a, Q, F, Fut, D>(
        &'a self,
        key: &'a Q,
        make: F,
        deadline: D,
    ) -> Until<'a, K, Q, T, S, F, D>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        D: Future,
    {
        Until::new(self.call_checked(key, make), deadline)
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
    /// let group = singleflight::future::Group::<String, u8>::new();
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
    /// Outside a tokio runtime with the time driver enabled; otherwise as
    /// [`Group::call_checked`].
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[track_caller]
    pub fn call_with_timeout<'a, Q, F, Fut>(
        &'a self,
        key: &'a Q,
        timeout: Duration,
        make: F,
    ) -> Until<'a, K, Q, T, S, F, tokio::time::Sleep>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.call_until(key, make, tokio::time::sleep(timeout))
    }

    fn owned(&self) -> Handle<'static, K, T, S> {
        Handle::Owned(StdArc::clone(&self.inner))
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
        self.inner.engine.forget(key)
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
        self.inner.engine.contains(key)
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
        self.inner.engine.waiters(key)
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
    /// group.call("k", || async { 1 }).await;
    /// assert!(group.invalidate("k"));
    /// assert_eq!(group.call("k", || async { 2 }).await.value, 2);
    /// # });
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.engine.invalidate(key)
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

    /// Past its TTL, a value is still served ([`Source::Stale`](crate::Source::Stale))
    /// for `grace` while one background refresh runs on the spawner; a
    /// failed refresh leaves the stale value in place until the grace ends.
    /// Needs a memo and [`Builder::detach`]: [`Builder::build`] refuses it
    /// without them.
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
    /// let group = Group::<String, u8>::builder()
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

impl<K: Hash + Eq, T: Clone, S> Builder<K, T, S> {
    /// The group.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::future::Group::<String, u8>::builder().build();
    /// assert!(group.is_empty());
    /// ```
    ///
    /// # Panics
    ///
    /// When a setting would do nothing, with a message that names it and
    /// the fix: `negative_ttl`, `capacity`, `clock` or
    /// `stale_while_revalidate` without a memo, `stale_while_revalidate`
    /// without `detach`, and `failure_if` with neither a memo nor
    /// `ErrorPolicy::RetryOnce`.
    #[track_caller]
    pub fn build(self) -> Group<K, T, S> {
        let spawner = self.group.spawner;
        let policy = self.settings.build(spawner.is_some());
        Group::from_parts(self.hasher, spawner, policy)
    }
}
