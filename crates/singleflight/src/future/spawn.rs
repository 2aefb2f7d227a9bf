// Handing abandoned flights to an executor, so they finish with nobody waiting.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An executor that can run a [`Detached`] flight to completion.
///
/// Implemented for every `Fn(Detached) + Send + Sync + 'static`, so any
/// executor's spawn function fits:
///
/// ```
/// use singleflight::future::{Detached, Group};
///
/// let group = Group::<String, u32>::builder()
///     .detach(|flight: Detached| {
///         std::thread::spawn(move || futures::executor::block_on(flight));
///     })
///     .build();
/// # drop(group);
/// ```
pub trait Spawn: Send + Sync + 'static {
    /// Runs `flight` to completion in the background.
    fn spawn(&self, flight: Detached);
}

impl<F> Spawn for F
where
    F: Fn(Detached) + Send + Sync + 'static,
{
    fn spawn(&self, flight: Detached) {
        self(flight)
    }
}

/// A flight whose every caller has gone, to be run to completion so that its
/// result is not lost (and fills the memo, where one is set).
///
/// New calls for its key keep joining it while it runs. Dropping it before it
/// completes cancels the work.
#[must_use = "a detached flight does nothing unless polled to completion"]
pub struct Detached {
    flight: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Detached {
    pub(crate) fn new(flight: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            flight: Box::pin(flight),
        }
    }
}

impl Future for Detached {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.flight.as_mut().poll(cx)
    }
}

impl fmt::Debug for Detached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached").finish_non_exhaustive()
    }
}

/// Runs detached flights on a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use singleflight::future::{Group, TokioSpawner};
///
/// let group = Group::<String, u32>::builder()
///     .detach(TokioSpawner::current())
///     .build();
/// assert_eq!(group.call("k", || async { 1 }).await.value, 1);
/// # }
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone)]
pub struct TokioSpawner {
    handle: tokio::runtime::Handle,
}

#[cfg(feature = "tokio")]
impl TokioSpawner {
    /// Spawns onto the runtime `handle` belongs to.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }

    /// Spawns onto the runtime this is called from.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use [`TokioSpawner::new`] with a handle there.
    #[track_caller]
    pub fn current() -> Self {
        Self::new(tokio::runtime::Handle::current())
    }
}

#[cfg(feature = "tokio")]
impl Spawn for TokioSpawner {
    fn spawn(&self, flight: Detached) {
        drop(self.handle.spawn(flight));
    }
}
