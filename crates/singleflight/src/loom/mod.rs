// Switches between std's primitives and loom's model-checked ones, so the
// very code that ships is what the loom models explore. Build with
// `RUSTFLAGS="--cfg singleflight_loom"` to get the loom flavour.
//
// Poisoning is ignored on purpose: no user code runs while one of the
// group's locks is held except `Hash` and `Eq` on keys, and the table stays
// consistent when they panic, so a poisoned lock carries no broken invariant.

#[cfg(not(singleflight_loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
}

#[cfg(singleflight_loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
}

use sync::{Condvar, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison (see the note at the top of this file).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar`, ignoring poison.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar` for at most `timeout`, ignoring poison. May return early.
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}
