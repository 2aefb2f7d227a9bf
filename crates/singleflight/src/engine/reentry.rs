// Which flights the current thread is running the work of, so that a call
// for the same key from inside that work panics at once instead of waiting
// for itself forever.
//
// A flight is named by its shard's address and its id (ids are unique within
// a shard). The blocking group marks the thread while its work runs; the
// async group while its work is polled, so a call awaited inside the work
// is caught on its first poll, whichever caller drives the work. Work that
// hands the call to another thread or task (and waits for it) is not seen.

use std::cell::RefCell;

thread_local! {
    static RUNNING: RefCell<Vec<(usize, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the current thread as running flight `(place, id)` until dropped.
pub(crate) struct Running {
    flight: (usize, u64),
}

impl Running {
    pub(crate) fn enter(place: usize, id: u64) -> Self {
        let flight = (place, id);
        RUNNING.with_borrow_mut(|running| running.push(flight));
        Self { flight }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with_borrow_mut(|running| {
            // Marks nest: ours is the last, unless work leaked one.
            if let Some(at) = running.iter().rposition(|f| *f == self.flight) {
                running.remove(at);
            }
        });
    }
}

/// Whether the current thread is running flight `(place, id)`.
pub(crate) fn is_running(place: usize, id: u64) -> bool {
    RUNNING
        .try_with(|running| running.borrow().contains(&(place, id)))
        .unwrap_or(false)
}

/// The panic of a call that would wait for its own flight.
#[track_caller]
pub(crate) fn reentered() -> ! {
    panic!(
        "singleflight: a call for a key was made from inside the work of that key's own \
         flight, and would wait for itself forever; call the work's own code directly, \
         or use another key"
    )
}
