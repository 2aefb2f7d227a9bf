// The body of a coalesced response: one upstream body, read by every waiter
// of the flight at its own pace, with no background task.
//
// Invariants, all under `SharedBody::state`'s lock:
// - `log` holds chunks `base .. base + log.len()` of the upstream body, in
//   order; a chunk's index never changes meaning. A reader's `next` is the
//   index of the next chunk it returns.
// - `buffered` is the sum of the lengths of the chunks in `log`. After every
//   append, chunks are dropped from the front while `buffered > max_buffer`
//   and more than one chunk is left; a reader whose `next` is below `base`
//   then fails with `Error::FellBehind`, never with a clean short end.
// - `source` is polled only under the lock, by whichever reader finds itself
//   at the end of the log, and never across an await. It is polled with
//   `WakeAll`'s waker, so every reader parked in `Waiting` is woken when the
//   upstream has more, whatever became of the reader that polled it: a
//   stalled or dropped reader never stalls the others.
// - `end` is set once, when `source` ends (cleanly, with trailers or with an
//   error); `source` is dropped at that moment.
// - Lock order: `state`, then `Waiting`'s lock. `WakeAll::wake` takes only
//   `Waiting`'s lock (an upstream may wake synchronously from inside its
//   poll, while `state` is held) and calls wakers after releasing it. Such a
//   synchronous wake calls readers' wakers while `state` is held: fine for
//   wakers that schedule (tokio, futures, smol); a waker that polled its
//   task inline would deadlock, as it would with most locks.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;

use super::error::{BoxError, Error};

/// An upstream body with its data turned into `Bytes` and its error boxed.
pub(crate) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes an upstream body.
pub(crate) fn box_body<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Locks `mutex`, ignoring poisoning: every critical section here leaves the
/// state consistent before anything that can panic (a user's body or waker).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One upstream body shared by every waiter of a flight.
pub(crate) struct SharedBody {
    state: Mutex<State>,
    wake_all: Arc<WakeAll>,
    /// `wake_all` as a waker, made once.
    waker: Waker,
    max_buffer: usize,
    /// The upstream's exact length, when it said so at the start.
    exact_len: Option<u64>,
}

struct State {
    source: Option<BoxBody>,
    log: VecDeque<Bytes>,
    base: u64,
    buffered: usize,
    end: Option<End>,
}

enum End {
    Complete,
    Trailers(HeaderMap),
    Failed(Arc<dyn std::error::Error + Send + Sync>),
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
    pub(crate) fn new(source: BoxBody, max_buffer: usize) -> Self {
        let exact_len = source.size_hint().exact();
        let wake_all = Arc::new(WakeAll::default());
        Self {
            state: Mutex::new(State {
                source: Some(source),
                log: VecDeque::new(),
                base: 0,
                buffered: 0,
                end: None,
            }),
            waker: Waker::from(Arc::clone(&wake_all)),
            wake_all,
            max_buffer,
            exact_len,
        }
    }

    /// Whether a reader that starts now gets the whole body: its exact
    /// length was announced and fits the buffer, and it has not failed.
    pub(crate) fn replayable(&self) -> bool {
        let fits = self
            .exact_len
            .is_some_and(|len| len <= self.max_buffer as u64);
        fits && !matches!(lock(&self.state).end, Some(End::Failed(_)))
    }

    /// A reader from the first byte.
    pub(crate) fn reader(self: &Arc<Self>) -> Reader {
        let slot = lock(&self.wake_all.waiting).insert(None);
        Reader {
            body: Arc::clone(self),
            at: At {
                next: 0,
                read: 0,
                slot,
                done: false,
            },
        }
    }
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("SharedBody")
            .field("base", &state.base)
            .field("chunks", &state.log.len())
            .field("buffered", &state.buffered)
            .field("ended", &state.end.is_some())
            .field("max_buffer", &self.max_buffer)
            .finish_non_exhaustive()
    }
}

/// One waiter's view of a [`SharedBody`].
pub(crate) struct Reader {
    body: Arc<SharedBody>,
    at: At,
}

/// Where a reader is.
struct At {
    /// The index of the next chunk it returns.
    next: u64,
    /// The bytes it returned.
    read: u64,
    /// Its slot in `WakeAll`.
    slot: usize,
    /// It returned the end (or an error).
    done: bool,
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
        if self.at.next < state.base {
            self.at.done = true;
            return Poll::Ready(Some(Err(Error::FellBehind {
                max_buffer: body.max_buffer,
            })));
        }
        let offset = usize::try_from(self.at.next - state.base).unwrap_or(usize::MAX);
        if let Some(chunk) = state.log.get(offset) {
            let chunk = chunk.clone();
            drop(state);
            self.at.next += 1;
            self.at.read += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        pull(body, state, &mut self.at, cx)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.at.done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.body.exact_len {
            Some(len) => SizeHint::with_exact(len.saturating_sub(self.at.read)),
            None => SizeHint::default(),
        }
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
        let Some(source) = state.source.as_mut() else {
            // Unreachable by the invariants (`end` is set when `source`
            // goes); end cleanly rather than hang.
            state.end = Some(End::Complete);
            continue;
        };
        let mut upstream_cx = Context::from_waker(&body.waker);
        let polled = Pin::new(source).poll_frame(&mut upstream_cx);
        match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                state.end = Some(End::Complete);
                state.source = None;
            }
            Poll::Ready(Some(Err(error))) => {
                state.end = Some(End::Failed(Arc::from(error)));
                state.source = None;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    state.buffered += chunk.len();
                    state.log.push_back(chunk.clone());
                    while state.buffered > body.max_buffer && state.log.len() > 1 {
                        if let Some(old) = state.log.pop_front() {
                            state.buffered -= old.len();
                            state.base += 1;
                        }
                    }
                    drop(state);
                    at.next += 1;
                    at.read += chunk.len() as u64;
                    body.wake_all.wake_parked();
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        state.end = Some(End::Trailers(trailers));
                        state.source = None;
                    }
                    // Any other kind of frame is skipped.
                    Err(_) => continue,
                },
            },
        }
        // The body ended: wake the others (without our lock), then
        // report the end from the top of the loop.
        drop(state);
        body.wake_all.wake_parked();
        state = lock(&body.state);
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
            .field("read", &self.at.read)
            .field("done", &self.at.done)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body of [`Coalesce`](super::Coalesce).
    ///
    /// For a request that was not coalesced it is the inner service's body,
    /// unchanged but for its error becoming an [`Error`]. For a coalesced one it reads the body the flight shares,
    /// from the first byte, as fast as this waiter's client takes it: it
    /// yields exactly the upstream's bytes, or fails with an [`Error`]
    /// (upstream failure, or [`Error::FellBehind`]), never a short clean end.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Empty, Full};
    /// use singleflight_tower::{Coalesce, CoalescedBody};
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), singleflight_tower::Error> {
    /// let service = Coalesce::new(tower::service_fn(|_req: http::Request<Empty<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
    /// }));
    /// let response = service.oneshot(http::Request::new(Empty::new())).await.unwrap();
    /// let body: CoalescedBody<Full<Bytes>> = response.into_body();
    /// assert_eq!(body.collect().await?.to_bytes(), "hi");
    /// # Ok(())
    /// # }
    /// ```
    pub struct CoalescedBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        // The error conversion is a function chosen where `B::Error:
        // Into<BoxError>` is known, so that the `Body` impl needs no such
        // bound: with `B::Error = BoxError` that bound trips rustc's check
        // of `Send` for async blocks holding the body ("implementation of
        // `From` is not general enough").
        Inner { #[pin] body: B, map_err: fn(B::Error) -> Error },
        Boxed { body: BoxBody },
        Shared { reader: Reader },
        Full { data: Option<Bytes> },
    }
}

impl<B: Body> CoalescedBody<B> {
    pub(crate) fn inner(body: B) -> Self
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Inner {
                body,
                map_err: Error::upstream::<B::Error>,
            },
        }
    }

    pub(crate) fn boxed(body: BoxBody) -> Self {
        Self {
            kind: Kind::Boxed { body },
        }
    }

    pub(crate) fn shared(reader: Reader) -> Self {
        Self {
            kind: Kind::Shared { reader },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full { data: Some(data) },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CoalescedBody<B> {
    type Data = Bytes;
    type Error = Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, map_err } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(map_err(error)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            other => poll_coalesced(other, cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
            Kind::Shared { reader } => reader.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
            Kind::Shared { reader } => reader.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

/// Polls the bodies the layer makes (the inner service's own is polled in
/// line, in `poll_frame`); out of line, so that what is inlined where bodies
/// are read stays small.
#[inline(never)]
fn poll_coalesced<B: Body<Data = Bytes>>(
    kind: KindProj<'_, B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    match kind {
        KindProj::Inner { .. } => unreachable!("the inner body is polled in line"),
        KindProj::Boxed { body } => Pin::new(body)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Error::upstream))),
        KindProj::Shared { reader } => reader.poll_frame(cx),
        KindProj::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
    }
}

impl<B: Body> fmt::Debug for CoalescedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Boxed { .. } => "Private",
            Kind::Shared { .. } => "Shared",
            Kind::Full { .. } => "Full",
        };
        f.debug_tuple("CoalescedBody").field(&kind).finish()
    }
}
