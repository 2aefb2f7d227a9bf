//! A Prometheus registry per server instance.
//!
//! Each server owns its recorder instead of installing a global one, so that
//! several servers in one process (the demo, the tests) keep separate counts.

use std::fmt;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
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
