//! Sockets, the upstream client, TLS and the running-server handle shared by
//! the subcommands.

mod client;
mod server;
mod tls;

pub(crate) use client::{ClientSettings, HttpClient, describe_failure};
pub use server::Server;
pub(crate) use server::{Listening, Peer};
pub(crate) use tls::server_config;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tower::ServiceExt as _;

use crate::BadInput;
use crate::args::HttpUrl;

/// How many connections may wait to be accepted. The standard library's 128
/// overflows when hundreds of clients connect at once (the demo, a burst),
/// and an overflowed SYN costs the client a retransmission; the kernel caps
/// this at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds `addr`, turning the usual failures into a message that says the fix.
pub(crate) async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| {
        let fix = match e.kind() {
            io::ErrorKind::AddrInUse => "pick another port, or stop what is listening there",
            io::ErrorKind::AddrNotAvailable => "use an address of this machine, such as 127.0.0.1",
            io::ErrorKind::PermissionDenied => "use a port above 1023",
            _ => "check the address",
        };
        BadInput::new(format!("cannot listen on {flag} {addr}: {e}; {fix}")).into()
    })
}

/// Connects to the upstream (TCP, then TLS for `https://`) and says why
/// that failed, if it did, in one line naming `flag` and the fix.
pub(crate) async fn probe_upstream(
    url: &HttpUrl,
    client: &ClientSettings,
    flag: &str,
) -> Result<(), String> {
    let connect = client.connector().oneshot(url.uri().clone());
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let why = describe_failure(&*e, url);
            if why.contains("certificate") {
                Err(format!("the upstream {flag} {url}: {why}"))
            } else {
                Err(format!(
                    "cannot reach the upstream {flag} {url}: {why}; start it first or fix {flag}"
                ))
            }
        }
        Err(_) => Err(format!(
            "cannot reach the upstream {flag} {url}: no answer within 3s; start it first or fix {flag}"
        )),
    }
}

/// The process's stop signals (SIGINT, SIGTERM), listened to from the moment
/// this is made: a server installs it before it listens, so a signal that
/// arrives as soon as the first request is in flight is handled gracefully
/// instead of killing the process with the default action.
#[derive(Debug)]
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers the handlers now (tokio's `ctrl_c()` would only register on first poll).
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind| signal(kind).context("installing the SIGINT/SIGTERM handlers");
            Ok(Self {
                interrupt: install(SignalKind::interrupt())?,
                terminate: install(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves when the process is asked to stop; again at the next signal.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a handler, never resolve rather than stop at once.
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for a stop signal, then for `drain` (stop accepting, finish the
/// requests in flight within `deadline`); a second signal during the drain
/// ends it at once, as an error that says so.
pub(crate) async fn drain_on_signal<F: Future<Output = bool>>(
    mut signals: StopSignals,
    name: &str,
    deadline: Duration,
    drain: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    signals.recv().await;
    tracing::info!(
        "{name}: shutting down, finishing requests in flight (at most {deadline:?}); signal again to stop at once"
    );
    tokio::select! {
        finished = drain() => {
            if !finished {
                tracing::warn!("{name}: requests still in flight after {deadline:?}; dropped");
            }
            Ok(())
        }
        () = signals.recv() => Err(anyhow::anyhow!(
            "{name}: stopped by a second signal during the drain; requests in flight were dropped"
        )),
    }
}

/// Runs `fut` with a deadline, mapping the timeout to `None`.
pub(crate) async fn with_timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(limit, fut).await.ok()
}
