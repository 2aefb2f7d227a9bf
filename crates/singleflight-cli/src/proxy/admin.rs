//! The proxy's admin endpoints: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (it accepts traffic; 503 while it
//! drains).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use metrics::{Counter, Gauge};

use super::server::Proxy;
use crate::prom::{GroupCounters, Registry};

struct Admin {
    proxy: Arc<Proxy>,
    registry: Registry,
    stats: [Counter; 6],
    flights: Gauge,
    group: GroupCounters,
    ready: Arc<AtomicBool>,
}

/// The admin router; `ready` turns false when the drain starts.
pub(super) fn router(proxy: Arc<Proxy>, registry: Registry, ready: Arc<AtomicBool>) -> Router {
    let stats = [
        registry.counter(
            "proxy_coalesced_total",
            "GET/HEAD requests that led or joined a flight.",
            &[],
        ),
        registry.counter(
            "proxy_bypassed_total",
            "GET/HEAD requests sent straight through.",
            &[],
        ),
        registry.counter(
            "proxy_flights_total",
            "Upstream requests made on behalf of coalesced requests.",
            &[],
        ),
        registry.counter(
            "proxy_shared_total",
            "Coalesced requests whose response was shared.",
            &[],
        ),
        registry.counter(
            "proxy_refetched_total",
            "Coalesced requests that fetched their own response after all.",
            &[],
        ),
        registry.counter(
            "proxy_upstream_errors_total",
            "Flights whose upstream failed (502/504).",
            &[],
        ),
    ];
    let flights = registry.gauge("proxy_flights_in_progress", "Flights under way now.", &[]);
    let group = GroupCounters::new(&registry, "proxy");
    let admin = Arc::new(Admin {
        proxy,
        registry,
        stats,
        flights,
        group,
        ready,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl axum::response::IntoResponse {
    let s = admin.proxy.coalesce.stats();
    let values = [
        s.coalesced,
        s.bypassed,
        s.flights,
        s.shared,
        s.refetched,
        s.upstream_errors,
    ];
    for (counter, value) in admin.stats.iter().zip(values) {
        counter.absolute(value);
    }
    admin.flights.set(admin.proxy.coalesce.flights() as f64);
    if let Some(stats) = admin.proxy.coalesce.group_stats() {
        admin.group.update(&stats);
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
