// The futures of the checked entry points: `Checked` (errors as `Error`) and
// `Until` (plus a caller deadline). A caller that times out is simply a
// dropped caller: the flight's own machinery decides what happens to it.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::call::TryCall;
use crate::policy::MetricEvent as Event;
use crate::{Error, Outcome};

/// The future [`Group::call_checked`](super::Group::call_checked) returns.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Checked<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    call: TryCall<'a, K, T, S, F>,
}

impl<'a, K, T, S, F> Checked<'a, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(crate) fn new(call: TryCall<'a, K, T, S, F>) -> Self {
        Self { call }
    }
}

impl<K, T, S, F, Fut> Future for Checked<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Result<Outcome<T>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.call.poll_checked(cx)
    }
}

impl<K, T, S, F> fmt::Debug for Checked<'_, K, T, S, F>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Checked").field(&self.call).finish()
    }
}

pin_project_lite::pin_project! {
    /// The future [`Group::call_until`](super::Group::call_until) and
    /// `call_with_timeout` return: the call, or [`Error::Timeout`] when the
    /// deadline `D` completes first.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Until<'a, K, T, S, F, D>
    where
        K: Hash,
        K: Eq,
        K: Send,
        K: Sync,
        K: 'static,
        T: Clone,
        T: Send,
        T: Sync,
        T: 'static,
        S: BuildHasher,
        S: Send,
        S: Sync,
        S: 'static,
    {
        call: Option<TryCall<'a, K, T, S, F>>,
        #[pin]
        deadline: D,
    }
}

impl<'a, K, T, S, F, D> Until<'a, K, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    pub(crate) fn new(call: TryCall<'a, K, T, S, F>, deadline: D) -> Self {
        Self {
            call: Some(call),
            deadline,
        }
    }
}

impl<K, T, S, F, Fut, D> Future for Until<'_, K, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + 'static,
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
            call.count(Event::Timeout);
            // Leaving is dropping: the flight's machinery takes it from here.
            *this.call = None;
            return Poll::Ready(Err(Error::Timeout));
        }
        Poll::Pending
    }
}

impl<K, T, S, F, D> fmt::Debug for Until<'_, K, T, S, F, D>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Until")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}
