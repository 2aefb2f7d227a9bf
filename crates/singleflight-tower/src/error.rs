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

/// Why a [`CoalescedBody`](crate::CoalescedBody) stopped before its end.
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
///         Error::FellBehind { window, spill_max } => {
///             format!("client too slow ({window} B in memory, {spill_max} B on disk)")
///         }
///         other => other.to_string(),
///     }
/// }
/// let error = Error::FellBehind { window: 1024, spill_max: 0 };
/// assert_eq!(log_line(&error), "client too slow (1024 B in memory, 0 B on disk)");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream body failed (for instance, its connection was reset).
    /// Every reader of the flight receives this error after the bytes that
    /// came before it.
    #[error("the upstream response body failed")]
    Upstream(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// This reader needed bytes that the flight no longer keeps: it was
    /// more than the body window behind the fastest reader while nothing
    /// kept those bytes on disk (the spill cap was reached, or spilling is
    /// off). See [`CoalesceLayer::spill_max`](crate::CoalesceLayer::spill_max).
    #[error(
        "this reader fell behind what the flight keeps ({window} bytes in memory, \
         at most {spill_max} bytes on disk); raise the body window or the spill cap"
    )]
    FellBehind {
        /// The body window in force, in bytes.
        window: usize,
        /// The spill cap in force, in bytes.
        spill_max: u64,
    },
    /// The spill file, which holds the bytes this reader still needed,
    /// could not be made, written or read.
    #[error("the flight's spill file failed; check the spill directory's space and permissions")]
    Spill(#[source] Arc<std::io::Error>),
}

impl Error {
    pub(crate) fn upstream<E: Into<BoxError>>(error: E) -> Self {
        Self::Upstream(Arc::from(error.into()))
    }
}
