//! A Prometheus registry per server instance.
//!
//! Each server owns its recorder instead of installing a global one, so that
//! several servers in one process (the demo, the tests) keep separate counts.

use std::fmt;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use singleflight::policy::Stats;

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The metrics of one server, rendered as Prometheus text on `GET /metrics`.
pub(crate) struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new() -> Self {
        // Histograms as histograms (buckets), not summaries: they add up
        // across instances.
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&SECONDS_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let registry = Self { recorder, handle };
        registry
            .gauge(
                "singleflight_build_info",
                "The running build: always 1, its version as a label.",
                &[("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        registry
    }

    /// A histogram of durations in seconds named `name` with `labels`.
    pub(crate) fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Histogram {
        self.recorder
            .describe_histogram(name.into(), Some(Unit::Seconds), help.into());
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// A counter named `name` with `labels`; the same name and labels give the same counter.
    pub(crate) fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        self.recorder
            .describe_counter(name.into(), Some(Unit::Count), help.into());
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// A gauge named `name` with `labels`.
    pub(crate) fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Gauge {
        self.recorder
            .describe_gauge(name.into(), Some(Unit::Count), help.into());
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }
}

/// Bucket bounds of the duration histograms, in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The group's counters ([`Stats`]), every one of them, copied into the
/// registry on each scrape from one snapshot.
pub(crate) struct GroupCounters {
    calls: Counter,
    executions: Counter,
    shared: Counter,
    memo_hits: Counter,
    stale_hits: Counter,
    timeouts: Counter,
    cancellations: Counter,
    panics: Counter,
    flights: Gauge,
    waiters: Gauge,
}

impl GroupCounters {
    pub(crate) fn new(registry: &Registry, group: &'static str) -> Self {
        let counter = |name, help| registry.counter(name, help, &[("group", group)]);
        let gauge = |name, help| registry.gauge(name, help, &[("group", group)]);
        Self {
            calls: counter("singleflight_calls_total", "Calls made to the group."),
            executions: counter(
                "singleflight_executions_total",
                "Times the group ran the work (upstream requests of its flights).",
            ),
            shared: counter(
                "singleflight_shared_total",
                "Calls that received a result shared with other calls.",
            ),
            memo_hits: counter(
                "singleflight_memo_hits_total",
                "Calls answered from the memo, fresh.",
            ),
            stale_hits: counter(
                "singleflight_stale_hits_total",
                "Calls answered from the memo past their lifetime (while a refresh runs, or the upstream failed).",
            ),
            timeouts: counter(
                "singleflight_timeouts_total",
                "Calls that stopped waiting at their wait limit.",
            ),
            cancellations: counter(
                "singleflight_cancellations_total",
                "Flights dropped when every caller left.",
            ),
            panics: counter("singleflight_panics_total", "Flights whose work panicked."),
            flights: gauge("singleflight_flights", "Flights in progress now."),
            waiters: gauge(
                "singleflight_waiters",
                "Callers waiting on another caller's flight now.",
            ),
        }
    }

    pub(crate) fn update(&self, stats: &Stats) {
        self.calls.absolute(stats.calls);
        self.executions.absolute(stats.executions);
        self.shared.absolute(stats.shared);
        self.memo_hits.absolute(stats.memo_hits);
        self.stale_hits.absolute(stats.stale_hits);
        self.timeouts.absolute(stats.timeouts);
        self.cancellations.absolute(stats.cancellations);
        self.panics.absolute(stats.panics);
        self.flights.set(stats.flights as f64);
        self.waiters.set(stats.waiters as f64);
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|&(k, v)| Label::from_static_parts(k, v))
        .collect();
    Key::from_parts(name, labels)
}

/// Reads the value of a counter or gauge from Prometheus text, summing over
/// every series of that name whose labels contain `label` (if given).
///
/// # Examples
///
/// ```
/// let text = "# TYPE upstream_requests_total counter\nupstream_requests_total 7\n";
/// assert_eq!(singleflight_cli::read_metric(text, "upstream_requests_total", None), Some(7.0));
/// assert_eq!(singleflight_cli::read_metric(text, "other", None), None);
/// ```
pub fn read_metric(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if series_name != name || label.is_some_and(|l| !labels.contains(l)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
