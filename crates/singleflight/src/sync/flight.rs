// A flight's shared state in the blocking group: where followers sleep until
// the leader publishes.
//
// Invariants:
// - `result` is set exactly once, by `publish`, which then takes `state`'s
//   lock and calls `notify_all`; a follower that waits on the condvar checks
//   `result` under that lock before each wait, so no wake-up is lost.
//   Followers on the plain path instead block on the `OnceLock` itself,
//   which wakes them all at once without their re-taking a lock.
// - With `ErrorPolicy::RetryOnce` it may first go `Running` -> `Retry` (the
//   leader's work failed and it left) -> `Running` (one follower claimed the
//   retry, under the lock, so exactly one does), then `result` is set.
// - The value lives in the flight (one allocation for both) and followers
//   clone it with no lock held: user `Clone` code never runs under a lock,
//   and a panicking `Clone` hurts only the caller it ran for.

use std::sync::OnceLock;
use std::time::Instant;

use crate::loom::sync::{Condvar, Mutex};
use crate::loom::{lock, wait, wait_timeout};
use crate::settle::{Publish, Published};

enum State {
    Running,
    /// The work failed; the first follower to see this runs the retry.
    Retry,
}

pub(crate) struct Flight<T> {
    state: Mutex<State>,
    ready: Condvar,
    result: OnceLock<Published<T>>,
}

/// How a wait with a deadline ended.
pub(crate) enum Waited<'a, T> {
    Ended(&'a Published<T>),
    /// This caller claimed the retry and must now run its own work.
    Claimed,
    TimedOut,
}

impl<T> Flight<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::Running),
            ready: Condvar::new(),
            result: OnceLock::new(),
        }
    }

    /// Sleeps until the flight has ended (plain path: no retry, no deadline).
    #[cfg(not(singleflight_loom))]
    pub(crate) fn wait(&self) -> &Published<T> {
        self.result.wait()
    }

    /// Sleeps until the flight has ended, on loom's primitives: loom cannot
    /// schedule around a thread blocked in std's `OnceLock::wait`.
    #[cfg(singleflight_loom)]
    pub(crate) fn wait(&self) -> &Published<T> {
        let mut guard = lock(&self.state);
        loop {
            if let Some(result) = self.result.get() {
                return result;
            }
            guard = wait(&self.ready, guard);
        }
    }

    /// Sleeps until the flight has ended, a retry is up for claiming, or
    /// `deadline` has passed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Waited<'_, T> {
        let mut guard = lock(&self.state);
        loop {
            if let Some(result) = self.result.get() {
                return Waited::Ended(result);
            }
            if let State::Retry = *guard {
                *guard = State::Running;
                return Waited::Claimed;
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
    fn publish(&self, result: Published<T>) -> &Published<T> {
        let stored = self.result.get_or_init(|| result);
        // Under the lock, so a condvar waiter is either before its check of
        // `result` (and sees it) or already waiting (and is woken).
        let _state = lock(&self.state);
        self.ready.notify_all();
        stored
    }
}
