//! `singleflight upstream`: a slow upstream that counts what it serves.
//!
//! Every path but `/metrics` and `/healthz` waits `--delay` (plus up to
//! `--jitter`), counts the request in `upstream_requests_total` and answers
//! `--status` with a `--body-bytes` body, whole or in `--chunks` chunks
//! `--chunk-interval` apart. It is the embedded upstream of
//! `serve` and `demo`, so nothing outside this machine is needed.

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::Args;
use http_body_util::channel::Channel;
use metrics::Counter;
use tokio::sync::watch;

use crate::BadInput;
use crate::args::{TlsFlags, parse_duration, parse_listen};
use crate::net::{Listening, Server, bind};
use crate::prom::Registry;

/// Options of `singleflight upstream`.
#[derive(Args, Clone, Debug)]
pub struct UpstreamOpts {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// How long each request takes before it is answered.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// A random extra delay, uniform between zero and this.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub jitter: Duration,
    /// The HTTP status code to answer with.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// The size of the response body in bytes (default: a short "ok").
    #[arg(long)]
    pub body_bytes: Option<usize>,
    /// Send the body in this many chunks, without a Content-Length
    /// (chunked), `--chunk-interval` apart; 1 sends it whole.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: u32,
    /// The time between two chunks of the body.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub chunk_interval: Duration,
    /// How long to wait for requests in flight on shutdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// TLS on the listener.
    #[command(flatten)]
    pub tls: TlsFlags,
}

impl UpstreamOpts {
    /// Options for an embedded upstream on a free loopback port.
    pub fn embedded(delay: Duration) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            delay,
            jitter: Duration::ZERO,
            status: 200,
            body_bytes: None,
            chunks: 1,
            chunk_interval: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(5),
            tls: TlsFlags::default(),
        }
    }
}

struct Upstream {
    delay: Duration,
    jitter: Duration,
    status: StatusCode,
    body: Bytes,
    chunks: u32,
    chunk_interval: Duration,
    requests: Counter,
    arrivals: watch::Sender<u64>,
    registry: Registry,
    random: RandomState,
}

/// A running upstream.
#[derive(Debug)]
pub struct Running {
    /// The server; [`Server::shutdown`] stops it.
    pub server: Server,
    arrivals: watch::Receiver<u64>,
}

impl Running {
    /// The base URL, `http://IP:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The number of requests that have arrived so far (the value of
    /// `upstream_requests_total`), as a channel one can wait on.
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.clone()
    }

    /// Shuts the upstream down; see [`Server::shutdown`].
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.server.shutdown(deadline).await
    }
}

/// Starts the upstream; it serves until it is shut down.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight_cli::upstream::{self, UpstreamOpts};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let up = upstream::start(&UpstreamOpts::embedded(Duration::from_millis(10))).await?;
/// assert!(up.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(*up.arrivals().borrow(), 0);
/// assert!(up.shutdown(Duration::from_secs(1)).await);
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// A status code out of range, unusable TLS files, or an address that
/// cannot be listened on.
pub async fn start(opts: &UpstreamOpts) -> anyhow::Result<Running> {
    let status = StatusCode::from_u16(opts.status).map_err(|_| {
        BadInput::new(format!(
            "--status {} is not an HTTP status code; use one from 100 to 999",
            opts.status
        ))
    })?;
    let body = match opts.body_bytes {
        None => Bytes::from_static(b"ok\n"),
        Some(n) => Bytes::from(vec![b'.'; n]),
    };
    let registry = Registry::new();
    let requests = registry.counter(
        "upstream_requests_total",
        "Requests served by the upstream (not /metrics nor /healthz).",
        &[],
    );
    let (arrivals, arrivals_rx) = watch::channel(0);
    let state = Arc::new(Upstream {
        delay: opts.delay,
        jitter: opts.jitter,
        status,
        body,
        chunks: opts.chunks,
        chunk_interval: opts.chunk_interval,
        requests,
        arrivals,
        registry,
        random: RandomState::new(),
    });
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(answer)
        .with_state(state);
    let listening = Listening {
        tls: opts.tls.server_config()?,
        ..Listening::default()
    };
    let listener = bind(opts.listen, "--listen").await?;
    Ok(Running {
        server: Server::router(listener, listening, router)?,
        arrivals: arrivals_rx,
    })
}

async fn answer(State(up): State<Arc<Upstream>>) -> Response {
    // Counted on arrival: every request that reached the upstream costs it work.
    up.requests.increment(1);
    up.arrivals.send_modify(|n| *n += 1);
    let mut delay = up.delay;
    if !up.jitter.is_zero() {
        // A fresh hash per request is a cheap uniform draw; no crypto needed.
        let draw = up.random.hash_one(std::time::Instant::now()) as f64 / u64::MAX as f64;
        delay += up.jitter.mul_f64(draw);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if up.chunks > 1 {
        let (status, interval) = (up.status, up.chunk_interval);
        let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
        let chunks = chunks_of(&up.body, up.chunks);
        tokio::spawn(async move {
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                if sender.send_data(chunk).await.is_err() {
                    // The client went away.
                    return;
                }
            }
        });
        return (
            status,
            [(header::CONTENT_TYPE, "text/plain")],
            axum::body::Body::new(body),
        )
            .into_response();
    }
    (
        up.status,
        [(header::CONTENT_TYPE, "text/plain")],
        up.body.clone(),
    )
        .into_response()
}

/// `body` cut into `count` slices of nearly equal length (none empty unless
/// the body is shorter than `count`).
fn chunks_of(body: &Bytes, count: u32) -> Vec<Bytes> {
    let count = count as usize;
    (0..count)
        .map(|i| body.slice(body.len() * i / count..body.len() * (i + 1) / count))
        .filter(|chunk| !chunk.is_empty())
        .collect()
}

async fn metrics(State(up): State<Arc<Upstream>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        up.registry.render(),
    )
}
