//! The proxy's settings: one field per flag. Each also comes from the
//! environment (`SINGLEFLIGHT_<FLAG>`) and from `--config`'s TOML file
//! (the field's name as the key), layered by [`crate::settings`]: flags win
//! over the environment, the environment over the file, the file over the
//! defaults. A new setting is a field here, and its check in
//! [`ProxyOpts::check`] if it needs one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use singleflight_tower::{CoalesceLayer, OnMaxWait};

use crate::BadInput;
use crate::args::{HttpUrl, TlsFlags, parse_bytes, parse_duration, parse_http_url, parse_listen};
use crate::net::Listening;

/// What a request does past `--max-wait`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnMaxWaitArg {
    /// Answer 504; the flight goes on for the others.
    #[default]
    #[value(name = "504")]
    GatewayTimeout,
    /// Send its own request upstream.
    Bypass,
}

/// The admin address: `IP:PORT`, or a bare `PORT` on loopback, since the
/// admin endpoints (purges among them) are for the operator.
fn parse_admin(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => parse_listen(text),
    }
}

/// Options of `singleflight proxy`.
#[derive(Args, Clone, Debug)]
#[non_exhaustive]
pub struct ProxyOpts {
    /// Address to listen on: HTTP/1.1 and HTTP/2 (prior knowledge), or HTTPS with --tls-cert.
    #[arg(long, default_value = "127.0.0.1:8082", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The upstream, `http://HOST:PORT` or `https://HOST` (its path, if any, prefixes every request's).
    #[arg(long, value_parser = parse_http_url)]
    pub upstream: Option<HttpUrl>,
    /// A CA certificate (PEM) an HTTPS upstream may be signed by, trusted besides the platform's roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// A TOML file with any of these options (same names, `_` for `-`); flags and the environment win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep responses after their flight, at most this long (an HTTP cache:
    /// a response's own max-age, s-maxage or Expires is kept to if shorter).
    #[arg(long, value_parser = parse_duration)]
    pub memo_ttl: Option<Duration>,
    /// Past its lifetime, serve a kept response up to this long while one
    /// refresh runs (a response's stale-while-revalidate shortens it).
    #[arg(long, value_parser = parse_duration)]
    pub stale: Option<Duration>,
    /// When the upstream fails (error, timeout, 5xx), serve the last kept
    /// response up to this long past its lifetime, marked
    /// `x-singleflight-stale: if-error` (a response's stale-if-error shortens it).
    #[arg(long, value_parser = parse_duration)]
    pub stale_if_error: Option<Duration>,
    /// The memo's budget: kept responses weigh their body, headers and key.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub memo_max_bytes: u64,
    /// The largest body kept in the memo [default: the body window].
    #[arg(long, value_parser = parse_bytes)]
    pub memo_max_entry: Option<u64>,
    /// Answer requests marked `Cache-Control: no-cache` from the memo too,
    /// instead of sending them upstream.
    #[arg(long)]
    pub ignore_request_no_cache: bool,
    /// The longest a request waits for its response head [default: none];
    /// past it, see --on-max-wait. The flight goes on for the others.
    #[arg(long, value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// What a request does past --max-wait: `504`, or `bypass` (its own
    /// request upstream, as nginx's proxy_cache_lock_timeout).
    #[arg(long, value_enum, default_value = "504")]
    pub on_max_wait: OnMaxWaitArg,
    /// The longest an upstream request may take to answer (past it, 504),
    /// and the longest its body may pause (past it, the response is aborted).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Send the client's `Host` to the upstream instead of the upstream's own.
    #[arg(long)]
    pub preserve_host: bool,
    /// Address for /metrics, /healthz, /readyz, /flights and POST /purge
    /// [default: none]; a bare PORT listens on loopback (127.0.0.1:PORT).
    #[arg(long, value_parser = parse_admin)]
    pub admin: Option<SocketAddr>,
    /// How long to wait for requests in flight on shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest request head in bytes, at least 8192; larger gets 431.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: u64,
    /// Bytes of a response body each flight keeps in memory for its
    /// readers (the newest); older bytes go to the spill file.
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    pub body_window: u64,
    /// Directory of the flights' spill files (unlinked at once, so nothing
    /// is left there) [default: the system's temporary directory].
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Bytes of one flight's body kept on disk, at most; past it, readers
    /// that are behind fail and new requests go upstream. 0: no spill file.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub spill_max: u64,
    /// A Redis, `redis://HOST:PORT`, shared with other proxy instances in
    /// front of the same upstream: one upstream request per flight for all
    /// of them. Responses travel through it whole, up to --redis-max-body.
    #[arg(long)]
    pub redis: Option<String>,
    /// The largest response body shared through --redis; a longer one is
    /// streamed by the instance that fetched it, and the others fetch their own.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub redis_max_body: u64,
    /// TLS on the listener.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Do not log a line per request.
    #[arg(long)]
    pub quiet: bool,
}

impl ProxyOpts {
    /// The upstream, which has no default.
    ///
    /// # Errors
    ///
    /// No `--upstream` (nor `SINGLEFLIGHT_UPSTREAM`, nor `upstream` in the file).
    pub fn upstream(&self) -> anyhow::Result<&HttpUrl> {
        self.upstream.as_ref().ok_or_else(|| {
            BadInput::new(
                "no upstream: pass --upstream http://HOST:PORT, set SINGLEFLIGHT_UPSTREAM, or set `upstream` in --config",
            )
            .into()
        })
    }

    /// Checks that the settings go together.
    ///
    /// # Examples
    ///
    /// ```
    /// let cli = singleflight_cli::parse_from(["singleflight", "proxy", "--upstream", "http://127.0.0.1:8081"])?;
    /// let singleflight_cli::Command::Proxy(opts) = cli.command else { unreachable!() };
    /// opts.check()?;
    /// assert_eq!(opts.listen.to_string(), "127.0.0.1:8082");
    /// assert_eq!(opts.upstream_timeout.as_secs(), 30);
    /// # anyhow::Ok(())
    /// ```
    ///
    /// # Errors
    ///
    /// A missing upstream, or a setting the proxy cannot honour.
    pub fn check(&self) -> anyhow::Result<()> {
        self.upstream()?;
        for (flag, set) in [
            ("--stale", self.stale.is_some()),
            ("--stale-if-error", self.stale_if_error.is_some()),
        ] {
            if set && self.memo_ttl.is_none() {
                return Err(BadInput::new(format!(
                    "{flag} serves a kept response past its lifetime, so it needs --memo-ttl; add --memo-ttl D"
                ))
                .into());
            }
        }
        if self.memo_max_bytes == 0 {
            return Err(BadInput::new(
                "--memo-max-bytes 0 keeps nothing; give the memo a budget like 64MiB, or drop --memo-ttl",
            )
            .into());
        }
        if usize::try_from(self.body_window).is_err() {
            return Err(BadInput::new(format!(
                "--body-window {} does not fit this machine's memory; use a few MiB",
                self.body_window
            ))
            .into());
        }
        if let Some(dir) = &self.spill_dir
            && let Err(error) = tempfile::tempfile_in(dir)
        {
            return Err(BadInput::new(format!(
                "--spill-dir {}: cannot make a file there ({error}); create the directory, make it writable, or pick another",
                dir.display()
            ))
            .into());
        }
        self.listening()?.check()
    }

    /// How the listener accepts and serves connections.
    pub(super) fn listening(&self) -> anyhow::Result<Listening> {
        Ok(Listening {
            tls: self.tls.server_config()?,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            connections: None,
        })
    }

    /// `--redis-max-body` in this machine's sizes.
    pub(super) fn redis_max_body_bytes(&self) -> usize {
        usize::try_from(self.redis_max_body).unwrap_or(usize::MAX)
    }

    /// The coalescing layer as the settings ask for it.
    pub(super) fn coalesce_layer(&self) -> CoalesceLayer {
        let mut layer = CoalesceLayer::new()
            .metrics("proxy")
            .body_window(usize::try_from(self.body_window).unwrap_or(usize::MAX))
            .spill_max(self.spill_max);
        if let Some(dir) = &self.spill_dir {
            layer = layer.spill_dir(dir);
        }
        if let Some(ttl) = self.memo_ttl {
            layer = layer
                .memo(ttl)
                .memo_max_bytes(self.memo_max_bytes)
                .request_no_cache(!self.ignore_request_no_cache);
            if let Some(bytes) = self.memo_max_entry {
                layer = layer.memo_max_entry(bytes);
            }
            if let Some(grace) = self.stale {
                layer = layer.stale_while_revalidate(grace);
            }
            if let Some(grace) = self.stale_if_error {
                layer = layer.stale_if_error(grace);
            }
        }
        if let Some(limit) = self.max_wait {
            let on = match self.on_max_wait {
                OnMaxWaitArg::GatewayTimeout => OnMaxWait::GatewayTimeout,
                OnMaxWaitArg::Bypass => OnMaxWait::Bypass,
            };
            layer = layer.max_wait(limit, on);
        }
        layer
    }
}
