// The futures of the checked entry points: `Checked` (every way to end
// without a value is an `Error`) and `Until` (plus a caller deadline). A
// caller that times out is simply a dropped caller: the flight's own
// machinery decides what happens to it.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::call::{Flow, Handle};
use super::driver::Plain;
use crate::engine::{KeyArg, accepts_none, checked_result};
use crate::policy::MetricEvent as Event;
use crate::{Error, Outcome};

/// The future [`Group::call_checked`](super::Group::call_checked) and
/// [`Group::call_checked_owned`](super::Group::call_checked_owned) return.
///
/// See [`Group::call`](super::Group::call) for cancel safety.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Checked<'a, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    flow: Flow<'a, K, Q, T, S, Plain<F>>,
}

impl<K, Q, T, S, F> Unpin for Checked<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
}

impl<'a, K, Q, T, S, F, Fut> Checked<'a, K, Q, T, S, F>
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
            flow: Flow::new(inner, key, Plain(make), accepts_none, true),
        }
    }

    #[inline]
    fn poll_checked(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome<T>, Error>> {
        if let Some(hit) = self.flow.hit() {
            return Poll::Ready(Ok(hit));
        }
        Poll::Ready(checked_result(ready!(self.flow.poll_flow(cx))))
    }
}

impl<K, Q, T, S, F, Fut> Future for Checked<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Result<Outcome<T>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_checked(cx)
    }
}

impl<K, Q, T, S, F> fmt::Debug for Checked<'_, K, Q, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Checked").field(&self.flow).finish()
    }
}

pin_project_lite::pin_project! {
    /// The future [`Group::call_until`](super::Group::call_until) and
    /// `call_with_timeout` return: the call, or [`Error::Timeout`] when the
    /// deadline `D` completes first.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Until<'a, K, Q, T, S, F, D>
    where
        K: Hash,
        K: Eq,
        K: Send,
        K: Sync,
        K: 'static,
        Q: ?Sized,
        T: Clone,
        T: Send,
        T: Sync,
        T: 'static,
        S: BuildHasher,
        S: Send,
        S: Sync,
        S: 'static,
    {
        call: Option<Checked<'a, K, Q, T, S, F>>,
        #[pin]
        deadline: D,
    }
}

impl<'a, K, Q, T, S, F, D> Until<'a, K, Q, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(crate) fn new(call: Checked<'a, K, Q, T, S, F>, deadline: D) -> Self {
        Self {
            call: Some(call),
            deadline,
        }
    }
}

impl<K, Q, T, S, F, Fut, D> Future for Until<'_, K, Q, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + Borrow<Q> + 'static,
    Q: Hash + Eq + ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    D: Future,
{
    type Output = Result<Outcome<T>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(call) = this.call.as_mut() else {
            panic!("`Until` polled after it completed");
        };
        // The call first: a value that is ready wins over a deadline that is.
        if let Poll::Ready(result) = call.poll_checked(cx) {
            *this.call = None;
            return Poll::Ready(result);
        }
        if this.deadline.poll(cx).is_ready() {
            call.flow.count(Event::Timeout);
            // Leaving is dropping: the flight's machinery takes it from here.
            *this.call = None;
            return Poll::Ready(Err(Error::Timeout));
        }
        Poll::Pending
    }
}

impl<K, Q, T, S, F, D> fmt::Debug for Until<'_, K, Q, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + 'static,
    Q: ?Sized,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Until")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}
