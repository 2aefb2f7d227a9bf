// A flight's shared state in the blocking group: where followers sleep until
// the leader publishes.
//
// Invariants:
// - `state` goes from `Running` to `Done` exactly once, under its lock, and is
//   followed by `notify_all`; a follower checks it under the same lock before
//   each wait, so no wake-up is lost.
// - With `ErrorPolicy::RetryOnce` it may first go `Running` -> `Retry` (the
//   leader's work failed and it left) -> `Running` (one follower claimed the
//   retry, under the lock, so exactly one does) -> `Done`.
// - The value is published in an `Arc` so followers clone `T` after the lock
//   is released: user `Clone` code never runs under a lock, and a panicking
//   `Clone` hurts only the caller it ran for.

use std::time::Instant;

use crate::loom::sync::{Condvar, Mutex};
use crate::loom::{lock, wait, wait_timeout};
use crate::settle::{Publish, Published};

enum State<T> {
    Running,
    /// The work failed; the first follower to see this runs the retry.
    Retry,
    Done(Published<T>),
}

pub(crate) struct Flight<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// How a wait with a deadline ended.
pub(crate) enum Waited<T> {
    Ended(Published<T>),
    /// This caller claimed the retry and must now run its own work.
    Claimed,
    TimedOut,
}

impl<T> Flight<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::Running),
            ready: Condvar::new(),
        }
    }

    /// Sleeps until the flight has ended (plain path: no retry, no deadline).
    pub(crate) fn wait(&self) -> Published<T> {
        let mut guard = lock(&self.state);
        loop {
            if let State::Done(result) = &*guard {
                return result.clone();
            }
            guard = wait(&self.ready, guard);
        }
    }

    /// Sleeps until the flight has ended, a retry is up for claiming, or
    /// `deadline` has passed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Waited<T> {
        let mut guard = lock(&self.state);
        loop {
            match &*guard {
                State::Done(result) => return Waited::Ended(result.clone()),
                State::Retry => {
                    *guard = State::Running;
                    return Waited::Claimed;
                }
                State::Running => {}
            }
            guard = match deadline {
                None => wait(&self.ready, guard),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Waited::TimedOut;
                    }
                    wait_timeout(&self.ready, guard, deadline - now)
                }
            };
        }
    }

    /// The leader's work failed: let one follower run a retry.
    pub(crate) fn open_retry(&self) {
        *lock(&self.state) = State::Retry;
        self.ready.notify_all();
    }

    /// Whether a retry is open and nobody has claimed it yet.
    pub(crate) fn retry_unclaimed(&self) -> bool {
        matches!(*lock(&self.state), State::Retry)
    }
}

impl<T> Publish<T> for Flight<T> {
    fn publish(&self, result: Published<T>) {
        *lock(&self.state) = State::Done(result);
        self.ready.notify_all();
    }
}
