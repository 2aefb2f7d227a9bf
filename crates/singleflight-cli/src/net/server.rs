//! The one server every subcommand runs: an accept loop that serves HTTP/1.1
//! and HTTP/2 on the same port (cleartext with prior knowledge, or TLS with
//! ALPN), caps connections and request heads, and shuts down gracefully.
//!
//! A server runs on its own task; its [`Server`] handle knows the bound
//! address and stops it: stop accepting, let requests in flight finish, give
//! up on them after a deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::BadInput;

/// The longest a client may take to send a request head, or to finish the
/// TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How a server accepts and serves connections.
#[derive(Clone, Debug)]
pub(crate) struct Listening {
    /// TLS on the listener (`--tls-cert`, `--tls-key`), or cleartext.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections served at once; more wait to be accepted.
    pub(crate) max_connections: usize,
    /// The largest request head, in bytes (HTTP/1 buffer, HTTP/2 header list).
    pub(crate) max_header_bytes: usize,
    /// A gauge of the connections open now, if one is kept.
    pub(crate) connections: Option<Gauge>,
}

impl Default for Listening {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            connections: None,
        }
    }
}

impl Listening {
    /// The smallest `max_header_bytes` hyper's HTTP/1 accepts.
    pub(crate) const MIN_HEADER_BYTES: usize = 8192;

    /// Checks the limits, naming the flag to fix.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.max_header_bytes < Self::MIN_HEADER_BYTES {
            return Err(BadInput::new(format!(
                "--max-header-bytes {} is below the HTTP/1 minimum; use {} or more",
                self.max_header_bytes,
                Self::MIN_HEADER_BYTES
            ))
            .into());
        }
        if self.max_connections == 0 {
            return Err(
                BadInput::new("--max-connections 0 would accept nothing; use 1 or more").into(),
            );
        }
        Ok(())
    }
}

/// The address of the client a connection came from, given to the service
/// made for that connection.
pub(crate) type Peer = SocketAddr;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service that answers a connection's requests from any thread.
pub(crate) trait ConnectionService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// A response body that can move between threads.
pub(crate) trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

/// A server running on its own task.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `listener` until [`Server::shutdown`].
    pub(crate) fn router(
        listener: TcpListener,
        listening: Listening,
        router: Router,
    ) -> anyhow::Result<Self> {
        Self::spawn(listener, listening, move |_peer| {
            TowerToHyperService::new(router.clone())
        })
    }

    /// Serves the service `make(peer)` makes for each connection, until
    /// [`Server::shutdown`].
    pub(crate) fn spawn<M, S, B>(
        listener: TcpListener,
        listening: Listening,
        make: M,
    ) -> anyhow::Result<Self>
    where
        M: Fn(Peer) -> S + Send + 'static,
        S: ConnectionService<B>,
        B: ResponseBody,
    {
        listening.check()?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let (stop, stopped) = watch::channel(false);
        let tls = listening.tls.is_some();
        let task = tokio::spawn(accept_loop(listener, listening, make, stopped));
        Ok(Self {
            addr,
            tls,
            stop,
            task,
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's base URL, `http://IP:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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
}

async fn accept_loop<M, S, B>(
    listener: TcpListener,
    listening: Listening,
    make: M,
    mut stopped: watch::Receiver<bool>,
) where
    M: Fn(Peer) -> S + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let limit = Arc::new(Semaphore::new(listening.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .max_buf_size(listening.max_header_bytes)
        .header_read_timeout(HEAD_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(listening.max_header_bytes).unwrap_or(u32::MAX));
    let http = Arc::new(http);
    let tls = listening.tls.clone().map(TlsAcceptor::from);
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
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Per-connection failures must not stop the server. Out of
                // descriptors (a --max-connections above the process's
                // limit) fails at once on every try: back off instead of
                // spinning, as hyper and axum do.
                tracing::warn!("accepting a connection: {e}");
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = make(peer);
        let (http, tls, watcher) = (Arc::clone(&http), tls.clone(), graceful.watcher());
        let connections = listening.connections.clone();
        tokio::spawn(async move {
            if let Some(gauge) = &connections {
                gauge.increment(1.0);
            }
            match tls {
                None => serve_connection(&http, stream, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&http, stream, service, watcher).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer}: timed out"),
                    }
                }
            }
            if let Some(gauge) = &connections {
                gauge.decrement(1.0);
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I, S, B>(
    http: &auto::Builder<TokioExecutor>,
    stream: I,
    service: S,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let connection = http.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!("connection: {e}");
    }
}
