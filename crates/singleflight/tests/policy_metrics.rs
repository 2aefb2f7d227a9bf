//! With feature `metrics`, a group's counters and gauges reach the `metrics`
//! facade, labelled with the group's name, and agree with `stats()`.
#![cfg(feature = "metrics")]

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use singleflight::policy::METRIC_NAMES;
use singleflight::sync::Group;

#[test]
fn a_group_built_before_the_recorder_reports_to_it_with_the_group_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Built before the recorder: handles are registered at the first call,
    // with the recorder in force then, and used from then on.
    let group = Group::<String, u32>::builder()
        .memo_all(std::time::Duration::from_secs(60))
        .metrics("profiles")
        .build();
    metrics::with_local_recorder(&recorder, || group.call("a", || 1));
    group.call("a", || 2);
    assert!(group.call_checked("b", || panic!("boom")).is_err());

    let stats = group.stats().expect("metrics on");
    let mut seen = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, [("group", "profiles")], "{}", key.name());
        let expected = match key.name() {
            "singleflight_calls_total" => stats.calls,
            "singleflight_executions_total" => stats.executions,
            "singleflight_shared_total" => stats.shared,
            "singleflight_memo_hits_total" => stats.memo_hits,
            "singleflight_stale_hits_total" => stats.stale_hits,
            "singleflight_timeouts_total" => stats.timeouts,
            "singleflight_cancellations_total" => stats.cancellations,
            "singleflight_panics_total" => stats.panics,
            "singleflight_flights" => stats.flights,
            "singleflight_waiters" => stats.waiters,
            other => panic!("unexpected metric {other}"),
        };
        match value {
            DebugValue::Counter(count) => assert_eq!(count, expected, "{}", key.name()),
            DebugValue::Gauge(gauge) => assert_eq!(gauge.into_inner(), expected as f64),
            DebugValue::Histogram(_) => panic!("no histograms"),
        }
        seen += 1;
    }
    assert_eq!(seen, METRIC_NAMES.len());
    assert_eq!(
        (stats.calls, stats.executions, stats.memo_hits, stats.panics),
        (3, 2, 1, 1)
    );
}
