// A flight's shared state in the async group.
//
// The work future is owned by exactly one place at a time: the caller that
// drives it (the leader, or a follower promoted after the leader was dropped),
// a detached task, or `orphan` here while it waits for a follower to pick it
// up. Whoever owns it polls it with its own waker, without any lock.
//
// Invariants, all under `state`'s lock:
// - `callers` counts the flight's live callers: the driver (even while the
//   work sits in `orphan`) plus every follower that joined and has neither
//   returned nor been dropped. It reaching 0 means the flight is abandoned.
// - `orphan` is `Some` only while no caller owns the work; the first follower
//   polled afterwards takes it and becomes the driver.
// - `result` is set once, outside the lock; `publish` then takes the lock,
//   empties `waiters` and wakes every waker in it. A follower checks
//   `result` under the lock before it registers its waker, so it either sees
//   the result or is among the woken. It clones the value with no lock held.
// - `retry` (policy `RetryOnce`) is set when the driver's work failed and it
//   left: like `orphan`, the first follower polled afterwards clears it and
//   drives a new work of its own on the same slot.
// - Lock order: the group's table, then a flight's state.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Waker;

use slab::Slab;

use crate::loom::lock;
use crate::loom::sync::Mutex;
use crate::settle::{Publish, Published};

/// The work of a flight, boxed so it can change owner without moving.
pub(crate) type Work<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub(crate) struct Flight<T> {
    pub(crate) state: Mutex<State<T>>,
    /// What the flight ended with, kept in the flight itself.
    pub(crate) result: OnceLock<Published<T>>,
}

pub(crate) struct State<T> {
    pub(crate) callers: usize,
    /// Wakers of the followers waiting for the result.
    pub(crate) waiters: Slab<Waker>,
    pub(crate) orphan: Option<Work<T>>,
    pub(crate) retry: bool,
}

impl<T> Flight<T> {
    /// A flight as its first follower finds it: the driver and itself.
    pub(crate) fn joined() -> Self {
        Self {
            state: Mutex::new(State {
                callers: 1,
                waiters: Slab::new(),
                orphan: None,
                retry: false,
            }),
            result: OnceLock::new(),
        }
    }
}

impl<T> State<T> {
    /// Some waiter to wake so that it picks up the orphaned work.
    pub(crate) fn heir(&self) -> Option<Waker> {
        self.waiters.iter().next().map(|(_, waker)| waker.clone())
    }
}

impl<T> Publish<T> for Flight<T> {
    fn publish(&self, result: Published<T>) -> &Published<T> {
        let stored = self.result.get_or_init(|| result);
        let waiters = {
            let mut state = lock(&self.state);
            mem::take(&mut state.waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
        stored
    }
}
