// Counters of a group with metrics turned on: plain atomics for `stats()`,
// mirrored to the `metrics` facade (feature `metrics`) through handles
// registered once, when the group first counts something: a group built
// before the application installs its recorder (a static, a lazy global)
// still reports to it.
//
// Counters only go up; the two gauges go up and down by the same events, so a
// snapshot may be momentarily off by the calls in progress, never drift.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A snapshot of a group's counters; from `stats()` on a group built with
/// `.metrics(name)`.
///
/// # Examples
///
/// ```
/// let group = singleflight::sync::Group::<u8, u8>::builder().metrics("demo").build();
/// group.call(&1, || 1);
/// let stats = group.stats().expect("metrics are on");
/// assert_eq!((stats.calls, stats.executions), (1, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls made (every entry point).
    pub calls: u64,
    /// Times the work ran: flights led, retries, bypasses and refreshes.
    pub executions: u64,
    /// Calls that received a flight's value shared with other callers.
    pub shared: u64,
    /// Calls answered from the memo, fresh.
    pub memo_hits: u64,
    /// Calls answered from the memo past the TTL, within grace.
    pub stale_hits: u64,
    /// Calls that left because their deadline passed.
    pub timeouts: u64,
    /// Flights whose work was dropped before it finished (every caller gone).
    pub cancellations: u64,
    /// Flights whose work panicked.
    pub panics: u64,
    /// Flights in progress now.
    pub flights: u64,
    /// Callers waiting on another caller's flight now.
    pub waiters: u64,
}

#[derive(Clone, Copy)]
pub(crate) enum Event {
    Call,
    Execution,
    Shared,
    MemoHit,
    StaleHit,
    Timeout,
    Cancellation,
    Panic,
}

const EVENTS: usize = 8;

const NAMES: [&str; EVENTS] = [
    "singleflight_calls_total",
    "singleflight_executions_total",
    "singleflight_shared_total",
    "singleflight_memo_hits_total",
    "singleflight_stale_hits_total",
    "singleflight_timeouts_total",
    "singleflight_cancellations_total",
    "singleflight_panics_total",
];

#[derive(Clone, Copy)]
pub(crate) enum Gauge {
    Flights,
    Waiters,
}

pub(crate) struct Metrics {
    counters: [AtomicU64; EVENTS],
    gauges: [AtomicI64; 2],
    #[cfg(feature = "metrics")]
    name: String,
    #[cfg(feature = "metrics")]
    handles: std::sync::OnceLock<Handles>,
}

#[cfg(feature = "metrics")]
struct Handles {
    counters: [metrics::Counter; EVENTS],
    gauges: [metrics::Gauge; 2],
}

impl Metrics {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str) -> Self {
        Self {
            counters: Default::default(),
            gauges: Default::default(),
            #[cfg(feature = "metrics")]
            name: name.to_owned(),
            #[cfg(feature = "metrics")]
            handles: std::sync::OnceLock::new(),
        }
    }

    /// The facade's handles, registered with the recorder in force at the
    /// first use.
    #[cfg(feature = "metrics")]
    #[inline]
    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let name = &self.name;
            Handles {
                counters: NAMES.map(|metric| metrics::counter!(metric, "group" => name.clone())),
                gauges: [
                    metrics::gauge!("singleflight_flights", "group" => name.clone()),
                    metrics::gauge!("singleflight_waiters", "group" => name.clone()),
                ],
            }
        })
    }

    #[inline]
    pub(crate) fn count(&self, event: Event) {
        self.counters[event as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.handles().counters[event as usize].increment(1);
    }

    #[inline]
    pub(crate) fn gauge(&self, gauge: Gauge, delta: i64) {
        self.gauges[gauge as usize].fetch_add(delta, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.handles().gauges[gauge as usize].increment(delta as f64);
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = |e: Event| self.counters[e as usize].load(Ordering::Relaxed);
        let g =
            |g: Gauge| u64::try_from(self.gauges[g as usize].load(Ordering::Relaxed)).unwrap_or(0);
        Stats {
            calls: c(Event::Call),
            executions: c(Event::Execution),
            shared: c(Event::Shared),
            memo_hits: c(Event::MemoHit),
            stale_hits: c(Event::StaleHit),
            timeouts: c(Event::Timeout),
            cancellations: c(Event::Cancellation),
            panics: c(Event::Panic),
            flights: g(Gauge::Flights),
            waiters: g(Gauge::Waiters),
        }
    }
}

/// Names of the metrics a group emits through the `metrics` facade, each
/// labelled `group = <name>`: the counters of [`Stats`] as
/// `singleflight_<field>_total`, and the gauges `singleflight_flights` and
/// `singleflight_waiters`.
pub const METRIC_NAMES: [&str; EVENTS + 2] = [
    NAMES[0],
    NAMES[1],
    NAMES[2],
    NAMES[3],
    NAMES[4],
    NAMES[5],
    NAMES[6],
    NAMES[7],
    "singleflight_flights",
    "singleflight_waiters",
];
