// The flight engine under both groups: the table of flights, and what
// happens to a flight when callers arrive, when its work ends, fails or is
// left, under the group's policies. The blocking group (`sync/`) and the
// async group (`future/`) are front-ends: they run or poll the work, and
// they wait, each in its own way, on a flight state that implements
// `Rendezvous`.
//
// Invariants (see also `table.rs`, `ended.rs` and `policy/memo.rs`):
// - The table lock is held only for lookups and updates of the table and of
//   a flight's state (lock order: table, then flight), never while the work,
//   `Clone`, a key's or a work's `Drop`, a waker or a spawner runs. The
//   exceptions are `Hash`, `Eq`, and a borrowed key's `ToOwned` when its
//   call starts a flight (a panic there leaves the table untouched).
// - `Slot::waiters` is the one count of a flight's callers, less one: the
//   one driving the work plus every follower that has not left, changed only
//   under the table lock. A caller that takes the work over (orphaned work,
//   a retry) replaces the driver that left and changes nothing.
// - A flight's slot leaves the table, under the table lock, when the flight
//   ends (`finish`), or when its last caller leaves and nobody is left to
//   run its work (`leave`, `abandon`): no caller ever joins a flight that
//   will never end. Its result is published after that, so a slot still in
//   the table belongs to a flight that has not ended.
// - A flight writes the memo only if its slot was never forgotten
//   (`forget`/`invalidate` flag it under the same table lock).
// - A failed flight opens a retry (`ErrorPolicy::RetryOnce`) only if it is
//   not itself a retry and has followers; the driver leaves, and one
//   follower claims the retry in the flight's state. If every follower
//   leaves first, the last one removes the slot.

mod ended;
mod reentry;
mod table;

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::task::Waker;

pub(crate) use ended::{
    Accepts, Ended, ErrorObject, Publish, Published, Received, Returned, Stop, accepts,
    accepts_none, checked_result, received, settle, try_result,
};
pub(crate) use reentry::Running;
pub(crate) use table::{Shards, Table};

use crate::loom::sync::{Arc, MutexGuard};
use crate::policy::memo::Lookup;
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Overflow, Policies};
use crate::{Outcome, Source};

/// A flight's shared state, where its followers wait: each front-end has
/// its own. Every method is called with the table lock held, except
/// `publish`.
pub(crate) trait Rendezvous<T>: Publish<T> {
    /// Work waiting for a caller to take it over (async: the boxed future;
    /// the blocking group never leaves work behind).
    type Work;
    /// Where a follower is registered to be woken (async: its waker's slot).
    type Waiter;

    /// The state of a flight its first follower has just found.
    fn new() -> Self;

    /// The driver's work failed: lets one follower claim a retry. Returns a
    /// waker to wake once the table lock is released.
    fn open_retry(&self) -> Option<Waker>;

    /// The driver left before its work ended: parks `work` for a follower.
    /// Returns a waker to wake once the table lock is released.
    fn orphan(&self, work: Self::Work) -> Option<Waker>;

    /// A follower leaves before the end, `last` of the flight's callers.
    /// Returns what nobody is left to run, if `last`, and otherwise a
    /// waker to pass a pending turn (orphaned work, a retry) on to.
    fn leave(&self, waiter: Self::Waiter, last: bool) -> Left<Self::Work>;
}

/// What a flight's state hands back when a follower leaves.
pub(crate) enum Left<W> {
    /// Nothing to do, or a waker to wake after the table lock is released.
    Pass(Option<Waker>),
    /// The last caller left an open retry unclaimed: the flight is over.
    Retry,
    /// The last caller left while the work waited for one: detach or cancel.
    Orphan(W),
}

/// A flight: where its key lives and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) hash: u64,
    pub(crate) id: u64,
}

/// A key as a call passes it: borrowed, and cloned into the table only if
/// the call starts a flight, or owned.
pub(crate) enum KeyArg<'a, K, Q: ?Sized> {
    Borrowed(&'a Q, fn(&Q) -> K),
    Owned(K),
}

impl<'a, K, Q> KeyArg<'a, K, Q>
where
    K: Borrow<Q>,
    Q: ?Sized,
{
    /// A borrowed key, owned by `to_owned` when needed.
    pub(crate) fn borrowed(key: &'a Q) -> Self
    where
        Q: ToOwned<Owned = K>,
    {
        Self::Borrowed(key, Q::to_owned)
    }

    #[inline]
    pub(crate) fn get(&self) -> &Q {
        match self {
            Self::Borrowed(key, _) => key,
            Self::Owned(key) => key.borrow(),
        }
    }

    fn into_owned(self) -> K {
        match self {
            Self::Borrowed(key, to_owned) => to_owned(key),
            Self::Owned(key) => key,
        }
    }
}

/// A caller that joined a flight in progress.
pub(crate) struct Following<F> {
    pub(crate) flight: Arc<F>,
    pub(crate) ticket: Ticket,
    /// The flight's span, to follow from (feature `tracing`).
    #[cfg(feature = "tracing")]
    pub(crate) span: Option<tracing::Id>,
}

/// Where a call stands after looking its key up.
pub(crate) enum Joined<T, F> {
    /// It started flight `Ticket` and runs its work.
    Lead(Ticket),
    /// It joined the flight in progress.
    Follow(Following<F>),
    /// The flight in progress had as many waiters as the cap allows.
    OverCap(Overflow),
    /// The memo answered.
    Hit(Received<T>),
    /// The memo answered with a stale value, and this call must start the
    /// background refresh, flight `Ticket`.
    Refresh(Received<T>, Ticket),
}

/// The table of flights, the hasher and the policies of a group.
pub(crate) struct Engine<K, T, S, F> {
    table: Shards<K, Arc<F>>,
    hasher: S,
    /// `None` unless the builder turned a policy on: the plain path pays
    /// one branch on it per call.
    policy: Option<Box<Policies<K, T>>>,
}

impl<K, T, S, F> Engine<K, T, S, F> {
    pub(crate) fn new(hasher: S, policy: Option<Box<Policies<K, T>>>) -> Self {
        Self {
            table: Shards::new(),
            hasher,
            policy,
        }
    }

    #[inline]
    pub(crate) fn policy(&self) -> Option<&Policies<K, T>> {
        self.policy.as_deref()
    }

    /// The number of flights in progress, forgotten ones included.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
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

    /// Marks this thread as running the work of flight `ticket` until the
    /// mark is dropped, so that a call from that work for the same key
    /// panics instead of waiting for itself.
    #[inline]
    pub(crate) fn running(&self, ticket: Ticket) -> Running {
        Running::enter(self.table.place(ticket.hash), ticket.id)
    }
}

impl<K, T, S, F> Engine<K, T, S, F>
where
    K: Hash + Eq,
    T: Clone,
    S: BuildHasher,
    F: Rendezvous<T>,
{
    /// A fresh memoised value for `key`: the whole hit path, small enough
    /// to inline into the front-ends' entry points (errors kept for a
    /// negative TTL are found by `join`).
    #[inline(always)]
    pub(crate) fn hit<Q>(&self, key: &Q) -> Option<Outcome<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.policy.as_ref()?.hit(key)
    }

    /// Joins the flight for `key`, or starts one; with policies, the memo
    /// and the waiter cap come first. `refresh`: a stale memo value may
    /// start a background refresh (the async group with a spawner).
    /// Inline, so that a group without policies pays only `join_plain`.
    #[inline]
    #[track_caller]
    pub(crate) fn join<Q>(
        &self,
        key: KeyArg<'_, K, Q>,
        accepts: Accepts,
        refresh: bool,
    ) -> Joined<T, F>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &self.policy {
            None => match self.join_plain(key) {
                Ok(ticket) => Joined::Lead(ticket),
                Err(following) => Joined::Follow(following),
            },
            Some(p) => self.join_policed(p, key, accepts, refresh),
        }
    }

    /// `join` with policies: the memo, then the table under the cap.
    #[inline(never)]
    #[track_caller]
    fn join_policed<Q>(
        &self,
        p: &Policies<K, T>,
        key: KeyArg<'_, K, Q>,
        accepts: Accepts,
        refresh: bool,
    ) -> Joined<T, F>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        p.count(Event::Call);
        let mut hash = None;
        loop {
            let (lookup, writes) = p.lookup(key.get());
            match lookup {
                Lookup::Fresh(value) if takes(&value, accepts) => {
                    p.count(Event::MemoHit);
                    return Joined::Hit(answer(value, Source::Memo));
                }
                Lookup::Stale(value) if takes(&value, accepts) => {
                    p.count(Event::StaleHit);
                    let answer = answer(value, Source::Stale);
                    if !refresh {
                        return Joined::Hit(answer);
                    }
                    let hash = *hash.get_or_insert_with(|| self.hasher.hash_one(key.get()));
                    let mut table = self.table.lock(hash);
                    if table.live_mut(hash, key.get()).is_some() {
                        return Joined::Hit(answer);
                    }
                    let id = table.insert(hash, key.into_owned(), &self.hasher);
                    drop(table);
                    p.gauge(Gauge::Flights, 1);
                    p.count(Event::Execution);
                    return Joined::Refresh(answer, Ticket { hash, id });
                }
                _ => {}
            }
            // Hashed for the table only on a miss: the hit path pays the memo's hash alone.
            let hash = *hash.get_or_insert_with(|| self.hasher.hash_one(key.get()));
            let mut table = self.table.lock(hash);
            if let Some(joined) = self.follow(&mut table, hash, key.get(), Some(p)) {
                return joined;
            }
            if writes.is_some_and(|w| p.memo.as_ref().is_some_and(|memo| memo.writes() != w)) {
                // A flight wrote the memo since we looked: look again.
                continue;
            }
            let id = table.insert(hash, key.into_owned(), &self.hasher);
            drop(table);
            p.gauge(Gauge::Flights, 1);
            p.count(Event::Execution);
            return Joined::Lead(Ticket { hash, id });
        }
    }

    /// `join` in a group without policies: leads (`Ok`) or follows. Its
    /// small result keeps the lone call, the commonest, cheap.
    #[inline]
    #[track_caller]
    pub(crate) fn join_plain<Q>(&self, key: KeyArg<'_, K, Q>) -> Result<Ticket, Following<F>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        debug_assert!(self.policy.is_none(), "the plain path has no policy");
        let hash = self.hasher.hash_one(key.get());
        let mut table = self.table.lock(hash);
        if let Some(Joined::Follow(following)) = self.follow(&mut table, hash, key.get(), None) {
            return Err(following);
        }
        let id = table.insert(hash, key.into_owned(), &self.hasher);
        Ok(Ticket { hash, id })
    }

    /// Joins the live flight for `key`, if there is one, under the cap.
    #[inline(always)]
    #[track_caller]
    fn follow<Q>(
        &self,
        table: &mut MutexGuard<'_, Table<K, Arc<F>>>,
        hash: u64,
        key: &Q,
        p: Option<&Policies<K, T>>,
    ) -> Option<Joined<T, F>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slot = table.live_mut(hash, key)?;
        if reentry::is_running(self.table.place(hash), slot.id()) {
            reentry::reentered();
        }
        if let Some(overflow) = p.and_then(|p| p.over_cap(slot.waiters as usize)) {
            return Some(Joined::OverCap(overflow));
        }
        slot.waiters += 1;
        debug_assert!(
            slot.flight.is_some() || slot.waiters == 1,
            "a flight's state is made by its first follower"
        );
        let flight = Arc::clone(slot.flight.get_or_insert_with(|| Arc::new(F::new())));
        let joined = Following {
            flight,
            ticket: Ticket {
                hash,
                id: slot.id(),
            },
            #[cfg(feature = "tracing")]
            span: slot.span.clone(),
        };
        if let Some(p) = p {
            p.gauge(Gauge::Waiters, 1);
        }
        Some(Joined::Follow(joined))
    }

    /// Ends flight `ticket` with `ended`: a retry, if the policy and the
    /// failure call for one; otherwise frees the key, writes the memo and
    /// hands the end to every follower. Returns the driver's own outcome.
    #[inline]
    pub(crate) fn finish(&self, ticket: Ticket, ended: Ended<T>) -> Received<T> {
        let Ticket { hash, id } = ticket;
        let Some(p) = &self.policy else {
            return settle(ended, self.remove_plain(ticket).as_deref());
        };
        let ending = p.ending(&ended);
        let mut table = self.table.lock(hash);
        if p.retry_once
            && ending.failure
            && let Some(slot) = table.get_mut(hash, id)
            && !slot.retried
            && slot.waiters > 0
            && let Some(flight) = slot.flight.clone()
        {
            slot.retried = true;
            slot.waiters -= 1;
            let heir = flight.open_retry();
            drop(table);
            if let Some(heir) = heir {
                heir.wake();
            }
            drop(ending);
            // The driver keeps its own failure; the followers get a retry.
            return match ended {
                Ended::Returned(Ok(value)) => Ok(Outcome::new(value, true)),
                Ended::Returned(Err(error)) => Err(Stop::Error(error)),
                Ended::Panicked(_) => unreachable!("a panic is not a failure"),
            };
        }
        debug_assert!(
            table.get_mut(hash, id).is_some(),
            "only the driver removes a running flight"
        );
        let panicked = matches!(ended, Ended::Panicked(_));
        let flight = p.close(table, hash, id, ending, panicked);
        settle(ended, flight.as_deref())
    }

    /// `finish` in a group without policies, for work that returned
    /// `value`: the lone call's outcome is built in place, with no result
    /// enum between (each move of one costs the lone call).
    #[inline]
    pub(crate) fn finish_value(&self, ticket: Ticket, value: T) -> Outcome<T> {
        debug_assert!(self.policy.is_none(), "the plain path has no policy");
        match self.remove_plain(ticket) {
            None => Outcome::new(value, false),
            Some(flight) => match flight.publish(Ok(value)) {
                Ok(value) => Outcome::new(T::clone(value), true),
                _ => unreachable!("the flight keeps the value it was given"),
            },
        }
    }

    /// Removes the slot of flight `ticket`, in a group without policies
    /// (no memo to write), and returns its followers' state, if any joined.
    /// The key drops here, after the lock.
    #[inline]
    fn remove_plain(&self, ticket: Ticket) -> Option<Arc<F>> {
        let slot = self.table.lock(ticket.hash).remove(ticket.hash, ticket.id);
        debug_assert!(slot.is_some(), "only the driver removes a running flight");
        slot.and_then(|slot| slot.flight)
    }

    /// A follower of `flight` leaves before its end (dropped, or past its
    /// deadline). Returns work that nobody is left to run, which the caller
    /// hands to its spawner (`detach`) or drops.
    pub(crate) fn leave(
        &self,
        following: &Following<F>,
        waiter: F::Waiter,
        detach: bool,
    ) -> Option<F::Work> {
        self.gauge(Gauge::Waiters, -1);
        let Ticket { hash, id } = following.ticket;
        let mut table = self.table.lock(hash);
        let Some(slot) = table.get_mut(hash, id) else {
            // Ended: publishing took every waiter.
            return None;
        };
        let last = slot.waiters == 0;
        slot.waiters = slot.waiters.saturating_sub(1);
        match following.flight.leave(waiter, last) {
            Left::Pass(heir) => {
                drop(table);
                if let Some(heir) = heir {
                    heir.wake();
                }
                None
            }
            Left::Retry => {
                let removed = table.remove(hash, id);
                drop(table);
                self.gauge(Gauge::Flights, -1);
                drop(removed);
                None
            }
            Left::Orphan(work) => self.orphaned(table, following.ticket, work, detach),
        }
    }

    /// The driver of flight `ticket` left before its work ended: the work
    /// goes to a follower, or, with none left, back to the caller to detach
    /// (returned) or is cancelled.
    pub(crate) fn abandon(&self, ticket: Ticket, work: F::Work, detach: bool) -> Option<F::Work> {
        let Ticket { hash, id } = ticket;
        let mut table = self.table.lock(hash);
        let Some(slot) = table.get_mut(hash, id) else {
            debug_assert!(false, "a driven flight keeps its slot");
            drop(table);
            drop(work);
            return None;
        };
        if slot.waiters == 0 {
            return self.orphaned(table, ticket, work, detach);
        }
        slot.waiters -= 1;
        let Some(flight) = slot.flight.clone() else {
            unreachable!("a flight with followers has their state");
        };
        let heir = flight.orphan(work);
        drop(table);
        if let Some(heir) = heir {
            heir.wake();
        }
        None
    }

    /// Flight `ticket` lost its last caller while its work was unfinished:
    /// with `detach`, the flight stays, with the detached driver as its one
    /// caller, and the work is returned to be spawned; otherwise it is
    /// cancelled: its slot leaves at once and the work is dropped once the
    /// lock is released.
    fn orphaned(
        &self,
        mut table: MutexGuard<'_, Table<K, Arc<F>>>,
        ticket: Ticket,
        work: F::Work,
        detach: bool,
    ) -> Option<F::Work> {
        if detach {
            if let Some(slot) = table.get_mut(ticket.hash, ticket.id) {
                slot.waiters = 0;
            }
            return Some(work);
        }
        let removed = table.remove(ticket.hash, ticket.id);
        drop(table);
        self.count(Event::Cancellation);
        self.gauge(Gauge::Flights, -1);
        drop(removed);
        drop(work);
        None
    }

    /// Forgets the live flight for `key`; returns whether there was one.
    pub(crate) fn forget<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        self.table.lock(hash).forget(hash, key)
    }

    /// Whether a live flight for `key` is in progress.
    pub(crate) fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        self.table.lock(hash).contains(hash, key)
    }

    /// The followers of the live flight for `key`.
    pub(crate) fn waiters<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let table = self.table.lock(hash);
        table
            .live(hash, key)
            .map_or(0, |slot| slot.waiters as usize)
    }

    /// Drops the memo's value for `key` and forgets its live flight.
    pub(crate) fn invalidate<Q>(&self, key: &Q) -> bool
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
            .map(|memo| memo.remove(key));
        drop(table);
        forgot || removed.is_some_and(|removed| !removed.is_empty())
    }

    /// Records the span of flight `ticket` in its slot, for its followers'
    /// spans to follow from.
    #[cfg(feature = "tracing")]
    pub(crate) fn record_span(&self, ticket: Ticket, span: tracing::Id) {
        if let Some(slot) = self.table.lock(ticket.hash).get_mut(ticket.hash, ticket.id) {
            slot.span = Some(span);
        }
    }
}

/// Whether a caller that `accepts` these errors can take `value`.
#[inline]
fn takes<T>(value: &Returned<T>, accepts: Accepts) -> bool {
    match value {
        Ok(_) => true,
        Err(error) => accepts(error),
    }
}

/// A memoised `value` as a caller receives it.
#[inline]
pub(crate) fn answer<T>(value: Returned<T>, source: Source) -> Received<T> {
    match value {
        Ok(value) => Ok(Outcome::from(value, true, source)),
        Err(error) => Err(Stop::Error(error)),
    }
}
