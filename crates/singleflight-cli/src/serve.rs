//! `singleflight serve`: the demo server, Go's x/sync/singleflight demo in
//! Rust: `/normal` and `/singleflight` in front of one upstream.
//!
//! `GET /normal` calls the upstream on every request; `GET /singleflight`
//! shares one upstream call among the requests that arrive while it runs,
//! through [`singleflight::future::Group`]. Each request logs its processing
//! time, the upstream's status and (for `/singleflight`) whether its result
//! was shared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use http_body_util::BodyExt as _;
use metrics::Counter;
use singleflight::future::Group;

use crate::BadInput;
use crate::args::{HttpUrl, fmt_duration, parse_duration, parse_http_url, parse_listen};
use crate::net::{
    ClientSettings, HttpClient, Listening, Server, bind, describe_failure, probe_upstream,
    with_timeout,
};
use crate::prom::{GroupCounters, Registry};
use crate::upstream::{self, UpstreamOpts};

/// The response header that tells whether a `/singleflight` response was shared.
pub const SHARED_HEADER: &str = "x-singleflight-shared";

/// Options of `singleflight serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeOpts {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The upstream to call, `http://` or `https://`; without it an embedded
    /// upstream is started on a free loopback port.
    #[arg(long, value_parser = parse_http_url)]
    pub upstream: Option<HttpUrl>,
    /// A CA certificate (PEM) an HTTPS upstream may be signed by, trusted
    /// besides the platform's roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// The embedded upstream's delay (ignored with --upstream).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// The longest a request may take; past it the answer is 504.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long to wait for requests in flight on shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Do not log a line per request.
    #[arg(long)]
    pub quiet: bool,
    /// A Redis, `redis://HOST:PORT`, through which `/singleflight` shares
    /// one upstream call with every `serve` that uses it, not only among
    /// this one's requests. When it is away, requests coalesce locally.
    #[arg(long)]
    pub redis: Option<String>,
}

/// A running `serve`, with its embedded upstream if it started one.
#[derive(Debug)]
pub struct Running {
    /// The demo server.
    pub server: Server,
    /// The embedded upstream, when no `--upstream` was given.
    pub upstream: Option<upstream::Running>,
    /// The URL the server calls.
    pub upstream_url: HttpUrl,
}

impl Running {
    /// Shuts the server down, then the embedded upstream; returns whether
    /// every request in flight finished within `deadline`.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        let done = self.server.shutdown(deadline).await;
        if let Some(up) = self.upstream {
            up.shutdown(deadline).await;
        }
        done
    }
}

/// The upstream's answer as the Go demo reports it: its status code, or
/// why it failed. It travels through Redis with `--redis`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Fetched {
    Status(u16),
    Unreachable(String),
    TimedOut,
}

struct Endpoint {
    requests: Counter,
    upstream_calls: Counter,
}

struct App {
    client: HttpClient,
    upstream: HttpUrl,
    timeout: Duration,
    quiet: bool,
    group: Group<String, Fetched>,
    /// With `--redis`: `/singleflight` coalesces across instances.
    redis: Option<singleflight_redis::Group<Fetched>>,
    normal: Endpoint,
    coalesced: Endpoint,
    group_counters: GroupCounters,
    registry: Registry,
}

/// Starts the server (and the embedded upstream when no `--upstream` is given).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use clap::Parser;
/// use singleflight_cli::{Cli, Command, serve};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cli = Cli::parse_from(["singleflight", "serve", "--listen", "127.0.0.1:0", "--delay", "10ms"]);
/// let Command::Serve(opts) = cli.command else { unreachable!() };
/// let running = serve::start(&opts).await?;
/// assert!(running.upstream.is_some(), "no --upstream: an embedded one");
/// running.shutdown(Duration::from_secs(1)).await;
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// An address that cannot be listened on, an unreadable `--upstream-ca`, or
/// an upstream that cannot be reached (or whose certificate is not trusted).
pub async fn start(opts: &ServeOpts) -> anyhow::Result<Running> {
    let client = ClientSettings::new(1024, opts.upstream_ca.as_deref())?;
    let (upstream_server, upstream_url) = match &opts.upstream {
        Some(url) => {
            probe_upstream(url, &client, "--upstream")
                .await
                .map_err(BadInput::new)?;
            (None, url.clone())
        }
        None => {
            let up = upstream::start(&UpstreamOpts::embedded(opts.delay)).await?;
            let url =
                parse_http_url(&format!("{}/status", up.url())).map_err(anyhow::Error::msg)?;
            (Some(up), url)
        }
    };
    let listener = match bind(opts.listen, "--listen").await {
        Ok(l) => l,
        Err(e) => {
            // Nothing half-started: stop the embedded upstream before failing.
            if let Some(up) = upstream_server {
                up.shutdown(Duration::from_secs(1)).await;
            }
            return Err(e);
        }
    };
    let registry = Registry::new();
    let endpoint = |name: &'static str| Endpoint {
        requests: registry.counter(
            "serve_requests_total",
            "Requests answered, per endpoint.",
            &[("endpoint", name)],
        ),
        upstream_calls: registry.counter(
            "serve_upstream_calls_total",
            "Calls made to the upstream, per endpoint.",
            &[("endpoint", name)],
        ),
    };
    let app = Arc::new(App {
        client: client.client(),
        upstream: upstream_url.clone(),
        timeout: opts.timeout,
        quiet: opts.quiet,
        // Counting is on so /metrics can show the group's own view.
        group: Group::builder().metrics("serve").build(),
        redis: match &opts.redis {
            Some(url) => Some(
                singleflight_redis::Group::builder(url.as_str())
                    .prefix("singleflight-serve")
                    .build()
                    .map_err(|e| {
                        BadInput::new(format!("--redis {url}: {e}; give it as redis://HOST:PORT"))
                    })?,
            ),
            None => None,
        },
        normal: endpoint("normal"),
        coalesced: endpoint("singleflight"),
        group_counters: GroupCounters::new(&registry, "serve"),
        registry,
    });
    let router = Router::new()
        .route("/normal", get(normal))
        .route("/singleflight", get(coalesced))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app);
    let server = Server::router(listener, Listening::default(), router)?;
    Ok(Running {
        server,
        upstream: upstream_server,
        upstream_url,
    })
}

async fn fetch_status(client: &HttpClient, url: &HttpUrl, limit: Duration) -> Fetched {
    let call = async {
        let response = client
            .get(url.uri().clone())
            .await
            .map_err(|e| describe_failure(&e, url))?;
        let status = response.status().as_u16();
        // Read the body so the connection goes back to the pool.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok::<u16, String>(status)
    };
    match with_timeout(limit, call).await {
        Some(Ok(status)) => Fetched::Status(status),
        Some(Err(reason)) => Fetched::Unreachable(reason),
        None => Fetched::TimedOut,
    }
}

fn respond(
    app: &App,
    path: &str,
    started: Instant,
    fetched: &Fetched,
    shared: Option<bool>,
) -> Response {
    let elapsed = started.elapsed();
    let (code, body) = match fetched {
        Fetched::Status(s) => (StatusCode::OK, format!("Status: {s}\n")),
        Fetched::Unreachable(why) => (
            StatusCode::BAD_GATEWAY,
            format!("upstream unreachable: {why}\n"),
        ),
        Fetched::TimedOut => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("upstream timed out after {}\n", fmt_duration(app.timeout)),
        ),
    };
    if !app.quiet {
        let status = match fetched {
            Fetched::Status(s) => s.to_string(),
            Fetched::Unreachable(_) => "unreachable".to_string(),
            Fetched::TimedOut => "timeout".to_string(),
        };
        match shared {
            Some(shared) => tracing::info!(
                "{path} processing time: {} | status: {status} | shared: {shared}",
                fmt_duration(elapsed)
            ),
            None => tracing::info!(
                "{path} processing time: {} | status: {status}",
                fmt_duration(elapsed)
            ),
        }
    }
    let mut response = (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response();
    if let Some(shared) = shared {
        response.headers_mut().insert(
            SHARED_HEADER,
            HeaderValue::from_static(if shared { "true" } else { "false" }),
        );
    }
    response
}

async fn normal(State(app): State<Arc<App>>) -> Response {
    let started = Instant::now();
    app.normal.requests.increment(1);
    app.normal.upstream_calls.increment(1);
    let fetched = fetch_status(&app.client, &app.upstream, app.timeout).await;
    respond(&app, "/normal", started, &fetched, None)
}

async fn coalesced(State(app): State<Arc<App>>) -> Response {
    let started = Instant::now();
    app.coalesced.requests.increment(1);
    let leader_app = Arc::clone(&app);
    let work = move || async move {
        leader_app.coalesced.upstream_calls.increment(1);
        fetch_status(&leader_app.client, &leader_app.upstream, leader_app.timeout).await
    };
    let Some(redis) = &app.redis else {
        let out = app.group.call("status", work).await;
        return respond(&app, "/singleflight", started, &out.value, Some(out.shared));
    };
    // One key per upstream: instances in front of different upstreams
    // never share.
    let key = app.upstream.uri().to_string();
    let (fetched, shared) = match redis.call(key, work).await {
        Ok(out) => {
            let shared = out.shared || out.source == singleflight_redis::Source::Remote;
            (out.value, shared)
        }
        Err(error) => (Fetched::Unreachable(error.to_string()), false),
    };
    respond(&app, "/singleflight", started, &fetched, Some(shared))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    if let Some(stats) = app.group.stats() {
        app.group_counters.update(&stats);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.registry.render(),
    )
}
