// A flight's shared state in the blocking group: where followers sleep until
// the leader publishes.
//
// Invariants:
// - `result` goes from `None` to `Some` exactly once, under its lock, and is
//   followed by `notify_all`; a follower checks it under the same lock before
//   each wait, so no wake-up is lost.
// - The value is published in an `Arc` so followers clone `T` after the lock
//   is released: user `Clone` code never runs under a lock, and a panicking
//   `Clone` hurts only the caller it ran for.

use crate::loom::sync::{Condvar, Mutex};
use crate::loom::{lock, wait};
use crate::settle::{Publish, Published};

pub(crate) struct Flight<T> {
    result: Mutex<Option<Published<T>>>,
    ready: Condvar,
}

impl<T> Flight<T> {
    pub(crate) fn new() -> Self {
        Self {
            result: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    /// Sleeps until the flight has ended.
    pub(crate) fn wait(&self) -> Published<T> {
        let mut guard = lock(&self.result);
        loop {
            if let Some(result) = &*guard {
                return result.clone();
            }
            guard = wait(&self.ready, guard);
        }
    }
}

impl<T> Publish<T> for Flight<T> {
    fn publish(&self, result: Published<T>) {
        *lock(&self.result) = Some(result);
        self.ready.notify_all();
    }
}
