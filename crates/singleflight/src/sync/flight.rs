// A flight's shared state in the blocking group: where followers sleep until
// the flight ends.
//
// Invariants:
// - `result` is set exactly once, by `publish`, which then takes `stage`'s
//   lock and calls `notify_all`; a follower that waits on the condvar checks
//   `result` under that lock before each wait, so no wake-up is lost.
//   Followers of a group without policies instead block on the `OnceLock`
//   itself, which wakes them all at once without their re-taking a lock.
// - With `ErrorPolicy::RetryOnce` it may first go `Running` -> `Retry` (the
//   driver's work failed and it left; set under the table lock) ->
//   `Running` (one follower claimed the retry, under `stage`'s lock, so
//   exactly one does), then `result` is set.
// - The value lives in the flight (one allocation for both) and followers
//   clone it with no lock held: user `Clone` code never runs under a lock,
//   and a panicking `Clone` hurts only the caller it ran for.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Instant;

use crate::engine::{Left, Publish, Published, Rendezvous};
use crate::loom::sync::{Condvar, Mutex};
use crate::loom::{lock, wait, wait_timeout};

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Running,
    /// The work failed; the first follower to see this runs the retry.
    Retry,
}

pub(crate) struct Flight<T> {
    stage: Mutex<Stage>,
    ready: Condvar,
    result: OnceLock<Published<T>>,
}

/// How a wait ended.
pub(crate) enum Waited<'a, T> {
    Ended(&'a Published<T>),
    /// This caller claimed the retry and must now run its own work.
    Claimed,
    TimedOut,
}

impl<T> Flight<T> {
    /// Sleeps until the flight has ended (a group without policies: no
    /// retry, no deadline).
    #[cfg(not(singleflight_loom))]
    pub(crate) fn wait(&self) -> &Published<T> {
        self.result.wait()
    }

    /// Sleeps until the flight has ended, on loom's primitives: loom cannot
    /// schedule around a thread blocked in std's `OnceLock::wait`.
    #[cfg(singleflight_loom)]
    pub(crate) fn wait(&self) -> &Published<T> {
        let mut stage = lock(&self.stage);
        loop {
            if let Some(result) = self.result.get() {
                return result;
            }
            stage = wait(&self.ready, stage);
        }
    }

    /// Sleeps until the flight has ended, a retry is up for claiming, or
    /// `deadline` has passed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Waited<'_, T> {
        let mut stage = lock(&self.stage);
        loop {
            if let Some(result) = self.result.get() {
                return Waited::Ended(result);
            }
            if *stage == Stage::Retry {
                *stage = Stage::Running;
                return Waited::Claimed;
            }
            stage = match deadline {
                None => wait(&self.ready, stage),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Waited::TimedOut;
                    }
                    wait_timeout(&self.ready, stage, deadline - now)
                }
            };
        }
    }
}

impl<T> Rendezvous<T> for Flight<T> {
    type Work = Infallible;
    type Waiter = ();

    fn new() -> Self {
        Self {
            stage: Mutex::new(Stage::Running),
            ready: Condvar::new(),
            result: OnceLock::new(),
        }
    }

    fn open_retry(&self) -> Option<Waker> {
        let mut stage = lock(&self.stage);
        debug_assert_eq!(*stage, Stage::Running, "one retry per flight");
        *stage = Stage::Retry;
        self.ready.notify_all();
        None
    }

    fn orphan(&self, work: Infallible) -> Option<Waker> {
        match work {}
    }

    fn leave(&self, (): (), last: bool) -> Left<Infallible> {
        let mut stage = lock(&self.stage);
        if last && *stage == Stage::Retry {
            // Nobody is left to run the retry: the flight is over.
            *stage = Stage::Running;
            return Left::Retry;
        }
        Left::Pass(None)
    }
}

impl<T> Publish<T> for Flight<T> {
    fn publish(&self, result: Published<T>) -> &Published<T> {
        debug_assert!(self.result.get().is_none(), "a flight ends once");
        let stored = self.result.get_or_init(|| result);
        // Under the lock, so a condvar waiter is either before its check of
        // `result` (and sees it) or already waiting (and is woken).
        let _stage = lock(&self.stage);
        self.ready.notify_all();
        stored
    }
}
