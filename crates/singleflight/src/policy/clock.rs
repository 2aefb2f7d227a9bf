// Where the memo's timestamps come from: the process's ticking clock by
// default, a clock that tests move by hand, or tokio's (pausable) clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::tick::Ticket;

/// A monotonic clock for the memo's expiry times.
///
/// Implement it to drive expiry from your own time source; the group calls
/// [`Clock::now`] once per memo lookup and once per memo write.
///
/// Without one, a group's memo reads a clock that a thread of the process
/// (`singleflight-clock`, one for all groups) keeps in an atomic: one load
/// per hit instead of ~25 ns for `Instant::now()`. The thread ticks only
/// while a group with a memo on this clock is alive, as often as the most
/// demanding of them asks: 2% of its shortest span (TTL, negative TTL,
/// grace), within 1 to 100 ms; so a value may be served up to that much
/// past its TTL (more if the thread is kept off the CPU). Like every
/// thread, it does not survive `fork()`: a child process that uses memos
/// must build its groups with a clock of its own ([`SystemClock`]). Pass
/// [`SystemClock`] for exact expiry at ~25 ns
/// per hit, [`ManualClock`] or `TokioClock` (under a paused tokio runtime)
/// to drive it in tests.
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
///     .memo_all(Duration::from_secs(1))
///     .clock(Frozen(Instant::now()))
///     .build();
/// assert_eq!(group.call(&1, || 1).value, 1);
/// assert_eq!(group.call(&1, || 2).value, 1); // time never passes
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
/// advance with `tokio::time::pause` / `advance`; pass it to a builder's
/// `clock` (it is never a default).
///
/// # Examples
///
/// ```
/// use singleflight::policy::{Clock, TokioClock};
/// let _now = TokioClock.now();
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
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

/// The time a group's memo reads, as a `u64` of nanoseconds: by default the
/// process's ticking clock (see `tick`), read with one atomic load, where a
/// clock read would cost as much as the rest of a memo hit; or a [`Clock`]
/// the builder was given.
pub(crate) enum Time {
    /// The ticking clock, in nanoseconds from its base; its resolution is
    /// the period the ticket asked for.
    Ticking(Ticket),
    /// `Instant::now()`, in nanoseconds from `base`: where no memo needs a
    /// fast clock, or the ticking thread could not be started.
    Precise(Instant),
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

    /// The ticking clock, ticking at least every `period`.
    pub(crate) fn ticking(period: Duration) -> Self {
        Ticket::new(period).map_or_else(Self::precise, Self::Ticking)
    }

    pub(crate) fn precise() -> Self {
        Self::Precise(Instant::now())
    }

    /// Now, in nanoseconds from this clock's base.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Self::Ticking(ticket) => ticket.ticker().now(),
            _ => self.read(),
        }
    }

    /// `now` for the clocks that are read rather than loaded.
    #[inline(never)]
    fn read(&self) -> u64 {
        match self {
            Self::Ticking(ticket) => ticket.ticker().now(),
            Self::Precise(base) => saturate(base.elapsed().as_nanos()),
            Self::Custom { clock, base } => {
                saturate(clock.now().saturating_duration_since(*base).as_nanos())
            }
        }
    }

    /// `span` in this clock's unit.
    pub(crate) fn span(span: Duration) -> u64 {
        saturate(span.as_nanos())
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
