// A flight's shared state in the async group.
//
// The work future is owned by exactly one place at a time: the caller that
// drives it (the leader, or a follower promoted after the driver was
// dropped), a detached task, or `orphan` here while it waits for a follower
// to pick it up. Whoever owns it polls it with its own waker, without any
// lock.
//
// Invariants, all under `state`'s lock (taken after the table lock, when
// both are held):
// - `orphan` is `Some` only while no caller owns the work; the first
//   follower polled afterwards takes it and becomes the driver.
// - `retry` (policy `RetryOnce`) is set, under the table lock, when the
//   driver's work failed and it left: like `orphan`, the first follower
//   polled afterwards clears it and drives a new work of its own on the
//   same flight.
// - `result` is set once, outside the lock; `publish` then takes the lock,
//   empties `waiters` and wakes every waker in it. A follower checks
//   `result` under the lock before it registers its waker, so it either sees
//   the result or is among the woken. It clones the value with no lock held.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::engine::{Left, Publish, Published, Rendezvous, Returned};
use crate::loom::lock;
use crate::loom::sync::Mutex;

/// The work of a flight, boxed so it can change owner without moving.
pub(crate) type Work<T> = Pin<Box<dyn Future<Output = Returned<T>> + Send>>;

pub(crate) struct Flight<T> {
    state: Mutex<State<T>>,
    /// What the flight ended with, kept in the flight itself.
    result: OnceLock<Published<T>>,
}

struct State<T> {
    /// Wakers of the followers waiting for the result.
    waiters: Slab<Waker>,
    orphan: Option<Work<T>>,
    retry: bool,
}

impl<T> State<T> {
    /// Some waiter to wake so that it picks up the orphaned work or the retry.
    fn heir(&self) -> Option<Waker> {
        self.waiters.iter().next().map(|(_, waker)| waker.clone())
    }
}

/// What a waiting follower found.
pub(crate) enum Waited<'a, T> {
    Ended(&'a Published<T>),
    /// The driver left; the work is ours to drive now.
    Promoted(Work<T>),
    /// The driver's work failed (`RetryOnce`): ours runs as the retry.
    Claimed,
}

impl<T> Flight<T> {
    /// Polls a follower's wait; `waiter` is where its waker is registered.
    pub(crate) fn poll_wait(
        &self,
        waiter: &mut Option<usize>,
        cx: &mut Context<'_>,
    ) -> Poll<Waited<'_, T>> {
        let mut state = lock(&self.state);
        if let Some(result) = self.result.get() {
            return Poll::Ready(Waited::Ended(result));
        }
        if let Some(work) = state.orphan.take() {
            if let Some(waiter) = waiter.take() {
                state.waiters.try_remove(waiter);
            }
            return Poll::Ready(Waited::Promoted(work));
        }
        if state.retry {
            state.retry = false;
            if let Some(waiter) = waiter.take() {
                state.waiters.try_remove(waiter);
            }
            return Poll::Ready(Waited::Claimed);
        }
        match waiter.and_then(|waiter| state.waiters.get_mut(waiter)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => *waiter = Some(state.waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<T> Rendezvous<T> for Flight<T> {
    type Work = Work<T>;
    type Waiter = Option<usize>;

    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                waiters: Slab::new(),
                orphan: None,
                retry: false,
            }),
            result: OnceLock::new(),
        }
    }

    fn open_retry(&self) -> Option<Waker> {
        let mut state = lock(&self.state);
        debug_assert!(
            !state.retry && state.orphan.is_none(),
            "the driver was running"
        );
        state.retry = true;
        state.heir()
    }

    fn orphan(&self, work: Work<T>) -> Option<Waker> {
        let mut state = lock(&self.state);
        debug_assert!(
            !state.retry && state.orphan.is_none(),
            "the driver was running"
        );
        state.orphan = Some(work);
        state.heir()
    }

    fn leave(&self, waiter: Option<usize>, last: bool) -> Left<Work<T>> {
        let mut state = lock(&self.state);
        if let Some(waiter) = waiter {
            state.waiters.try_remove(waiter);
        }
        if !last {
            // If the work (or a retry) waits for a follower to pick it up,
            // we may have been the one woken for it: pass the turn on.
            let pending = state.orphan.is_some() || state.retry;
            return Left::Pass(if pending { state.heir() } else { None });
        }
        if let Some(work) = state.orphan.take() {
            return Left::Orphan(work);
        }
        debug_assert!(
            state.retry,
            "with no caller left, the work or a retry waits"
        );
        state.retry = false;
        Left::Retry
    }
}

impl<T> Publish<T> for Flight<T> {
    fn publish(&self, result: Published<T>) -> &Published<T> {
        debug_assert!(self.result.get().is_none(), "a flight ends once");
        let stored = self.result.get_or_init(|| result);
        let waiters = mem::take(&mut lock(&self.state).waiters);
        for (_, waker) in waiters {
            waker.wake();
        }
        stored
    }
}
