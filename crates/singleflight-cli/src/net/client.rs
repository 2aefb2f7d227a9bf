//! The HTTP client that calls upstreams: pooled, keep-alive, `http://` and
//! `https://` (rustls; HTTP/2 when the server's ALPN offers it, HTTP/1.1
//! otherwise).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::tls;
use crate::args::HttpUrl;

/// The connector under every client: TCP, then TLS for `https://`.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// A pooled client sending bodies of type `B` (bodiless GETs by default).
pub(crate) type HttpClient<B = Empty<Bytes>> = Client<Connector, B>;

/// What a client is built from.
#[derive(Clone, Debug)]
pub(crate) struct ClientSettings {
    /// The idle connections kept per host.
    max_idle: usize,
    /// The longest a connection (TCP and TLS) may take to set up.
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
}

impl ClientSettings {
    /// Settings with the platform's roots plus `extra_ca` (`--upstream-ca`).
    ///
    /// # Errors
    ///
    /// An unreadable or invalid `--upstream-ca` file.
    pub(crate) fn new(max_idle: usize, extra_ca: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            max_idle,
            connect_timeout: Duration::from_secs(5),
            tls: tls::client_config(extra_ca)?,
        })
    }

    /// The same settings with another connect timeout.
    pub(crate) fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connector alone (to probe an upstream without a request).
    pub(crate) fn connector(&self) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        // `https://` URIs go through the TLS layer above it.
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http)
    }

    /// A client sending bodies of type `B`.
    pub(crate) fn client<B>(&self) -> HttpClient<B>
    where
        B: http_body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(self.max_idle)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(self.connector())
    }
}

/// Why a request to `url` failed, in one line: a certificate problem with
/// its fix, or the error's whole chain.
pub(crate) fn describe_failure(error: &(dyn std::error::Error + 'static), url: &HttpUrl) -> String {
    if let Some(problem) = tls::certificate_problem(error, &url.host_port()) {
        return problem;
    }
    let mut parts = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}
