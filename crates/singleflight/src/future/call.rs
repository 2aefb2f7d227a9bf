// The futures a call returns, and how each caller drives or waits on its
// flight. See `flight.rs` for who owns the work when.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::mem;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, ready};

use super::flight::{Flight, Work};
use super::group::{Inner, Joined};
use crate::loom::lock;
use crate::loom::sync::Arc;
use crate::policy::{MetricEvent as Event, MetricGauge as Gauge};
use crate::settle::received;
use crate::{Error, Outcome, Panicked, Source};

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

/// The work of a flight, owned by the caller that drives it.
pub(crate) struct Lead<T> {
    pub(crate) work: Work<T>,
    pub(crate) hash: u64,
    pub(crate) id: u64,
}

impl<T> Lead<T> {
    /// Polls the work, catching a panic as the flight's result.
    pub(crate) fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<std::thread::Result<T>> {
        poll_caught(&mut self.work, cx)
    }
}

/// A caller waiting for a flight driven by another.
struct Follow<T> {
    flight: Arc<Flight<T>>,
    hash: u64,
    id: u64,
    /// Where our waker is in the flight's waiters, once registered.
    waiter: Option<usize>,
    /// This caller's wait, following from the flight's span (feature
    /// `tracing`); it ends when the wait does.
    #[cfg(feature = "tracing")]
    _span: tracing::Span,
}

enum Waited<T> {
    Ended(Result<Outcome<T>, Panicked>),
    /// The driver left; the work is ours to drive now.
    Promoted(Work<T>),
    /// The driver's work failed (`RetryOnce`): ours runs as the retry.
    Retry,
}

impl<T: Clone> Follow<T> {
    fn poll_wait(&mut self, cx: &mut Context<'_>, can_retry: bool) -> Poll<Waited<T>> {
        let mut state = lock(&self.flight.state);
        if let Some(result) = self.flight.result.get() {
            drop(state);
            return Poll::Ready(Waited::Ended(received(result)));
        }
        if let Some(work) = state.orphan.take() {
            if let Some(waiter) = self.waiter.take() {
                state.waiters.try_remove(waiter);
            }
            return Poll::Ready(Waited::Promoted(work));
        }
        if can_retry && state.retry {
            state.retry = false;
            if let Some(waiter) = self.waiter.take() {
                state.waiters.try_remove(waiter);
            }
            return Poll::Ready(Waited::Retry);
        }
        match self.waiter.and_then(|waiter| state.waiters.get_mut(waiter)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => self.waiter = Some(state.waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

enum Step<K, T, F> {
    Start {
        key: K,
        make: F,
    },
    Lead(Lead<T>),
    /// Waiting; keeps `make` when the group may ask it for a retry.
    Follow(Follow<T>, Option<F>),
    /// Past the waiter cap, running its own work alone.
    Own(Work<T>),
    Done,
}

/// The future [`Group::try_call`](super::Group::try_call) returns: the
/// flight's [`Outcome`], or [`Panicked`] if its work panicked.
///
/// See [`Group::call`](super::Group::call) for cancel safety.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct TryCall<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    inner: Handle<'a, K, T, S>,
    step: Step<K, T, F>,
}

// Nothing of a `TryCall` is ever pinned in place: the work is boxed.
impl<K, T, S, F> Unpin for TryCall<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
}

impl<'a, K, T, S, F, Fut> TryCall<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    pub(crate) fn new(inner: Handle<'a, K, T, S>, key: K, make: F) -> Self {
        Self {
            inner,
            step: Step::Start { key, make },
        }
    }
}

impl<'a, K, T, S, F, Fut> TryCall<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    /// Counts `event`, if the group has metrics on.
    pub(crate) fn count(&self, event: Event) {
        self.inner.count(event);
    }

    /// Drives the call; every way it can end without a value is an `Error`.
    pub(crate) fn poll_checked(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome<T>, Error>> {
        self.poll_steps(cx)
    }

    fn poll_steps(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome<T>, Error>> {
        loop {
            match &mut self.step {
                Step::Start { key, .. } => {
                    // The memo's hit path, on the key in place.
                    if let Some(outcome) = self.inner.policy.as_ref().and_then(|p| p.hit(key)) {
                        self.step = Step::Done;
                        return Poll::Ready(Ok(outcome));
                    }
                    let Step::Start { key, make } = mem::replace(&mut self.step, Step::Done) else {
                        unreachable!("matched Start just above");
                    };
                    match self.inner.join(key, make) {
                        Joined::Lead(lead) => self.step = Step::Lead(lead),
                        Joined::Follow {
                            flight,
                            hash,
                            id,
                            make,
                            #[cfg(feature = "tracing")]
                            span,
                        } => {
                            #[cfg(feature = "tracing")]
                            let _span = {
                                let wait = tracing::info_span!("singleflight.wait", flight.id = id);
                                if let Some(flight) = span {
                                    wait.follows_from(flight);
                                }
                                wait
                            };
                            let follow = Follow {
                                flight,
                                hash,
                                id,
                                waiter: None,
                                #[cfg(feature = "tracing")]
                                _span,
                            };
                            self.step = Step::Follow(follow, make);
                        }
                        Joined::Own(work) => self.step = Step::Own(work),
                        Joined::Failed(result) => return Poll::Ready(result.map_err(Error::from)),
                        Joined::Ready(result) => return Poll::Ready(result),
                    }
                }
                Step::Lead(lead) => {
                    let result = ready!(lead.poll_work(cx));
                    let Step::Lead(lead) = mem::replace(&mut self.step, Step::Done) else {
                        unreachable!("matched Lead just above");
                    };
                    let (hash, id) = (lead.hash, lead.id);
                    // The work's destructors run before anyone sees its result.
                    drop(lead);
                    let result = self.inner.finish(hash, id, result);
                    // Counted here, not in `finish`: a detached driver is no caller.
                    if matches!(&result, Ok(outcome) if outcome.shared) {
                        self.inner.count(Event::Shared);
                    }
                    return Poll::Ready(result.map_err(Error::from));
                }
                Step::Own(work) => {
                    let result = ready!(poll_caught(work, cx));
                    self.step = Step::Done;
                    return Poll::Ready(match result {
                        Ok(value) => Ok(Outcome::from(value, false, Source::Bypass)),
                        Err(payload) => {
                            self.inner.count(Event::Panic);
                            Err(Panicked::leader(payload).into())
                        }
                    });
                }
                Step::Follow(follow, make) => {
                    let waited = ready!(follow.poll_wait(cx, make.is_some()));
                    let (hash, id) = (follow.hash, follow.id);
                    let make = make.take();
                    self.step = Step::Done;
                    self.inner.gauge(Gauge::Waiters, -1);
                    match waited {
                        Waited::Ended(result) => {
                            if result.is_ok() {
                                self.inner.count(Event::Shared);
                            }
                            return Poll::Ready(result.map_err(Error::from));
                        }
                        Waited::Promoted(work) => self.step = Step::Lead(Lead { work, hash, id }),
                        Waited::Retry => {
                            let Some(make) = make else {
                                unreachable!("a retry is claimed only with `make` at hand");
                            };
                            self.inner.count(Event::Execution);
                            match self.inner.make_work(make, hash, id) {
                                Ok(lead) => self.step = Step::Lead(lead),
                                Err(result) => return Poll::Ready(result.map_err(Error::from)),
                            }
                        }
                    }
                }
                Step::Done => panic!("`TryCall` polled after it completed"),
            }
        }
    }
}

/// Polls `work`, catching a panic.
fn poll_caught<T>(work: &mut Work<T>, cx: &mut Context<'_>) -> Poll<std::thread::Result<T>> {
    match panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
        Err(payload) => Poll::Ready(Err(payload)),
    }
}

impl<K, T, S, F, Fut> Future for TryCall<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Result<Outcome<T>, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.get_mut().poll_checked(cx)) {
            Ok(outcome) => Poll::Ready(Ok(outcome)),
            Err(Error::Panicked(panicked)) => Poll::Ready(Err(panicked)),
            Err(Error::TooManyWaiters) => {
                panic!("singleflight: too many waiters on this key (use `call_checked`)")
            }
            Err(error) => unreachable!("`try_call` has no deadline, yet: {error}"),
        }
    }
}

impl<K, T, S, F> Drop for TryCall<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn drop(&mut self) {
        match mem::replace(&mut self.step, Step::Done) {
            Step::Start { .. } | Step::Done | Step::Own(_) => {}
            Step::Lead(lead) => self.inner.abandon(lead, true),
            Step::Follow(follow, _) => {
                self.inner.gauge(Gauge::Waiters, -1);
                self.inner
                    .leave(&follow.flight, follow.hash, follow.id, follow.waiter);
            }
        }
    }
}

impl<K, T, S, F> fmt::Debug for TryCall<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Start { .. } => "start",
            Step::Lead(_) => "driving",
            Step::Follow(..) => "waiting",
            Step::Own(_) => "bypassing",
            Step::Done => "done",
        };
        f.debug_struct("TryCall").field("step", &step).finish()
    }
}

/// The future [`Group::call`](super::Group::call) returns: the flight's
/// [`Outcome`]; re-raises a panic of the work.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Call<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    inner: TryCall<'a, K, T, S, F>,
}

impl<'a, K, T, S, F> Call<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(crate) fn new(inner: TryCall<'a, K, T, S, F>) -> Self {
        Self { inner }
    }
}

impl<K, T, S, F, Fut> Future for Call<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Outcome<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        match ready!(Pin::new(&mut self.inner).poll(cx)) {
            Ok(outcome) => Poll::Ready(outcome),
            Err(panicked) => panicked.resume(),
        }
    }
}

impl<K, T, S, F> fmt::Debug for Call<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Call").field(&self.inner).finish()
    }
}
