//! The `singleflight` command line: the demo server (`/normal` against
//! `/singleflight`), a slow upstream, a one-command demo, a load tool and a
//! coalescing proxy.
//!
//! `main.rs` only parses a [`Cli`] with [`parse_from`] and calls [`run`];
//! tests build the same options the same way and drive the servers
//! in-process. Every flag can also be set in the environment as
//! `SINGLEFLIGHT_<FLAG>` (`--memo-ttl` is `SINGLEFLIGHT_MEMO_TTL`), and the
//! proxy's in a `--config` TOML file: flags win over the environment, the
//! environment over the file.
//!
//! # Examples
//!
//! ```
//! use singleflight_cli::Command;
//!
//! let cli = singleflight_cli::parse_from(["singleflight", "demo", "--clients", "10", "--delay", "100ms"])?;
//! assert!(matches!(cli.command, Command::Demo(_)));
//! # anyhow::Ok(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io;

use clap::{Parser, Subcommand};

mod args;
pub mod demo;
pub mod load;
mod logging;
mod net;
mod plot;
mod prom;
pub mod proxy;
pub mod serve;
mod settings;
mod stats;
pub mod upstream;

pub use args::{HttpUrl, TlsFlags, parse_bytes, parse_duration, parse_http_url, parse_listen};
pub use logging::{LogFlags, LogFormat};
pub use net::Server;
pub use prom::read_metric;

/// Request coalescing, shown and measured: run `singleflight demo` first.
#[derive(Parser, Debug)]
#[command(name = "singleflight", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// The log's filter and format.
    #[command(flatten)]
    pub log: LogFlags,
}

/// Parses a command line as the binary does: each flag from the arguments,
/// else from `SINGLEFLIGHT_<FLAG>` in the environment, else from the
/// subcommand's `--config` file, else its default.
///
/// # Errors
///
/// A [`clap::Error`] for the arguments and the environment (help and
/// version included; see [`exit_on_clap_error`]), or a [`BadInput`] naming
/// the config file, its line and the key.
pub fn parse_from<I, T>(args: I) -> anyhow::Result<Cli>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    settings::parse(args.into_iter().map(Into::into).collect())
}

/// The subcommands.
// Parsed once per process and moved once: boxing the largest would buy
// nothing but a less direct `Command::Proxy(opts)`.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
#[non_exhaustive]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per run: the proxy's many options cost nothing worth a box"
)]
pub enum Command {
    /// A slow upstream that counts the requests it serves (`upstream_requests_total` on /metrics).
    Upstream(upstream::UpstreamOpts),
    /// The demo server: /normal calls the upstream every time, /singleflight shares calls.
    Serve(serve::ServeOpts),
    /// The demo end to end: same load on /normal and /singleflight, a table and a plot.
    Demo(demo::DemoOpts),
    /// Sends requests to URLs and reports latency percentiles and status counts.
    Load(load::LoadOpts),
    /// A reverse proxy that coalesces identical concurrent GET/HEAD requests.
    Proxy(proxy::ProxyOpts),
}

/// Input the user can fix (a bad flag value, a busy port, an unreachable
/// upstream): the binary exits with code 2.
#[derive(Debug)]
pub struct BadInput(String);

impl BadInput {
    /// A message that names the thing and the fix.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The exit code for an error returned by [`run`]: 2 for bad input, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<BadInput>()) {
        2
    } else {
        1
    }
}

/// Whether the error is a closed stdout (`singleflight load ... | head`): not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Prints a command-line parse error and returns its exit code: help and
/// version go to stdout with 0; an error is one line on stderr with 2.
pub fn exit_on_clap_error(error: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            std::process::ExitCode::from(if error.use_stderr() { 2 } else { 0 })
        }
        _ => {
            // Clap's message without its usage block, on one line.
            let rendered = error.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let first = if message.is_empty() {
                "error: bad arguments".to_string()
            } else {
                message.join(" ")
            };
            eprintln!("{first} (see --help)");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs a subcommand to completion (servers: until Ctrl-C or SIGTERM).
///
/// # Errors
///
/// Bad input ([`BadInput`], exit code 2) or a failure while running.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = matches!(cli.command, Command::Demo(_) | Command::Load(_));
    logging::init(&cli.log, if quiet { "warn" } else { "info" })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    runtime.block_on(run_async(cli))
}

/// [`run`] inside an existing runtime (what tests call).
///
/// # Errors
///
/// As [`run`].
pub async fn run_async(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Upstream(opts) => {
            let signals = net::StopSignals::install()?;
            let running = upstream::start(&opts).await?;
            tracing::info!(
                "upstream listening on {} (delay {:?}, status {}); counter upstream_requests_total on /metrics",
                running.url(),
                opts.delay,
                opts.status
            );
            let deadline = opts.shutdown_timeout;
            net::drain_on_signal(signals, "upstream", deadline, || running.shutdown(deadline)).await
        }
        Command::Serve(opts) => {
            let signals = net::StopSignals::install()?;
            let running = serve::start(&opts).await?;
            match &running.upstream {
                Some(_) => tracing::info!(
                    "serve listening on {} (GET /normal, /singleflight, /metrics, /healthz); embedded upstream {} with delay {:?}",
                    running.server.url(),
                    running.upstream_url,
                    opts.delay
                ),
                None => tracing::info!(
                    "serve listening on {} (GET /normal, /singleflight, /metrics, /healthz); upstream {}",
                    running.server.url(),
                    running.upstream_url
                ),
            }
            let deadline = opts.shutdown_timeout;
            net::drain_on_signal(signals, "serve", deadline, || running.shutdown(deadline)).await
        }
        Command::Demo(opts) => demo::run(&opts).await.map(|_| ()),
        Command::Load(opts) => load::run(&opts).await.map(|_| ()),
        Command::Proxy(opts) => proxy::run(opts).await,
    }
}
