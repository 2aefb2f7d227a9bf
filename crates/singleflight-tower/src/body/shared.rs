// One upstream body read by every reader of a flight at its own pace, from
// the first byte, with no background task: the newest bytes in memory (the
// window), the older ones in an unlinked spill file.
//
// Invariants, all under `SharedBody::state`'s lock:
// - `log` holds chunks `base .. base + log.len()` of the upstream body, in
//   order; chunk `base` starts at byte `base_offset`. A chunk's index never
//   changes meaning.
// - `buffered` is the sum of the lengths of the chunks in `log`. After every
//   append, chunks leave the front while `buffered > window` and more than
//   one chunk is left (the newest chunk is always kept whole).
// - `spill` says where bytes `0 .. base_offset` are: `Unused` only while
//   `base_offset == 0`; `Active(file)`: all of them are in `file`; `Gone` or
//   `Failed`: none are kept any more (the cap was reached, spilling is off,
//   or the file failed), and a reader that needs one fails. The spill state
//   only moves forward: `Unused -> Active -> Gone | Failed`.
// - A reader whose `next` is `Some(i)` is at the start of chunk `i`, byte
//   `offset`; with `None` (it read from the file) `offset <= base_offset`,
//   and it goes back to the log at chunk `base` once `offset == base_offset`.
// - `source` is polled only under the lock, by whichever reader finds itself
//   at the end of the log, and never across an await. It is polled with
//   `WakeAll`'s waker, so every reader parked at the end is woken when the
//   upstream has more, whatever became of the reader that polled it: a
//   stalled or dropped reader never stalls the others. A reader behind the
//   window never parks: the file is read at once.
// - `end` is set once, when `source` ends (cleanly, with trailers or with an
//   error); `source` is dropped at that moment.
// - `settle` runs once, outside the lock, when a new reader could no longer
//   get the whole body: the body ended, its spill was lost, or the body is
//   dropped. The flight's join registration uses it.
// - Lock order: `state`, then `WakeAll::waiting`. `WakeAll::wake` takes only
//   `waiting` (an upstream may wake synchronously from inside its
//   `poll_frame`, while a reader holds `state`), and never calls a waker
//   while holding it. Such a synchronous wake calls readers' wakers while
//   `state` is held: fine for wakers that schedule (tokio, futures, smol); a
//   waker that polled its task inline would deadlock, as it would with most
//   locks.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::BoxBody;
use super::spill;
use crate::error::Error;

/// Locks `mutex`, ignoring poisoning: every critical section here leaves the
/// state consistent before anything that can panic (a user's body or waker).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs once when a body can no longer be joined from its first byte.
pub(crate) type Settle = Box<dyn FnOnce() + Send>;

/// Where a flight keeps its body, and how much of it.
#[derive(Clone, Debug)]
pub(crate) struct Keep {
    /// Bytes kept in memory.
    pub(crate) window: usize,
    /// Bytes kept on disk, at most; 0 keeps nothing there.
    pub(crate) spill_max: u64,
    /// Where the spill file is made; `None`: the system's temporary directory.
    pub(crate) spill_dir: Option<Arc<Path>>,
}

/// One upstream body shared by every reader of a flight.
pub(crate) struct SharedBody {
    state: Mutex<State>,
    wake_all: Arc<WakeAll>,
    /// `wake_all` as a waker, made once.
    waker: Waker,
    keep: Keep,
    /// The upstream's exact length, when it said so at the start.
    exact_len: Option<u64>,
}

struct State {
    source: Option<BoxBody>,
    log: VecDeque<Bytes>,
    base: u64,
    base_offset: u64,
    buffered: usize,
    spill: Spill,
    end: Option<End>,
    settle: Option<Settle>,
}

enum Spill {
    Unused,
    Active(Arc<File>),
    Gone,
    Failed(Arc<io::Error>),
}

enum End {
    Complete,
    Trailers(HeaderMap),
    Failed(Arc<dyn std::error::Error + Send + Sync>),
}

impl State {
    /// Whether a reader starting now would get every byte: none was lost,
    /// and the body did not fail.
    fn whole(&self) -> bool {
        let kept = self.base_offset == 0 || matches!(self.spill, Spill::Active(_));
        kept && !matches!(self.end, Some(End::Failed(_)))
    }

    /// Moves the front chunk out of the window, into the spill file when it
    /// can be kept there. Returns `settle` when the move lost bytes a new
    /// reader would need.
    fn evict_front(&mut self, keep: &Keep) -> Option<Settle> {
        let chunk = self.log.pop_front()?;
        self.buffered -= chunk.len();
        let offset = self.base_offset;
        self.base += 1;
        self.base_offset += chunk.len() as u64;
        let fits = self.base_offset <= keep.spill_max;
        let spilled = match &self.spill {
            Spill::Gone | Spill::Failed(_) => return None,
            Spill::Unused | Spill::Active(_) if !fits => Spill::Gone,
            Spill::Unused => match spill::create(keep.spill_dir.as_deref()) {
                Ok(file) => match spill::write_at(&file, &chunk, offset) {
                    Ok(()) => Spill::Active(Arc::new(file)),
                    Err(error) => Spill::Failed(Arc::new(error)),
                },
                Err(error) => Spill::Failed(Arc::new(error)),
            },
            Spill::Active(file) => match spill::write_at(file, &chunk, offset) {
                Ok(()) => return None,
                Err(error) => Spill::Failed(Arc::new(error)),
            },
        };
        let lost = !matches!(spilled, Spill::Active(_));
        // Dropping the state's handle returns the file's space once the
        // readers reading from it now are done.
        self.spill = spilled;
        if lost { self.settle.take() } else { None }
    }

    /// Records the end of the upstream body.
    fn finish(&mut self, end: End) -> Option<Settle> {
        debug_assert!(self.end.is_none(), "a body ends once");
        self.end = Some(end);
        self.source = None;
        self.settle.take()
    }
}

/// The readers parked at the end of the log, each in its own slot.
#[derive(Default)]
struct WakeAll {
    waiting: Mutex<slab::Slab<Option<Waker>>>,
}

impl WakeAll {
    fn park(&self, slot: usize, waker: &Waker) {
        let mut waiting = lock(&self.waiting);
        if let Some(parked) = waiting.get_mut(slot) {
            match parked {
                Some(old) if old.will_wake(waker) => {}
                _ => *parked = Some(waker.clone()),
            }
        }
    }

    fn wake_parked(&self) {
        let wakers: Vec<Waker> = lock(&self.waiting)
            .iter_mut()
            .filter_map(|(_, parked)| parked.take())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_parked();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_parked();
    }
}

impl SharedBody {
    /// Shares `source`, keeping what `keep` says; `settle` runs once when a
    /// new reader could no longer get the whole body.
    pub(crate) fn new(source: BoxBody, keep: Keep, settle: Option<Settle>) -> Self {
        let exact_len = source.size_hint().exact();
        let wake_all = Arc::new(WakeAll::default());
        let ended = source.is_end_stream();
        let mut state = State {
            source: Some(source),
            log: VecDeque::new(),
            base: 0,
            base_offset: 0,
            buffered: 0,
            spill: Spill::Unused,
            end: None,
            settle,
        };
        if ended {
            // Nothing to wait for (a HEAD response, an empty body): nobody
            // needs to join it.
            if let Some(settle) = state.finish(End::Complete) {
                settle();
            }
        }
        Self {
            state: Mutex::new(state),
            waker: Waker::from(Arc::clone(&wake_all)),
            wake_all,
            keep,
            exact_len,
        }
    }

    /// Whether a reader that starts now gets the whole body from memory:
    /// its exact length was announced and fits the window, and it has not
    /// failed.
    pub(crate) fn replayable(&self) -> bool {
        let fits = self
            .exact_len
            .is_some_and(|len| len <= self.keep.window as u64);
        fits && !matches!(lock(&self.state).end, Some(End::Failed(_)))
    }

    /// The body's length, when the upstream announced it.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        self.exact_len
    }

    /// Whether the upstream body is still arriving.
    pub(crate) fn streaming(&self) -> bool {
        lock(&self.state).end.is_none()
    }

    /// A reader from the first byte. It fails at once if that byte is no
    /// longer kept.
    pub(crate) fn reader(self: &Arc<Self>) -> Reader {
        let slot = lock(&self.wake_all.waiting).insert(None);
        Reader {
            body: Arc::clone(self),
            at: At {
                next: Some(0),
                offset: 0,
                slot,
                done: false,
            },
        }
    }

    /// Whether a request that arrives now may join the body: it is still
    /// streaming, and a reader from the first byte would get every byte.
    pub(crate) fn joinable(&self) -> bool {
        let state = lock(&self.state);
        state.end.is_none() && state.whole()
    }

    /// A reader from the first byte, if it would get every byte: for a
    /// waiter other than the one whose request fetched the body.
    pub(crate) fn join(self: &Arc<Self>) -> Option<Reader> {
        let whole = lock(&self.state).whole();
        // Checked apart from making the reader: a body that loses bytes in
        // between fails this reader with an error, never silently.
        whole.then(|| self.reader())
    }
}

impl Drop for SharedBody {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(settle) = state.settle.take() {
            settle();
        }
    }
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("SharedBody")
            .field("base", &state.base)
            .field("base_offset", &state.base_offset)
            .field("chunks", &state.log.len())
            .field("buffered", &state.buffered)
            .field("spilled", &matches!(state.spill, Spill::Active(_)))
            .field("ended", &state.end.is_some())
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// One reader's view of a [`SharedBody`].
pub(crate) struct Reader {
    body: Arc<SharedBody>,
    at: At,
}

/// Where a reader is.
struct At {
    /// The index of the next chunk it returns, when it reads from the log.
    next: Option<u64>,
    /// The bytes it returned.
    offset: u64,
    /// Its slot in `WakeAll`.
    slot: usize,
    /// It returned the end (or an error).
    done: bool,
}

impl At {
    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    fn data(
        &mut self,
        chunk: Bytes,
        next: Option<u64>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.next = next;
        self.offset += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl Reader {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.at.done {
            return Poll::Ready(None);
        }
        let body = &*self.body;
        let state = lock(&body.state);
        if self.at.offset < state.base_offset {
            return behind(body, state, &mut self.at);
        }
        let index = self.at.next.unwrap_or(state.base);
        debug_assert!(
            index >= state.base,
            "a reader in the window is at a kept chunk"
        );
        let position = usize::try_from(index - state.base).unwrap_or(usize::MAX);
        if let Some(chunk) = state.log.get(position) {
            let chunk = chunk.clone();
            drop(state);
            return self.at.data(chunk, Some(index + 1));
        }
        self.at.next = Some(index);
        pull(body, state, &mut self.at, cx)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.at.done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.body.exact_len {
            Some(len) => SizeHint::with_exact(len.saturating_sub(self.at.offset)),
            None => SizeHint::default(),
        }
    }
}

/// Behind the window: the next bytes come from the spill file, read
/// without the lock, or the reader fails.
#[inline(never)]
fn behind(
    body: &SharedBody,
    state: MutexGuard<'_, State>,
    at: &mut At,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    let file = match &state.spill {
        Spill::Active(file) => Arc::clone(file),
        Spill::Failed(error) => return at.fail(Error::Spill(Arc::clone(error))),
        Spill::Unused | Spill::Gone => {
            return at.fail(Error::FellBehind {
                window: body.keep.window,
                spill_max: body.keep.spill_max,
            });
        }
    };
    let len = usize::try_from(state.base_offset - at.offset)
        .unwrap_or(usize::MAX)
        .min(spill::READ_CHUNK);
    drop(state);
    match spill::read_at(&file, at.offset, len) {
        Ok(chunk) => at.data(chunk, None),
        Err(error) => at.fail(Error::Spill(Arc::new(error))),
    }
}

/// At the end of the log: pulls the next frame from the upstream, or
/// reports the end. Out of line, so that reading what is already in the log
/// stays short.
#[inline(never)]
fn pull<'a>(
    body: &'a SharedBody,
    mut state: MutexGuard<'a, State>,
    at: &mut At,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    loop {
        if let Some(end) = &state.end {
            at.done = true;
            return Poll::Ready(match end {
                End::Complete => None,
                End::Trailers(trailers) => Some(Ok(Frame::trailers(trailers.clone()))),
                End::Failed(source) => Some(Err(Error::Upstream(Arc::clone(source)))),
            });
        }
        // Park before polling, so a wake from the upstream is never lost.
        body.wake_all.park(at.slot, cx.waker());
        let mut upstream_cx = Context::from_waker(&body.waker);
        let polled = match state.source.as_mut() {
            Some(source) => Pin::new(source).poll_frame(&mut upstream_cx),
            // Unreachable by the invariants (`end` is set when `source`
            // goes); end cleanly rather than hang.
            None => Poll::Ready(None),
        };
        let settle = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => state.finish(End::Complete),
            Poll::Ready(Some(Err(error))) => state.finish(End::Failed(Arc::from(error))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    let index = state.base + state.log.len() as u64;
                    debug_assert_eq!(at.next, Some(index), "only a reader at the end pulls");
                    state.buffered += chunk.len();
                    state.log.push_back(chunk.clone());
                    let mut settle = None;
                    while state.buffered > body.keep.window && state.log.len() > 1 {
                        settle = settle.or(state.evict_front(&body.keep));
                    }
                    drop(state);
                    run(settle);
                    body.wake_all.wake_parked();
                    return at.data(chunk, Some(index + 1));
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => state.finish(End::Trailers(trailers)),
                    // Any other kind of frame is skipped.
                    Err(_) => continue,
                },
            },
        };
        // The body ended: wake the others (without our lock), then
        // report the end from the top of the loop.
        drop(state);
        run(settle);
        body.wake_all.wake_parked();
        state = lock(&body.state);
    }
}

/// Runs a `settle` taken out of the state, after its lock was released.
fn run(settle: Option<Settle>) {
    if let Some(settle) = settle {
        settle();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let parked = {
            let mut waiting = lock(&self.body.wake_all.waiting);
            waiting.try_remove(self.at.slot).flatten()
        };
        // Dropped outside the lock: a waker's drop is user code.
        drop(parked);
    }
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("next", &self.at.next)
            .field("offset", &self.at.offset)
            .field("done", &self.at.done)
            .finish_non_exhaustive()
    }
}
