// The blocking group.
//
// Invariants (see also `table.rs`):
// - The table lock is held only for lookups and updates of the table, never
//   while the work, `Clone` or a key's `Drop` runs.
// - Only a flight's leader removes its slot, and it always does, panic or
//   not; that removal and the check for followers happen under one lock, so
//   a follower either joined before it (and gets the published result) or
//   arrives after it (and starts a new flight).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::panic::{self, AssertUnwindSafe};

use super::builder::Builder;
use super::flight::Flight;
use crate::loom::sync::Arc;
use crate::policy::Policies;
use crate::settle::{received, settle};
use crate::table::Shards;
use crate::{Outcome, Panicked};

/// Coalesces concurrent calls for the same key on threads: the work runs once
/// and every caller gets its result. This is Go's `singleflight.Group`.
///
/// A call whose key has no flight in progress becomes the flight's *leader*:
/// it runs the work on its own thread. Calls that arrive for the same key
/// while it runs are *followers*: they sleep until it ends and receive a clone
/// of its value. A call that arrives after the flight ended starts a new one;
/// nothing is remembered.
///
/// Keys are looked up by any borrowed form (`&str` for `String` keys), with
/// the hasher `S`. `T` must be `Clone` (wrap it in an [`Arc`](std::sync::Arc)
/// when cloning is dear) and `Send + Sync`, as it is shared between threads.
/// Errors are values: use `T = Result<V, E>` with a cloneable `E` and every
/// caller of a failed flight receives the error.
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
///             group.call("status".to_string(), || {
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
    pub(super) table: Shards<K, Arc<Flight<T>>>,
    pub(super) hasher: S,
    /// `None` unless the builder turned a policy on: the plain path pays one
    /// branch on it per call.
    pub(super) policy: Option<Box<Policies<K, T>>>,
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
    /// assert_eq!(group.call("k".to_string(), || 1).value, 1);
    /// assert_eq!(group.call("k".to_string(), || 2).value, 1); // from the memo
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
    /// assert_eq!(group.call(1, || 2).value, 2);
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self {
            table: Shards::new(),
            hasher,
            policy: None,
        }
    }

    /// The number of flights in progress (forgotten ones included, until they end).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    /// let group = singleflight::sync::Group::<&str, Result<u16, String>>::new();
    /// let out = group.call("status", || Ok(200));
    /// assert_eq!(out.value, Ok(200));
    /// assert!(!out.shared);
    /// ```
    ///
    /// # Panics
    ///
    /// When `work` panics, every caller of that flight panics: the leader with
    /// the original payload, the followers with its message as a `String`.
    /// The key is freed first and the group stays usable: the next call runs
    /// afresh. [`Group::try_call`] returns the panic as an error instead.
    ///
    /// With a waiter cap set to [`Overflow::Refuse`](crate::policy::Overflow::Refuse),
    /// when the cap is reached; use [`Group::call_checked`] to get
    /// [`Error::TooManyWaiters`](crate::Error::TooManyWaiters) instead. The
    /// builder's `timeout` does not apply here (it does in `call_checked`).
    ///
    /// Calling the group for the *same* key from inside `work` deadlocks, as
    /// the call waits for the flight that is waiting for it.
    pub fn call<F>(&self, key: K, work: F) -> Outcome<T>
    where
        F: FnOnce() -> T,
    {
        self.try_call(key, work).unwrap_or_else(|p| p.resume())
    }

    /// Like [`Group::call`], but a panic in the work is returned as
    /// [`Panicked`] to every caller of the flight instead of re-raised.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<u8, u8>::new();
    /// let err = group.try_call(1, || panic!("boom")).unwrap_err();
    /// assert_eq!(err.message(), "boom");
    /// ```
    ///
    /// # Panics
    ///
    /// If `T::clone` panics, for the caller whose clone it was; with a waiter
    /// cap set to [`Overflow::Refuse`](crate::policy::Overflow::Refuse), when
    /// the cap is reached (see [`Group::call_checked`]).
    pub fn try_call<F>(&self, key: K, work: F) -> Result<Outcome<T>, Panicked>
    where
        F: FnOnce() -> T,
    {
        if let Some(policy) = &self.policy {
            if let Some(outcome) = policy.hit(&key) {
                return Ok(outcome);
            }
            return self.try_call_missed(policy, key, work);
        }
        self.try_call_plain(key, work)
    }

    /// `try_call` without policies: Go's semantics.
    #[inline(never)]
    fn try_call_plain<F>(&self, key: K, work: F) -> Result<Outcome<T>, Panicked>
    where
        F: FnOnce() -> T,
    {
        let hash = self.hasher.hash_one(&key);
        let mut table = self.table.lock(hash);
        if let Some(slot) = table.live_mut(hash, &key) {
            let flight = Arc::clone(slot.flight.get_or_insert_with(|| Arc::new(Flight::new())));
            drop(table);
            drop(key);
            return received(flight.wait());
        }
        let id = table.insert(hash, key, &self.hasher);
        drop(table);

        let result = panic::catch_unwind(AssertUnwindSafe(work));

        let slot = self.table.lock(hash).remove(hash, id);
        let flight = slot.and_then(|slot| slot.flight);
        settle(result, flight.as_deref())
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
        let hash = self.hasher.hash_one(key);
        self.table.lock(hash).forget(hash, key)
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
        let hash = self.hasher.hash_one(key);
        self.table.lock(hash).contains(hash, key)
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
    /// let out = group.call("key".to_string(), || {
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
        let hash = self.hasher.hash_one(key);
        let table = self.table.lock(hash);
        // Each waiting caller holds one reference to the flight; the slot
        // holds the other.
        table
            .live(hash, key)
            .and_then(|slot| slot.flight.as_ref())
            .map_or(0, |flight| Arc::strong_count(flight) - 1)
    }
}

impl<K, T, S> fmt::Debug for Group<K, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("flights", &self.len())
            .finish_non_exhaustive()
    }
}
