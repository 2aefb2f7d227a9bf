// The memo's default clock: one process-wide thread writes the time into an
// atomic, and a memo hit reads it with one relaxed load (~1 ns), where a
// clock read costs 5 to 25 ns and would be most of a hit's cost.
//
// Invariants:
// - The thread ticks only while at least one `Ticket` is alive (a group with
//   a memo on this clock); with none, it waits on the condvar and costs
//   nothing. It is spawned on the first ticket and never exits.
// - Its period is the shortest any live ticket asks for; a new ticket that
//   asks for less wakes it at once.
// - `now` only moves forward (`fetch_max`), so the thread and a new ticket
//   storing the time at about the same moment never move it back.
// - A ticket stores the time before it is returned: a clock that was idle
//   is never read stale by the group that woke it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The finest and coarsest periods of the ticking thread.
pub(crate) const FINEST: Duration = Duration::from_millis(1);
pub(crate) const COARSEST: Duration = Duration::from_millis(100);

/// The shared clock.
pub(crate) struct Ticker {
    base: Instant,
    /// Nanoseconds from `base`, as of the last tick.
    now: AtomicU64,
    /// The periods asked for by the live tickets.
    periods: Mutex<Vec<Duration>>,
    changed: Condvar,
}

static TICKER: OnceLock<Option<&'static Ticker>> = OnceLock::new();

impl Ticker {
    /// The time as of the last tick, in nanoseconds from the ticker's base.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// A ticker with no thread, that lives as long as the process.
    fn leaked() -> &'static Self {
        Box::leak(Box::new(Self {
            base: Instant::now(),
            now: AtomicU64::new(0),
            periods: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }))
    }

    fn tick(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.now.fetch_max(nanos, Ordering::Relaxed);
    }

    fn periods(&self) -> MutexGuard<'_, Vec<Duration>> {
        // The lock guards plain data that no panic can leave half-written.
        self.periods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut periods = self.periods();
        loop {
            self.tick();
            periods = match periods.iter().min().copied() {
                None => self
                    .changed
                    .wait(periods)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(period) => {
                    let waited = self.changed.wait_timeout(periods, period);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

/// A live registration with the ticker; the ticker stops ticking for it when
/// it is dropped.
pub(crate) struct Ticket {
    ticker: &'static Ticker,
    period: Duration,
}

impl Ticket {
    /// A ticket for a clock that ticks at least every `period` (clamped to
    /// `FINEST..=COARSEST`), or `None` if the ticking thread could not be
    /// started (the caller then reads a clock itself).
    pub(crate) fn new(period: Duration) -> Option<Self> {
        let ticker = (*TICKER.get_or_init(start))?;
        Some(Self::on(ticker, period))
    }

    fn on(ticker: &'static Ticker, period: Duration) -> Self {
        let period = period.clamp(FINEST, COARSEST);
        let mut periods = ticker.periods();
        periods.push(period);
        ticker.tick();
        drop(periods);
        ticker.changed.notify_one();
        Self { ticker, period }
    }

    /// The shared clock.
    #[inline]
    pub(crate) fn ticker(&self) -> &'static Ticker {
        self.ticker
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut periods = self.ticker.periods();
        if let Some(at) = periods.iter().position(|p| *p == self.period) {
            periods.swap_remove(at);
        }
        // The thread notices on its next tick; no need to wake it early.
    }
}

/// Spawns the ticking thread, once per process.
fn start() -> Option<&'static Ticker> {
    let ticker = Ticker::leaked();
    std::thread::Builder::new()
        .name("singleflight-clock".into())
        .spawn(move || ticker.run())
        .ok()
        .map(|_| ticker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_reads_a_time_that_moves_forward() {
        let ticket = Ticket::new(FINEST).expect("the clock thread starts");
        let first = ticket.ticker().now();
        let since = Instant::now();
        // Bounded: the thread ticks every millisecond while the ticket lives.
        while ticket.ticker().now() == first {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "the clock never ticked"
            );
            std::thread::yield_now();
        }
        assert!(ticket.ticker().now() > first);
    }

    #[test]
    fn the_period_is_the_shortest_asked_for_and_dropped_tickets_leave() {
        // A ticker of its own, without a thread: the global one is shared
        // with the other tests.
        let ticker = Ticker::leaked();
        let slow = Ticket::on(ticker, Duration::from_secs(3600));
        let fast = Ticket::on(ticker, Duration::ZERO);
        let also_fast = Ticket::on(ticker, Duration::ZERO);
        let periods = || {
            let mut periods = ticker.periods().clone();
            periods.sort();
            periods
        };
        assert_eq!(periods(), [FINEST, FINEST, COARSEST]);
        assert!(ticker.now() > 0, "a new ticket stores the time");
        drop(fast);
        assert_eq!(
            periods(),
            [FINEST, COARSEST],
            "the other fast ticket still asks"
        );
        drop(also_fast);
        assert_eq!(periods(), [COARSEST]);
        drop(slow);
        assert_eq!(periods(), []);
    }
}
