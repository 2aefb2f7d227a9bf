//! The proxy's admin endpoints: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (it accepts traffic; 503 while it
//! drains), `/flights` (the keys with requests waiting now, as JSON) and
//! `POST /purge` (drops kept responses).
//!
//! Every series under `group="proxy"` is copied, on each scrape, from one
//! snapshot of the layer's and its group's counters, so no two disagree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics::{Counter, Gauge};
use serde::Deserialize;
use singleflight_tower::Purge;

use super::server::Proxy;
use crate::prom::{GroupCounters, Registry};

/// The layer's own counters and gauges, beyond its group's.
struct LayerSeries {
    counters: [Counter; 6],
    memo_entries: Gauge,
    memo_bytes: Gauge,
}

struct Admin {
    proxy: Arc<Proxy>,
    registry: Registry,
    layer: LayerSeries,
    group: GroupCounters,
    ready: Arc<AtomicBool>,
}

const GROUP: [(&str, &str); 1] = [("group", "proxy")];

/// The admin router; `ready` turns false when the drain starts.
pub(super) fn router(proxy: Arc<Proxy>, registry: Registry, ready: Arc<AtomicBool>) -> Router {
    let counter = |name, help| registry.counter(name, help, &GROUP);
    let layer = LayerSeries {
        counters: [
            counter(
                "singleflight_bypassed_total",
                "GET/HEAD requests sent straight through (a body, credentials, opted out, private).",
            ),
            counter(
                "singleflight_refetched_total",
                "Coalesced requests that sent their own request after all.",
            ),
            counter(
                "singleflight_joined_total",
                "Requests that joined a flight's body while it streamed.",
            ),
            counter(
                "singleflight_upstream_errors_total",
                "Flights whose upstream failed (502/504).",
            ),
            counter(
                "singleflight_stale_if_error_total",
                "Requests answered from the memo because the upstream failed.",
            ),
            counter(
                "singleflight_max_wait_bypasses_total",
                "Requests that went upstream on their own past --max-wait.",
            ),
        ],
        memo_entries: registry.gauge(
            "singleflight_memo_entries",
            "Responses kept in the memo now.",
            &GROUP,
        ),
        memo_bytes: registry.gauge(
            "singleflight_memo_bytes",
            "Weight of the kept responses now, in bytes (--memo-max-bytes bounds it).",
            &GROUP,
        ),
    };
    let group = GroupCounters::new(&registry, "proxy");
    let admin = Arc::new(Admin {
        proxy,
        registry,
        layer,
        group,
        ready,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/flights", get(flights))
        .route("/purge", post(purge))
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let coalesce = &admin.proxy.coalesce;
    let s = coalesce.stats();
    let values = [
        s.bypassed,
        s.refetched,
        s.joined,
        s.upstream_errors,
        s.stale_if_error,
        s.max_wait_bypasses,
    ];
    for (counter, value) in admin.layer.counters.iter().zip(values) {
        counter.absolute(value);
    }
    admin.layer.memo_entries.set(s.memo_entries as f64);
    admin.layer.memo_bytes.set(s.memo_bytes as f64);
    if let Some(mut group) = coalesce.group_stats() {
        // The memo and the wait limit are the layer's: its counts are the
        // group's for those.
        group.memo_hits = s.memo_hits;
        group.stale_hits = s.stale_hits + s.stale_if_error;
        group.timeouts += s.max_wait_timeouts;
        admin.group.update(&group);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.registry.render(),
    )
}

async fn readyz(State(admin): State<Arc<Admin>>) -> (StatusCode, &'static str) {
    if admin.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

/// The flights with requests waiting now, most waiters first.
async fn flights(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let flights: Vec<_> = admin
        .proxy
        .coalesce
        .in_progress()
        .into_iter()
        .map(|flight| {
            serde_json::json!({
                "key": flight.key,
                "age_ms": u64::try_from(flight.age.as_millis()).unwrap_or(u64::MAX),
                "waiters": flight.waiters,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::Value::Array(flights))
}

/// What `POST /purge` drops: exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    path: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    all: bool,
}

const PURGE_USAGE: &str =
    r#"send one of {"path": "/exact/path?and=query"}, {"prefix": "/some/"}, {"all": true}"#;

async fn purge(State(admin): State<Arc<Admin>>, body: Bytes) -> impl IntoResponse {
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_purge(&format!("not a purge request ({error})")),
    };
    let purge = match (request.path, request.prefix, request.all) {
        (Some(path), None, false) if path.starts_with('/') => Purge::Path(path),
        (None, Some(prefix), false) if prefix.starts_with('/') => Purge::Prefix(prefix),
        (None, None, true) => Purge::All,
        (Some(_), None, false) | (None, Some(_), false) => {
            return bad_purge("a path or prefix starts with /");
        }
        _ => return bad_purge("exactly one of path, prefix or all"),
    };
    let purged = admin.proxy.coalesce.purge(&purge);
    tracing::info!("purged {purged} kept responses ({purge:?})");
    json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
}

fn bad_purge(what: &str) -> axum::response::Response {
    (
        StatusCode::BAD_REQUEST,
        format!("bad purge: {what}; {PURGE_USAGE}\n"),
    )
        .into_response()
}

fn json(status: StatusCode, value: &serde_json::Value) -> axum::response::Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}
