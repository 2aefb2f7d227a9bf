// The futures a call returns, and how each caller drives or waits on its
// flight: `Flow` is every entry point's state machine; `Call` and `TryCall`
// shape what it ends with. See `driver.rs` for who owns the work when.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::mem;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, ready};

use super::driver::{Fallible, Inner, Lead, Make, Plain, make_caught, poll_caught};
use super::flight::{Flight, Waited, Work};
use crate::engine::{
    Accepts, Ended, Following, Joined, KeyArg, Received, Stop, received, try_result,
};
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge, Overflow};
use crate::{Outcome, Panicked, Source};

/// How a call reaches its group: borrowed from the caller's [`Group`]
/// (`call`), which costs nothing, or owned (`call_owned`), one reference
/// count, for a future that must be `'static`.
///
/// [`Group`]: super::Group
pub(crate) enum Handle<'a, K, T, S> {
    Borrowed(&'a StdArc<Inner<K, T, S>>),
    Owned(StdArc<Inner<K, T, S>>),
}

impl<K, T, S> Deref for Handle<'_, K, T, S> {
    type Target = StdArc<Inner<K, T, S>>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        match self {
            Self::Borrowed(inner) => inner,
            Self::Owned(inner) => inner,
        }
    }
}

/// A caller waiting for a flight driven by another.
struct Follow<T> {
    following: Following<Flight<T>>,
    /// Where our waker is in the flight's waiters, once registered.
    waiter: Option<usize>,
    /// This caller's wait, following from the flight's span (feature
    /// `tracing`); it ends when the wait does.
    #[cfg(feature = "tracing")]
    _span: tracing::Span,
}

impl<T> Follow<T> {
    fn new(following: Following<Flight<T>>) -> Self {
        #[cfg(feature = "tracing")]
        let _span = {
            let wait = tracing::info_span!("singleflight.wait", flight.id = following.ticket.id);
            if let Some(flight) = following.span.clone() {
                wait.follows_from(flight);
            }
            wait
        };
        Self {
            following,
            waiter: None,
            #[cfg(feature = "tracing")]
            _span,
        }
    }
}

enum Step<T> {
    /// Not polled yet: the key and `make` are in the call.
    Start,
    Lead(Lead<T>),
    /// Waiting; `make` stays in the call for a retry, or for work of its
    /// own when the flight ends with an error of another type than this
    /// caller's.
    Follow(Follow<T>),
    /// Running its own work, alone (past the waiter cap).
    Own(Work<T>),
    Done,
}

/// One call's way through its flight, for every entry point.
pub(crate) struct Flow<'a, K, Q, T, S, M>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    inner: Handle<'a, K, T, S>,
    /// Taken when the call joins or starts its flight. Kept apart from
    /// `step`, so each move of a step carries only what it needs.
    key: Option<KeyArg<'a, K, Q>>,
    /// Taken when the call runs work of its own.
    make: Option<M>,
    step: Step<T>,
    /// The errors this caller takes back.
    accepts: Accepts,
    /// Past the waiter cap under `Overflow::Refuse`: refuse (the checked
    /// entry points) or run its own work (the others).
    refuse: bool,
}

impl<'a, K, Q, T, S, M> Flow<'a, K, Q, T, S, M>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    M: Make<T>,
{
    pub(crate) fn new(
        inner: Handle<'a, K, T, S>,
        key: KeyArg<'a, K, Q>,
        make: M,
        accepts: Accepts,
        refuse: bool,
    ) -> Self {
        Self {
            inner,
            key: Some(key),
            make: Some(make),
            step: Step::Start,
            accepts,
            refuse,
        }
    }

    /// Counts `event`, if the group has metrics on.
    pub(crate) fn count(&self, event: Event) {
        self.inner.engine.count(event);
    }

    /// The memo's hit path, at the first poll: inline in every entry
    /// point's `poll`, before `poll_flow`.
    #[inline(always)]
    pub(crate) fn hit(&mut self) -> Option<Outcome<T>> {
        let key = self.key.as_ref()?;
        let hit = self.inner.engine.hit(key.get())?;
        // Left as it is: dropping the call then drops the key and `make`,
        // and a poll after this one (which the `Future` contract leaves
        // open) would only look the memo up again.
        Some(hit)
    }

    /// Drives the call past the memo's hit path.
    #[inline(never)]
    #[track_caller]
    pub(crate) fn poll_flow(&mut self, cx: &mut Context<'_>) -> Poll<Received<T>> {
        loop {
            match &mut self.step {
                Step::Start => {
                    let Some(key) = self.key.take() else {
                        unreachable!("a call starts with its key");
                    };
                    let refresh = self.inner.spawner.is_some();
                    match self.inner.engine.join(key, self.accepts, refresh) {
                        Joined::Lead(ticket) => {
                            let make = self.take_make();
                            match self.inner.lead(make, ticket) {
                                Ok(lead) => self.step = Step::Lead(lead),
                                Err(received) => return self.end(received),
                            }
                        }
                        Joined::Follow(following) => {
                            self.step = Step::Follow(Follow::new(following));
                        }
                        Joined::OverCap(Overflow::Refuse) if self.refuse => {
                            return self.end(Err(Stop::TooManyWaiters));
                        }
                        Joined::OverCap(_) => {
                            if let Err(received) = self.run_own() {
                                return self.end(received);
                            }
                        }
                        Joined::Hit(hit) => return self.end(hit),
                        Joined::Refresh(hit, ticket) => {
                            let make = self.take_make();
                            self.inner.refresh(make, ticket);
                            return self.end(hit);
                        }
                    }
                }
                Step::Lead(lead) => {
                    let ended = ready!(lead.poll_work(&self.inner.engine, cx));
                    let ticket = lead.ticket;
                    // The work's destructors run before anyone sees its result.
                    self.step = Step::Done;
                    let received = self.inner.engine.finish(ticket, ended);
                    // Counted here, not in `finish`: a detached driver is no caller.
                    if matches!(&received, Ok(outcome) if outcome.shared) {
                        self.count(Event::Shared);
                    }
                    return Poll::Ready(received);
                }
                Step::Own(work) => {
                    let ended = ready!(poll_caught(work, cx));
                    self.step = Step::Done;
                    return Poll::Ready(match ended {
                        Ended::Returned(Ok(value)) => {
                            Ok(Outcome::from(value, false, Source::Bypass))
                        }
                        Ended::Returned(Err(error)) => Err(Stop::Error(error)),
                        Ended::Panicked(payload) => {
                            self.count(Event::Panic);
                            Err(Stop::Panicked(Box::new(Panicked::leader(payload))))
                        }
                    });
                }
                Step::Follow(follow) => {
                    let waited = ready!(follow.following.flight.poll_wait(&mut follow.waiter, cx));
                    let ticket = follow.following.ticket;
                    let received = match waited {
                        Waited::Ended(published) => Some(received(published)),
                        Waited::Promoted(work) => {
                            self.step = Step::Lead(Lead { work, ticket });
                            None
                        }
                        Waited::Claimed => {
                            // Our own work runs on the flight, as its retry.
                            self.step = Step::Done;
                            self.count(Event::Execution);
                            let make = self.take_make();
                            match self.inner.lead(make, ticket) {
                                Ok(lead) => self.step = Step::Lead(lead),
                                Err(received) => {
                                    self.inner.engine.gauge(Gauge::Waiters, -1);
                                    return self.end(received);
                                }
                            }
                            None
                        }
                    };
                    self.inner.engine.gauge(Gauge::Waiters, -1);
                    let Some(received) = received else {
                        continue;
                    };
                    self.step = Step::Done;
                    match received {
                        Err(Stop::Error(error)) if !(self.accepts)(&error) => {
                            if let Err(received) = self.run_own() {
                                return self.end(received);
                            }
                        }
                        received => {
                            if received.is_ok() {
                                self.count(Event::Shared);
                            }
                            return self.end(received);
                        }
                    }
                }
                Step::Done => panic!("a singleflight call polled after it completed"),
            }
        }
    }

    fn take_make(&mut self) -> M {
        match self.make.take() {
            Some(make) => make,
            None => unreachable!("`make` is taken once"),
        }
    }

    /// Ends the call with `received`.
    fn end(&mut self, received: Received<T>) -> Poll<Received<T>> {
        self.step = Step::Done;
        Poll::Ready(received)
    }

    /// Starts this caller's own work, alone; `Err` if `make` panicked.
    fn run_own(&mut self) -> Result<(), Received<T>> {
        self.count(Event::Execution);
        match make_caught(self.take_make()) {
            Ok(work) => {
                self.step = Step::Own(work);
                Ok(())
            }
            Err(payload) => {
                self.count(Event::Panic);
                Err(Err(Stop::Panicked(Box::new(Panicked::leader(payload)))))
            }
        }
    }
}

impl<K, Q, T, S, M> Drop for Flow<'_, K, Q, T, S, M>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    #[inline]
    fn drop(&mut self) {
        // A call that never joined, or has ended, holds nothing of its
        // flight: its fields drop as they are.
        if matches!(self.step, Step::Lead(_) | Step::Follow(_)) {
            self.leave();
        }
    }
}

impl<K, Q, T, S, M> Flow<'_, K, Q, T, S, M>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Leaves the flight this call drives or waits on, before its end.
    #[inline(never)]
    fn leave(&mut self) {
        match mem::replace(&mut self.step, Step::Done) {
            Step::Lead(lead) => self.inner.abandon(lead, true),
            Step::Follow(follow) => self.inner.leave(&follow.following, follow.waiter),
            Step::Start | Step::Done | Step::Own(_) => {}
        }
    }
}

impl<K, Q, T, S, M> fmt::Debug for Flow<'_, K, Q, T, S, M>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Start => "start",
            Step::Lead(_) => "driving",
            Step::Follow(_) => "waiting",
            Step::Own(_) => "bypassing",
            Step::Done => "done",
        };
        f.debug_struct("Flow").field("step", &step).finish()
    }
}

/// The future [`Group::call`](super::Group::call) and
/// [`Group::call_owned`](super::Group::call_owned) return: the flight's
/// [`Outcome`]; re-raises a panic of the work.
///
/// See [`Group::call`](super::Group::call) for cancel safety.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Call<'a, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    flow: Flow<'a, K, Q, T, S, Plain<F>>,
}

// Nothing of a call's future is ever pinned in place: the work is boxed.
impl<K, Q, T, S, F> Unpin for Call<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
}

impl<'a, K, Q, T, S, F, Fut> Call<'a, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    pub(crate) fn new(inner: Handle<'a, K, T, S>, key: KeyArg<'a, K, Q>, make: F) -> Self {
        Self {
            flow: Flow::new(inner, key, Plain(make), crate::engine::accepts_none, false),
        }
    }
}

impl<K, Q, T, S, F, Fut> Future for Call<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Outcome<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let flow = &mut self.get_mut().flow;
        if let Some(hit) = flow.hit() {
            return Poll::Ready(hit);
        }
        match ready!(flow.poll_flow(cx)) {
            Ok(outcome) => Poll::Ready(outcome),
            Err(stop) => stop.resume(),
        }
    }
}

impl<K, Q, T, S, F> fmt::Debug for Call<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Call").field(&self.flow).finish()
    }
}

/// The future [`Group::try_call`](super::Group::try_call) and
/// [`Group::try_call_owned`](super::Group::try_call_owned) return: the
/// flight's [`Outcome`], or its work's error behind the `Arc` every caller
/// of the flight shares; re-raises a panic of the work.
///
/// See [`Group::call`](super::Group::call) for cancel safety.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct TryCall<'a, K, Q, T, E, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    flow: Flow<'a, K, Q, T, S, Fallible<F, E>>,
}

impl<K, Q, T, E, S, F> Unpin for TryCall<'_, K, Q, T, E, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
}

impl<'a, K, Q, T, E, S, F, Fut> TryCall<'a, K, Q, T, E, S, F>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    pub(crate) fn new(inner: Handle<'a, K, T, S>, key: KeyArg<'a, K, Q>, make: F) -> Self {
        let make = Fallible(make, PhantomData);
        Self {
            flow: Flow::new(inner, key, make, crate::engine::accepts::<E>, false),
        }
    }
}

impl<K, Q, T, E, S, F, Fut> Future for TryCall<'_, K, Q, T, E, S, F>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Output = Result<Outcome<T>, StdArc<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let flow = &mut self.get_mut().flow;
        if let Some(hit) = flow.hit() {
            return Poll::Ready(Ok(hit));
        }
        Poll::Ready(try_result(ready!(flow.poll_flow(cx))))
    }
}

impl<K, Q, T, E, S, F> fmt::Debug for TryCall<'_, K, Q, T, E, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TryCall").field(&self.flow).finish()
    }
}
