//! `singleflight proxy`: a reverse proxy that coalesces identical concurrent
//! requests, built on [`singleflight_tower::CoalesceLayer`].
//!
//! Each connection is served by hyper with a cap on header size; a semaphore
//! caps connections; request bodies are capped; every upstream request has a
//! timeout, and every waiter a wait limit (`--max-wait`: the waiter leaves
//! with a 504, the flight goes on for the others). On SIGINT/SIGTERM the
//! listener closes and requests in flight get `--shutdown-timeout` to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use clap::Args;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use serde::Deserialize;
use singleflight_tower::{BoxError, Coalesce, CoalesceLayer, CoalescedBody};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tower::{Layer as _, ServiceExt as _};

use crate::BadInput;
use crate::args::{HttpUrl, fmt_duration, parse_duration, parse_http_url, parse_listen};
use crate::net::{Server, StopSignals, bind, probe_upstream};
use crate::prom::{GroupCounters, Registry};

/// Options of `singleflight proxy`; each overrides the same key of `--config`.
#[derive(Args, Clone, Debug, Default)]
pub struct ProxyOpts {
    /// Address to listen on [default: 127.0.0.1:8082].
    #[arg(long, value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// The upstream, `http://HOST:PORT` (its path, if any, prefixes every request's).
    #[arg(long, value_parser = parse_http_url)]
    pub upstream: Option<HttpUrl>,
    /// A TOML file with any of these options (same names, `_` for `-`); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep a successful response this long after its flight (memoisation).
    #[arg(long, value_parser = parse_duration)]
    pub memo_ttl: Option<Duration>,
    /// Past the memo TTL, serve the old response this long while one refresh runs.
    #[arg(long, value_parser = parse_duration)]
    pub stale: Option<Duration>,
    /// The longest a request waits for its response head; past it, 504 for
    /// that request while the flight goes on for the others [default: none].
    #[arg(long, value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// The longest an upstream request may take to answer; past it, 504 [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// Address for /metrics and /healthz [default: none].
    #[arg(long, value_parser = parse_listen)]
    pub admin: Option<SocketAddr>,
    /// How long to wait for requests in flight on shutdown [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Connections served at once; more wait to be accepted [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest request head in bytes, at least 8192; larger gets 431 [default: 16384].
    #[arg(long)]
    pub max_header_bytes: Option<usize>,
    /// Largest request body in bytes; larger gets 413 [default: 8388608].
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    /// Do not log a line per request.
    #[arg(long)]
    pub quiet: bool,
}

/// The keys `--config` accepts; anything else is rejected by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    upstream: Option<String>,
    memo_ttl: Option<String>,
    stale: Option<String>,
    max_wait: Option<String>,
    upstream_timeout: Option<String>,
    admin: Option<String>,
    shutdown_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    quiet: Option<bool>,
}

/// The proxy's settings once flags, file and defaults are merged.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The upstream.
    pub upstream: HttpUrl,
    /// Where /metrics and /healthz are served, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Per-waiter limit.
    pub max_wait: Option<Duration>,
    /// Per-upstream-request limit.
    pub upstream_timeout: Duration,
    /// Shutdown deadline.
    pub shutdown_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Request head cap.
    pub max_header_bytes: usize,
    /// Request body cap.
    pub max_body_bytes: u64,
    /// No access log.
    pub quiet: bool,
    /// How long a response is kept after its flight, if at all.
    pub memo_ttl: Option<Duration>,
    /// How long a kept response is served past its TTL while it is refreshed.
    pub stale: Option<Duration>,
}

impl ProxyOpts {
    /// Merges the flags over `--config` over the defaults.
    ///
    /// # Examples
    ///
    /// ```
    /// use clap::Parser;
    /// use singleflight_cli::{Cli, Command};
    ///
    /// let cli = Cli::parse_from(["singleflight", "proxy", "--upstream", "http://127.0.0.1:8081"]);
    /// let Command::Proxy(opts) = cli.command else { unreachable!() };
    /// let config = opts.resolve().unwrap();
    /// assert_eq!(config.listen.to_string(), "127.0.0.1:8082");
    /// assert_eq!(config.upstream_timeout.as_secs(), 30);
    /// ```
    ///
    /// # Errors
    ///
    /// An unreadable config file, an unknown key or a wrong type in it, a bad
    /// value, a missing upstream, or a setting the proxy cannot honour.
    pub fn resolve(&self) -> anyhow::Result<ProxyConfig> {
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let name = self.config.as_deref().map(Path::display);
        let in_file = |key: &str, e: String| match &name {
            Some(n) => BadInput::new(format!("config {n}: `{key}`: {e}")),
            None => BadInput::new(e),
        };
        let duration = |flag: Option<Duration>,
                        value: &Option<String>,
                        key: &str|
         -> anyhow::Result<Option<Duration>> {
            match (flag, value) {
                (Some(d), _) => Ok(Some(d)),
                (None, Some(text)) => Ok(Some(parse_duration(text).map_err(|e| in_file(key, e))?)),
                (None, None) => Ok(None),
            }
        };
        let address = |flag: Option<SocketAddr>,
                       value: &Option<String>,
                       key: &str|
         -> anyhow::Result<Option<SocketAddr>> {
            match (flag, value) {
                (Some(a), _) => Ok(Some(a)),
                (None, Some(text)) => Ok(Some(parse_listen(text).map_err(|e| in_file(key, e))?)),
                (None, None) => Ok(None),
            }
        };
        let upstream = match (&self.upstream, &file.upstream) {
            (Some(u), _) => u.clone(),
            (None, Some(text)) => parse_http_url(text).map_err(|e| in_file("upstream", e))?,
            (None, None) => {
                return Err(BadInput::new(
                    "no upstream: pass --upstream http://HOST:PORT or set `upstream` in --config",
                )
                .into());
            }
        };
        let memo_ttl = duration(self.memo_ttl, &file.memo_ttl, "memo_ttl")?;
        let stale = duration(self.stale, &file.stale, "stale")?;
        if stale.is_some() && memo_ttl.is_none() {
            return Err(BadInput::new(
                "--stale serves a kept response past its TTL, so it needs --memo-ttl; add --memo-ttl D",
            )
            .into());
        }
        let max_header_bytes = self
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(16 * 1024);
        if max_header_bytes < 8192 {
            return Err(BadInput::new(format!(
                "--max-header-bytes {max_header_bytes} is below the HTTP/1 minimum; use 8192 or more"
            ))
            .into());
        }
        let max_connections = self
            .max_connections
            .or(file.max_connections)
            .unwrap_or(10_000);
        if max_connections == 0 {
            return Err(
                BadInput::new("--max-connections 0 would accept nothing; use 1 or more").into(),
            );
        }
        Ok(ProxyConfig {
            listen: address(self.listen, &file.listen, "listen")?
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8082))),
            upstream,
            admin: address(self.admin, &file.admin, "admin")?,
            max_wait: duration(self.max_wait, &file.max_wait, "max_wait")?,
            upstream_timeout: duration(
                self.upstream_timeout,
                &file.upstream_timeout,
                "upstream_timeout",
            )?
            .unwrap_or(Duration::from_secs(30)),
            shutdown_timeout: duration(
                self.shutdown_timeout,
                &file.shutdown_timeout,
                "shutdown_timeout",
            )?
            .unwrap_or(Duration::from_secs(10)),
            max_connections,
            max_header_bytes,
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(8 << 20),
            quiet: self.quiet || file.quiet.unwrap_or(false),
            memo_ttl,
            stale,
        })
    }
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BadInput::new(format!(
            "cannot read the config {}: {e}; check --config",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
        // toml's message is one sentence; its multi-line snippet is left out.
        let message = e.message().trim().replace('\n', " ");
        BadInput::new(format!(
            "config {}{at}: {message}; fix or remove it",
            path.display()
        ))
        .into()
    })
}

/// The coalescing layer as the proxy's settings ask for it.
fn coalesce_layer(config: &ProxyConfig) -> CoalesceLayer {
    let mut layer = CoalesceLayer::new().metrics("proxy");
    if let Some(ttl) = config.memo_ttl {
        layer = layer.memo(ttl);
        if let Some(grace) = config.stale {
            layer = layer.stale_while_revalidate(grace);
        }
    }
    layer
}

type ProxyBody = BoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// Headers that describe one hop, never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Sends requests to the upstream; never fails: errors become 502/504 responses.
#[derive(Clone)]
struct Forward {
    client: UpstreamClient,
    upstream: HttpUrl,
    timeout: Duration,
    upstream_requests: Counter,
}

impl Forward {
    async fn send(
        self,
        request: Request<Limited<Incoming>>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.target(&parts.uri);
        strip_hop_by_hop(&mut parts.headers);
        if let Some(authority) = self.upstream.uri().authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        let request = Request::from_parts(parts, body.boxed());
        self.upstream_requests.increment(1);
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if caused_by::<LengthLimitError>(&e) => {
                return Ok(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n".into(),
                ));
            }
            Ok(Err(e)) => {
                return Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unreachable: {}\n", chain(&e)),
                ));
            }
            Err(_) => {
                return Ok(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream timed out after {}\n", fmt_duration(self.timeout)),
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ))
    }

    /// The upstream's scheme and authority, its path as a prefix, then the request's path and query.
    fn target(&self, uri: &Uri) -> Uri {
        let base = self.upstream.uri();
        let prefix = base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut parts = base.clone().into_parts();
        parts.path_and_query = format!("{prefix}{path_and_query}").parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

type ForwardFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// What every connection shares.
struct Proxy {
    coalesce: Coalesce<ArcForward>,
    config: ProxyConfig,
    requests: Counter,
}

/// The inner service: cheap to clone, always ready.
#[derive(Clone)]
struct ArcForward(Arc<Forward>);

impl tower::Service<Request<Limited<Incoming>>> for ArcForward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Limited<Incoming>>) -> Self::Future {
        let forward = Forward::clone(&self.0);
        Box::pin(forward.send(request))
    }
}

impl Proxy {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Answer, Infallible> {
        let started = Instant::now();
        self.requests.increment(1);
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let too_large = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > self.config.max_body_bytes);
        let response = if too_large {
            local(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n".into(),
            ))
        } else {
            let request =
                request.map(|body| Limited::new(body, self.config.max_body_bytes as usize));
            let call = self.coalesce.clone().oneshot(request);
            match self.config.max_wait {
                None => match call.await {
                    Ok(response) => response.map(Either::Left),
                    Err(never) => match never {},
                },
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(Ok(response)) => response.map(Either::Left),
                    Ok(Err(never)) => match never {},
                    Err(_) => local(plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("gave up waiting after {}\n", fmt_duration(limit)),
                    )),
                },
            }
        };
        if !self.config.quiet {
            let shared = response
                .headers()
                .get(singleflight_tower::DEFAULT_SHARED_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info!(
                "{method} {path} {} {} shared: {shared}",
                response.status().as_u16(),
                fmt_duration(started.elapsed())
            );
        }
        Ok(response)
    }
}

/// The proxy's answer: the layer's body, or one made here (413, 504 on `--max-wait`).
type Answer = Response<Either<CoalescedBody<ProxyBody>, ProxyBody>>;

fn local(response: Response<ProxyBody>) -> Answer {
    response.map(Either::Right)
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin: Option<Server>,
    stop: watch::Sender<bool>,
    task: JoinHandle<bool>,
}

impl Running {
    /// Where the proxy listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin server's base URL, if one runs.
    pub fn admin_url(&self) -> Option<String> {
        self.admin.as_ref().map(Server::url)
    }

    /// Stops accepting, lets requests in flight finish for at most the
    /// configured shutdown timeout; returns whether they all did.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        let done = self.task.await.unwrap_or(false);
        if let Some(admin) = self.admin {
            admin.shutdown(Duration::from_secs(1)).await;
        }
        done
    }
}

/// Starts the proxy (and its admin server).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use clap::Parser;
/// use singleflight_cli::upstream::{self, UpstreamOpts};
/// use singleflight_cli::{Cli, Command, proxy};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let up = upstream::start(&UpstreamOpts::embedded(Duration::ZERO)).await?;
/// let url = up.url();
/// let cli = Cli::parse_from(["singleflight", "proxy", "--listen", "127.0.0.1:0", "--upstream", &url]);
/// let Command::Proxy(opts) = cli.command else { unreachable!() };
/// let running = proxy::start(opts.resolve()?).await?;
/// assert!(running.url().starts_with("http://127.0.0.1:"));
/// assert!(running.shutdown().await);
/// # anyhow::Ok(()) }).unwrap();
/// ```
///
/// # Errors
///
/// An address that cannot be listened on, or an upstream that cannot be reached.
pub async fn start(config: ProxyConfig) -> anyhow::Result<Running> {
    probe_upstream(&config.upstream, "--upstream").await?;
    let listener = bind(config.listen, "--listen").await?;
    let admin_listener = match config.admin {
        Some(addr) => Some(bind(addr, "--admin").await?),
        None => None,
    };
    let addr = listener.local_addr().context("reading the bound address")?;

    let registry = Registry::new();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.upstream_timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let forward = ArcForward(Arc::new(Forward {
        client,
        upstream: config.upstream.clone(),
        timeout: config.upstream_timeout,
        upstream_requests: registry.counter(
            "proxy_upstream_requests_total",
            "Requests sent to the upstream (flights, bypasses and refetches).",
            &[],
        ),
    }));
    let proxy = Arc::new(Proxy {
        // Counting on, so /metrics shows the core group's view next to the layer's.
        coalesce: coalesce_layer(&config).layer(forward),
        requests: registry.counter("proxy_requests_total", "Requests received.", &[]),
        config: config.clone(),
    });
    let connections = registry.gauge("proxy_connections", "Client connections open now.", &[]);
    let admin = match admin_listener {
        Some(l) => Some(Server::spawn(
            l,
            admin_router(Arc::clone(&proxy), registry),
        )?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, proxy, connections, stopped));
    Ok(Running {
        addr,
        admin,
        stop,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    connections: Gauge,
    mut stopped: watch::Receiver<bool>,
) -> bool {
    let limit = Arc::new(Semaphore::new(proxy.config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .max_buf_size(proxy.config.max_header_bytes)
        .header_read_timeout(Duration::from_secs(10));
    loop {
        // Past the connection cap, stop accepting until one closes.
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Per-connection failures must not stop the proxy. Out of
                // descriptors (a --max-connections above the process's
                // limit) fails at once on every try: back off instead of
                // spinning, as hyper and axum do.
                tracing::warn!("accepting a connection: {e}");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let service = hyper::service::service_fn(move |request| Arc::clone(&proxy).handle(request));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let connections = connections.clone();
        connections.increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
            connections.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(proxy.config.shutdown_timeout) => false,
    }
}

fn admin_router(proxy: Arc<Proxy>, registry: Registry) -> Router {
    struct Admin {
        proxy: Arc<Proxy>,
        registry: Registry,
        stats: [Counter; 6],
        flights: Gauge,
        group: GroupCounters,
    }
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
    });
    Router::new()
        .route(
            "/metrics",
            get(|State(admin): State<Arc<Admin>>| async move {
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
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(admin)
}

/// Runs the proxy until Ctrl-C or SIGTERM.
pub(crate) async fn run(opts: &ProxyOpts) -> anyhow::Result<()> {
    let config = opts.resolve()?;
    let signals = StopSignals::install()?;
    let running = start(config.clone()).await?;
    match running.admin_url() {
        Some(admin) => tracing::info!(
            "proxy listening on {} -> {} (metrics on {admin}/metrics)",
            running.url(),
            config.upstream
        ),
        None => tracing::info!(
            "proxy listening on {} -> {}",
            running.url(),
            config.upstream
        ),
    }
    signals.recv().await;
    tracing::info!(
        "proxy: shutting down, finishing requests in flight (at most {:?})",
        config.shutdown_timeout
    );
    if !running.shutdown().await {
        tracing::warn!(
            "proxy: requests still in flight after {:?}; dropped",
            config.shutdown_timeout
        );
    }
    Ok(())
}
