//! Sockets, the HTTP client and the running-server handle shared by the
//! subcommands.
//!
//! A server runs on its own task; its [`Server`] handle knows the bound
//! address and stops it: stop accepting, let requests in flight finish, give
//! up on them after a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::BadInput;
use crate::args::HttpUrl;

/// The HTTP/1 client used to call upstreams (pooled, keep-alive).
pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A pooled HTTP/1 client; `max_idle` bounds the idle connections per host.
pub(crate) fn http_client(max_idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

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

/// Checks that something accepts connections at the upstream's address, so a
/// typo fails at start rather than as a 502 on every request.
pub(crate) async fn probe_upstream(url: &HttpUrl, flag: &str) -> anyhow::Result<()> {
    let target = url.host_port();
    let connect = tokio::net::TcpStream::connect(&target);
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BadInput::new(format!(
            "cannot reach the upstream {flag} {url}: {e}; start it first or fix {flag}"
        ))
        .into()),
        Err(_) => Err(BadInput::new(format!(
            "cannot reach the upstream {flag} {url}: no answer within 3s; start it first or fix {flag}"
        ))
        .into()),
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

    /// Resolves when the process is asked to stop.
    pub(crate) async fn recv(mut self) {
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

/// A server running on its own task.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Serves `router` on `listener` until [`Server::shutdown`].
    pub(crate) fn spawn(listener: TcpListener, router: Router) -> anyhow::Result<Self> {
        let addr = listener.local_addr().context("reading the bound address")?;
        let (stop, mut stopped) = watch::channel(false);
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            // An error means the handle was dropped: stop too.
            let _ = stopped.wait_for(|s| *s).await;
        });
        let task = tokio::spawn(async move { serve.await });
        Ok(Self { addr, stop, task })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's base URL, `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for the requests in flight, for
    /// at most `deadline`; returns whether they all finished in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut task = self.task;
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down within `deadline`.
    pub(crate) async fn run_until_signal(
        self,
        signals: StopSignals,
        name: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        signals.recv().await;
        tracing::info!(
            "{name}: shutting down, finishing requests in flight (at most {deadline:?})"
        );
        if !self.shutdown(deadline).await {
            tracing::warn!("{name}: requests still in flight after {deadline:?}; dropped");
        }
        Ok(())
    }
}

/// Runs `fut` with a deadline, mapping the timeout to `None`.
pub(crate) async fn with_timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(limit, fut).await.ok()
}
