//! Errors of a coalesced response's body.

use std::sync::Arc;

/// A boxed error, as tower and hyper pass them around.
///
/// # Examples
///
/// ```
/// let error: singleflight_tower::BoxError = "upstream unreachable".into();
/// assert_eq!(error.to_string(), "upstream unreachable");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a [`CoalescedBody`](super::CoalescedBody) stopped before its end.
///
/// A body that yields this error is incomplete: a server forwarding it
/// aborts the response instead of ending it cleanly, so a client never
/// mistakes a truncated body for a whole one.
///
/// # Examples
///
/// ```
/// use singleflight_tower::Error;
///
/// fn log_line(error: &Error) -> String {
///     match error {
///         Error::Upstream(source) => format!("upstream body failed: {source}"),
///         Error::FellBehind { max_buffer } => format!("client too slow ({max_buffer} B cap)"),
///         other => other.to_string(),
///     }
/// }
/// let error = Error::FellBehind { max_buffer: 1024 };
/// assert_eq!(log_line(&error), "client too slow (1024 B cap)");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream body failed (for instance, its connection was reset).
    /// Every waiter of the flight receives this error after the bytes that
    /// came before it.
    #[error("the upstream response body failed")]
    Upstream(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// This waiter read so slowly that the chunks it still needed were
    /// dropped to keep the flight's buffer within `max_buffer` bytes (see
    /// [`CoalesceLayer::max_buffer`](super::CoalesceLayer::max_buffer)).
    #[error("this reader fell more than {max_buffer} bytes behind the flight's fastest reader")]
    FellBehind {
        /// The setting in force.
        max_buffer: usize,
    },
}

impl Error {
    pub(crate) fn upstream<E: Into<BoxError>>(error: E) -> Self {
        Self::Upstream(Arc::from(error.into()))
    }
}
