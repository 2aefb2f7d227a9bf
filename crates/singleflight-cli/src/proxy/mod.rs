//! `singleflight proxy`: a reverse proxy that coalesces identical concurrent
//! requests, built on [`singleflight_tower::CoalesceLayer`].
//!
//! - `config`: the settings, one field per flag.
//! - `forward`: one request to the upstream, its headers, its failures.
//! - `server`: one client request, through the layer, into the access log.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`, `/flights`, `POST /purge`.
//!
//! The listener serves HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN under
//! TLS) on one port; a semaphore caps connections, hyper caps request heads,
//! request bodies are capped; every upstream request has a timeout, and
//! every waiter a wait limit (`--max-wait`: the waiter leaves with a 504,
//! or goes upstream on its own with `--on-max-wait bypass`; the flight goes
//! on for the others). With `--memo-ttl` the layer is an HTTP cache
//! (freshness, `Age`, stale-while-revalidate, stale-if-error, a byte
//! budget, purges). The proxy starts even when its
//! upstream is down, answering 502 until it is up. On SIGINT/SIGTERM
//! `/readyz` fails, the listener closes and requests in flight get
//! `--shutdown-timeout` to finish; a second signal stops at once.

mod admin;
mod config;
mod forward;
mod idle;
mod redis;
mod server;

pub use config::{OnMaxWaitArg, ProxyOpts};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use singleflight_tower::Served;
use tower::Layer as _;

use crate::net::{ClientSettings, Server, StopSignals, bind, drain_on_signal, probe_upstream};
use crate::prom::Registry;
use forward::{ArcForward, Forward};
use server::{Handling, Proxy};

/// A running proxy.
pub struct Running {
    server: Server,
    admin: Option<Server>,
    ready: Arc<AtomicBool>,
    shutdown_timeout: Duration,
    proxy: Arc<Proxy>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("server", &self.server)
            .field("admin", &self.admin)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Where the proxy listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The proxy's base URL (`https://` with TLS).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The admin server's base URL, if one runs.
    pub fn admin_url(&self) -> Option<String> {
        self.admin.as_ref().map(Server::url)
    }

    /// What the coalescing layer has counted so far: what `/metrics`
    /// exports under `group="proxy"`, with [`Running::group_stats`].
    pub fn stats(&self) -> singleflight_tower::Stats {
        self.proxy.coalesce.stats()
    }

    /// The counters of the layer's group of flights.
    pub fn group_stats(&self) -> Option<singleflight::policy::Stats> {
        self.proxy.coalesce.group_stats()
    }

    /// Says the proxy no longer takes traffic: `/readyz` answers 503 from
    /// now on. [`Running::shutdown`] starts with this.
    pub fn stop_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Fails `/readyz`, stops accepting, lets requests in flight finish for
    /// at most the configured shutdown timeout; returns whether they all did.
    /// The admin server stops last, so `/readyz` says "draining" meanwhile.
    pub async fn shutdown(self) -> bool {
        self.stop_ready();
        let done = self.server.shutdown(self.shutdown_timeout).await;
        if let Some(admin) = self.admin {
            admin.shutdown(Duration::from_secs(1)).await;
        }
        done
    }
}

/// Starts the proxy (and its admin server). An upstream that cannot be
/// reached yet is one warning: requests get 502 until it can.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight_cli::upstream::{self, UpstreamOpts};
/// use singleflight_cli::{Command, proxy};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let up = upstream::start(&UpstreamOpts::embedded(Duration::ZERO)).await?;
/// let url = up.url();
/// let cli = singleflight_cli::parse_from(["singleflight", "proxy", "--listen", "127.0.0.1:0", "--upstream", &url])?;
/// let Command::Proxy(opts) = cli.command else { unreachable!() };
/// let running = proxy::start(opts).await?;
/// assert!(running.url().starts_with("http://127.0.0.1:"));
/// assert!(running.shutdown().await);
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// Settings that do not go together, unusable TLS files, or an address that
/// cannot be listened on.
pub async fn start(opts: ProxyOpts) -> anyhow::Result<Running> {
    opts.check()?;
    let upstream = opts.upstream()?.clone();
    let mut listening = opts.listening()?;
    let settings = ClientSettings::new(1024, opts.upstream_ca.as_deref())?
        .with_connect_timeout(opts.upstream_timeout);
    let listener = bind(opts.listen, "--listen").await?;
    let admin_listener = match opts.admin {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "--admin {addr} is not on loopback: whoever reaches it can purge the memo; give a bare port to listen on 127.0.0.1"
                );
            }
            Some(bind(addr, "--admin").await?)
        }
        None => None,
    };
    if let Err(why) = probe_upstream(&upstream, &settings, "--upstream").await {
        tracing::warn!("{why}; starting anyway, answering 502 until it is up");
    }

    let registry = Registry::new();
    let forward = ArcForward(Arc::new(Forward {
        client: settings.client(),
        upstream,
        timeout: opts.upstream_timeout,
        preserve_host: opts.preserve_host,
        upstream_requests: registry.counter(
            "singleflight_upstream_requests_total",
            "Requests sent to the upstream (flights, bypasses, refetches and refreshes).",
            &[],
        ),
        upstream_seconds: registry.histogram(
            "singleflight_upstream_duration_seconds",
            "From sending a request upstream to its response head (or its failure).",
            &[],
        ),
        redis: match &opts.redis {
            Some(url) => Some(
                redis::RedisShare::new(url, opts.redis_max_body_bytes()).map_err(|e| {
                    crate::BadInput::new(format!(
                        "--redis {url}: {e}; give it as redis://HOST:PORT"
                    ))
                })?,
            ),
            None => None,
        },
    }));
    let durations = Arc::new(Served::ALL.map(|served| {
        registry.histogram(
            "singleflight_request_duration_seconds",
            "From a request's arrival to the end of its response body, by where the response came from.",
            &[("source", served.as_str())],
        )
    }));
    let proxy = Arc::new(Proxy {
        coalesce: opts.coalesce_layer().layer(forward),
        requests: registry.counter("singleflight_requests_total", "Requests received.", &[]),
        durations,
        handling: Handling {
            max_body_bytes: opts.max_body_bytes,
            tls: listening.tls.is_some(),
            access_log: !opts.quiet,
        },
    });
    listening.connections = Some(registry.gauge(
        "singleflight_connections",
        "Client connections open now.",
        &[],
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let admin = match admin_listener {
        Some(l) => Some(Server::router(
            l,
            Default::default(),
            admin::router(Arc::clone(&proxy), registry, Arc::clone(&ready)),
        )?),
        None => None,
    };
    let server = Server::spawn(listener, listening, {
        let proxy = Arc::clone(&proxy);
        move |peer| {
            let proxy = Arc::clone(&proxy);
            hyper::service::service_fn(move |request| Arc::clone(&proxy).handle(request, peer))
        }
    })?;
    Ok(Running {
        server,
        admin,
        ready,
        shutdown_timeout: opts.shutdown_timeout,
        proxy,
    })
}

/// Runs the proxy until Ctrl-C or SIGTERM.
pub(crate) async fn run(opts: ProxyOpts) -> anyhow::Result<()> {
    let signals = StopSignals::install()?;
    let upstream = opts.upstream()?.clone();
    let shutdown_timeout = opts.shutdown_timeout;
    let running = start(opts).await?;
    match running.admin_url() {
        Some(admin) => tracing::info!(
            "proxy listening on {} -> {upstream} (/metrics, /healthz, /readyz, /flights, POST /purge on {admin})",
            running.url(),
        ),
        None => tracing::info!("proxy listening on {} -> {upstream}", running.url()),
    }
    drain_on_signal(signals, "proxy", shutdown_timeout, || running.shutdown()).await
}
