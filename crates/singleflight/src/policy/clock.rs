// Where the memo's timestamps come from: the system's monotonic clock by
// default, a clock that tests move by hand, or tokio's (pausable) clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic clock for the memo's expiry times.
///
/// Implement it to drive expiry from your own time source; the group calls
/// [`Clock::now`] once per memo lookup and once per memo write.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use singleflight::policy::Clock;
///
/// struct Frozen(Instant);
/// impl Clock for Frozen {
///     fn now(&self) -> Instant { self.0 }
/// }
///
/// let group = singleflight::sync::Group::<u8, u8>::builder()
///     .memo(Duration::from_secs(1))
///     .clock(Frozen(Instant::now()))
///     .build();
/// assert_eq!(group.call(1, || 1).value, 1);
/// assert_eq!(group.call(1, || 2).value, 1); // time never passes
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Instant;
}

/// `std::time::Instant::now()`.
///
/// # Examples
///
/// ```
/// use singleflight::policy::{Clock, SystemClock};
/// assert!(SystemClock.now() <= std::time::Instant::now());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// tokio's clock (`tokio::time::Instant::now()`), which tests can pause and
/// advance with `tokio::time::pause` / `advance`. The async group's default
/// when the `tokio` feature is on.
///
/// # Examples
///
/// ```
/// use singleflight::policy::{Clock, TokioClock};
/// let _now = TokioClock.now();
/// ```
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[cfg(feature = "tokio")]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A clock that moves only when told to; for tests. Clones share the time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight::policy::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now() - start, Duration::from_millis(5));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    start: Instant,
    /// Nanoseconds since `start`.
    elapsed: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at the moment it was made.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field(
                "elapsed",
                &Duration::from_nanos(self.elapsed.load(Ordering::SeqCst)),
            )
            .finish()
    }
}

/// The clock a group reads, with the system clock inlined (no virtual call
/// on the memo's hit path).
#[derive(Clone)]
pub(crate) enum Time {
    System,
    Custom(Arc<dyn Clock>),
}

impl Time {
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match self {
            Self::System => Instant::now(),
            Self::Custom(clock) => clock.now(),
        }
    }
}
