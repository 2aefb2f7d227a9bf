// What drives a flight of the async group: the engine and the spawner, the
// work a caller makes and polls, and the hand-over of work whose driver was
// dropped, to a follower, to the spawner, or to nobody (cancelled).
//
// Invariants (see also `engine/mod.rs` and `flight.rs`):
// - No lock is held while user code runs (the work, `make`, `Clone`, a key's
//   or a work's `Drop`, a waker, the spawner).
// - A work is polled only by its owner, with this thread marked as running
//   its flight (`Engine::running`), so that a call for the same key awaited
//   inside it panics instead of waiting for itself.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, ready};

use super::flight::{Flight, Work};
use super::spawn::{Detached, Spawn};
use crate::engine::{Ended, Engine, ErrorObject, Following, Received, Returned, Ticket};

/// The async group's state, shared by the group's clones and its calls.
pub(crate) struct Inner<K, T, S> {
    pub(crate) engine: Engine<K, T, S, Flight<T>>,
    pub(crate) spawner: Option<StdArc<dyn Spawn>>,
}

/// Makes a flight's work from what a caller passed.
pub(crate) trait Make<T> {
    fn make(self) -> Work<T>;
}

/// The maker of infallible work (`call`).
pub(crate) struct Plain<F>(pub(crate) F);

impl<T, F, Fut> Make<T> for Plain<F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    fn make(self) -> Work<T> {
        Box::pin(Returning { work: (self.0)() })
    }
}

/// The maker of fallible work (`try_call`), whose error goes behind an `Arc`.
pub(crate) struct Fallible<F, E>(pub(crate) F, pub(crate) PhantomData<fn() -> E>);

impl<T, E, F, Fut> Make<T> for Fallible<F, E>
where
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    fn make(self) -> Work<T> {
        Box::pin(Failing {
            work: (self.0)(),
            _error: PhantomData,
        })
    }
}

pin_project_lite::pin_project! {
    /// Infallible work, as the engine takes it.
    struct Returning<Fut> {
        #[pin]
        work: Fut,
    }
}

impl<T, Fut: Future<Output = T>> Future for Returning<Fut> {
    type Output = Returned<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Returned<T>> {
        self.project().work.poll(cx).map(Ok)
    }
}

pin_project_lite::pin_project! {
    /// Fallible work, as the engine takes it: its error behind an `Arc`.
    struct Failing<Fut, E> {
        #[pin]
        work: Fut,
        _error: PhantomData<fn() -> E>,
    }
}

impl<T, E, Fut> Future for Failing<Fut, E>
where
    E: Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    type Output = Returned<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Returned<T>> {
        self.project()
            .work
            .poll(cx)
            .map(|result| result.map_err(|error| StdArc::new(error) as ErrorObject))
    }
}

/// The work of a flight, owned by the caller that drives it.
pub(crate) struct Lead<T> {
    pub(crate) work: Work<T>,
    pub(crate) ticket: Ticket,
}

impl<T> Lead<T> {
    /// Polls the work, catching a panic as the flight's end.
    pub(crate) fn poll_work<K, S>(
        &mut self,
        engine: &Engine<K, T, S, Flight<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<Ended<T>> {
        let _running = engine.running(self.ticket);
        poll_caught(&mut self.work, cx)
    }
}

/// Polls `work`, catching a panic.
pub(crate) fn poll_caught<T>(work: &mut Work<T>, cx: &mut Context<'_>) -> Poll<Ended<T>> {
    match panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(returned)) => Poll::Ready(Ended::Returned(returned)),
        Err(payload) => Poll::Ready(Ended::Panicked(payload)),
    }
}

/// Calls `make`, catching a panic.
pub(crate) fn make_caught<T>(make: impl Make<T>) -> std::thread::Result<Work<T>> {
    panic::catch_unwind(AssertUnwindSafe(|| make.make()))
}

impl<K, T, S> Inner<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Makes the work of flight `ticket`; if `make` panics, ends the flight
    /// with that panic.
    pub(crate) fn lead(&self, make: impl Make<T>, ticket: Ticket) -> Result<Lead<T>, Received<T>> {
        #[cfg(feature = "tracing")]
        let (make, span) = {
            // The flight's span, recorded in its slot for the waiters to
            // follow from. A waiter that joins before it is recorded (the
            // instant between the slot's insertion and this) is not linked.
            let span = tracing::info_span!("singleflight.flight", flight.id = ticket.id);
            if let Some(id) = span.id() {
                self.engine.record_span(ticket, id);
            }
            (make, span)
        };
        #[cfg(feature = "tracing")]
        let made = {
            use tracing::Instrument as _;
            span.in_scope(|| make_caught(make))
                .map(|work| Box::pin(work.instrument(span)) as Work<T>)
        };
        #[cfg(not(feature = "tracing"))]
        let made = make_caught(make);
        match made {
            Ok(work) => Ok(Lead { work, ticket }),
            Err(payload) => Err(self.engine.finish(ticket, Ended::Panicked(payload))),
        }
    }

    /// The driver of flight `lead` was dropped before the work ended: hand
    /// the work to a waiting caller, or to the spawner, or cancel it.
    ///
    /// `may_detach` is false for a detached driver, which is only dropped when
    /// its executor shuts down: handing it back would loop.
    pub(crate) fn abandon(self: &StdArc<Self>, lead: Lead<T>, may_detach: bool) {
        let Lead { work, ticket } = lead;
        let detach = may_detach && self.spawner.is_some();
        if let Some(work) = self.engine.abandon(ticket, work, detach) {
            self.detach(Lead { work, ticket });
        }
    }

    /// A follower was dropped, or left at its deadline, before its flight
    /// ended.
    pub(crate) fn leave(
        self: &StdArc<Self>,
        following: &Following<Flight<T>>,
        waiter: Option<usize>,
    ) {
        let detach = self.spawner.is_some();
        if let Some(work) = self.engine.leave(following, waiter, detach) {
            self.detach(Lead {
                work,
                ticket: following.ticket,
            });
        }
    }

    /// Starts the background refresh, flight `ticket`, of a stale value.
    pub(crate) fn refresh(self: &StdArc<Self>, make: impl Make<T>, ticket: Ticket) {
        // A panic of `make` ended the flight; nobody waits for it.
        if let Ok(lead) = self.lead(make, ticket) {
            self.detach(lead);
        }
    }

    /// Runs `lead` to completion on the spawner.
    fn detach(self: &StdArc<Self>, lead: Lead<T>) {
        match &self.spawner {
            Some(spawner) => spawner.spawn(Detached::new(DetachedLead {
                inner: StdArc::clone(self),
                lead: Some(lead),
            })),
            None => unreachable!("work is detached only with a spawner"),
        }
    }
}

/// A flight run by the spawner after its every caller was dropped.
struct DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    inner: StdArc<Inner<K, T, S>>,
    lead: Option<Lead<T>>,
}

impl<K, T, S> Future for DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(lead) = this.lead.as_mut() else {
            return Poll::Ready(());
        };
        let ended = ready!(lead.poll_work(&this.inner.engine, cx));
        if let Some(lead) = this.lead.take() {
            let ticket = lead.ticket;
            drop(lead);
            // Nobody to re-raise a panic for: followers get it, the hook printed it.
            drop(this.inner.engine.finish(ticket, ended));
        }
        Poll::Ready(())
    }
}

impl<K, T, S> Drop for DetachedLead<K, T, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let Some(lead) = self.lead.take() {
            self.inner.abandon(lead, false);
        }
    }
}
