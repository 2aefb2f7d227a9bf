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
/// Without one, a group reads the OS's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE` on Linux): a few ns per read instead of ~25 ns
/// for `Instant::now()`, at the price of a resolution of 1 to 4 ms, so a
/// value may be served up to that much past its TTL. Pass
/// [`SystemClock`] for precise expiry, [`ManualClock`] or `TokioClock` (under
/// a paused tokio runtime) to drive it in tests.
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

/// The time a group's memo reads, as a `u64` in the clock's own unit: the
/// OS's coarse monotonic clock by default (a few ns per read, where
/// `Instant::now()` costs ~25 ns, which would double the memo's hit path),
/// or a [`Clock`] the builder was given.
#[derive(Clone)]
pub(crate) enum Time {
    /// `CLOCK_MONOTONIC_COARSE` (through `coarsetime`), in its ticks; its
    /// resolution is the kernel tick, 1 to 4 ms.
    Coarse,
    /// A [`Clock`], in nanoseconds since `base`.
    Custom {
        clock: Arc<dyn Clock>,
        base: Instant,
    },
}

impl Time {
    pub(crate) fn custom(clock: Arc<dyn Clock>) -> Self {
        let base = clock.now();
        Self::Custom { clock, base }
    }

    /// Now, in this clock's unit.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Self::Coarse => coarsetime::Instant::now_without_cache_update().as_ticks(),
            Self::Custom { clock, base } => {
                saturate(clock.now().saturating_duration_since(*base).as_nanos())
            }
        }
    }

    /// `span` in this clock's unit.
    pub(crate) fn span(&self, span: Duration) -> u64 {
        match self {
            // coarsetime's own conversion, so the unit is its instants' unit.
            Self::Coarse => coarsetime::Duration::from(span).as_ticks(),
            Self::Custom { .. } => saturate(span.as_nanos()),
        }
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
