// Which flights the current thread is running the work of, so that a call
// for the same key from inside that work panics at once instead of waiting
// for itself forever.
//
// A flight is named by its shard's address and its id (ids are unique within
// a shard). The blocking group marks the thread while its work runs; the
// async group while its work is polled, so a call awaited inside the work
// is caught on its first poll, whichever caller drives the work. Work that
// hands the call to another thread or task (and waits for it) is not seen.

use std::cell::Cell;

/// How many nested flights a thread keeps track of: the outermost ones,
/// with no allocation. A call nested deeper than this inside works of the
/// same thread is not checked.
const DEPTH: usize = 8;

/// How deep the thread is in works of flights, and the outermost of them.
struct Frames {
    depth: Cell<usize>,
    flights: [Cell<(usize, u64)>; DEPTH],
}

#[cfg(not(singleflight_loom))]
thread_local! {
    static RUNNING: Frames = const {
        Frames {
            depth: Cell::new(0),
            flights: [const { Cell::new((0, 0)) }; DEPTH],
        }
    };
}

// Loom runs a model's threads on one OS thread: their marks must be loom's
// thread locals, or one would see another's.
#[cfg(singleflight_loom)]
loom::thread_local! {
    static RUNNING: Frames = Frames {
        depth: Cell::new(0),
        flights: [const { Cell::new((0, 0)) }; DEPTH],
    };
}

/// Marks the current thread as running flight `(place, id)` until dropped.
pub(crate) struct Running(());

impl Running {
    #[inline]
    pub(crate) fn enter(place: usize, id: u64) -> Self {
        RUNNING.with(|frames| {
            let depth = frames.depth.get();
            if let Some(frame) = frames.flights.get(depth) {
                frame.set((place, id));
            }
            frames.depth.set(depth + 1);
        });
        Self(())
    }
}

impl Drop for Running {
    #[inline]
    fn drop(&mut self) {
        RUNNING.with(|frames| {
            let depth = frames.depth.get();
            debug_assert!(depth > 0, "marks nest");
            frames.depth.set(depth.saturating_sub(1));
        });
    }
}

/// Whether the current thread is running flight `(place, id)`.
pub(crate) fn is_running(place: usize, id: u64) -> bool {
    RUNNING.with(|frames| {
        let depth = frames.depth.get().min(DEPTH);
        frames.flights[..depth]
            .iter()
            .any(|f| f.get() == (place, id))
    })
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
