//! Value parsers and flags shared by the subcommands: durations, listen
//! addresses, upstream URLs and a listener's TLS files, each with an error
//! message that says what was expected.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use crate::BadInput;

/// Parses a duration such as `250ms`, `1s`, `1.5s`, `2m`, `500us` or `0`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(singleflight_cli::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(singleflight_cli::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(singleflight_cli::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("'{text}' is not a duration; write it like 250ms, 1s, 1.5s or 2m");
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| expected())
}

/// Parses a size in bytes such as `65536`, `64KiB`, `4MiB`, `1GiB` or
/// `500MB` (`K`, `M`, `G` and the `iB` units are powers of 1024, `KB`,
/// `MB` and `GB` of 1000; case does not matter).
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_cli::parse_bytes("4MiB"), Ok(4 << 20));
/// assert_eq!(singleflight_cli::parse_bytes("1gib"), Ok(1 << 30));
/// assert_eq!(singleflight_cli::parse_bytes("500MB"), Ok(500_000_000));
/// assert_eq!(singleflight_cli::parse_bytes("65536"), Ok(65536));
/// assert!(singleflight_cli::parse_bytes("lots").is_err());
/// ```
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "'{text}' is not a size; write it in bytes (65536) or with a unit, like 64KiB, 4MiB or 1GiB"
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(expected()),
    };
    number.checked_mul(scale).ok_or_else(expected)
}

/// Parses a listen address such as `127.0.0.1:8080` or `[::1]:0`.
///
/// # Examples
///
/// ```
/// assert!(singleflight_cli::parse_listen("127.0.0.1:0").is_ok());
/// assert!(singleflight_cli::parse_listen("localhost").is_err());
/// ```
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("'{text}' is not a listen address; write it as IP:PORT, like 127.0.0.1:8080")
    })
}

/// An `http://` or `https://` URL with a host, as the upstream of `serve`,
/// `proxy` and `load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(Uri);

impl HttpUrl {
    /// The URL as an [`http::Uri`].
    pub fn uri(&self) -> &Uri {
        &self.0
    }

    /// Whether the URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }

    /// `host:port`, the port defaulting to 80 (443 for `https://`).
    pub fn host_port(&self) -> String {
        let authority = self.0.authority().map(|a| a.as_str()).unwrap_or_default();
        match (self.0.port(), self.is_https()) {
            (Some(_), _) => authority.to_string(),
            (None, false) => format!("{authority}:80"),
            (None, true) => format!("{authority}:443"),
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses an `http://HOST:PORT/path` or `https://HOST/path` URL.
///
/// # Examples
///
/// ```
/// let url = singleflight_cli::parse_http_url("http://127.0.0.1:8081/status").unwrap();
/// assert_eq!(url.host_port(), "127.0.0.1:8081");
/// let url = singleflight_cli::parse_http_url("https://example.com/status").unwrap();
/// assert_eq!(url.host_port(), "example.com:443");
/// assert!(singleflight_cli::parse_http_url("127.0.0.1:8081").is_err());
/// assert!(singleflight_cli::parse_http_url("ftp://example").is_err());
/// ```
pub fn parse_http_url(text: &str) -> Result<HttpUrl, String> {
    let bad = || {
        format!(
            "'{text}' is not an http or https URL; write it like http://127.0.0.1:8081/status or https://example.com/status"
        )
    };
    let uri: Uri = text.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    let uri = if uri.path_and_query().is_none() {
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        Uri::from_parts(parts).map_err(|_| bad())?
    } else {
        uri
    };
    Ok(HttpUrl(uri))
}

/// Formats a duration compactly for tables and logs: `812µs`, `1.004s`, `37.2ms`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0}µs")
    } else if micros < 1e6 {
        format!("{:.1}ms", micros / 1e3)
    } else {
        format!("{:.3}s", micros / 1e6)
    }
}

/// TLS on a server's listener: a certificate chain and its key, both PEM.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsFlags {
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate chain, PEM; needs --tls-key.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// The listener's TLS settings, or `None` for cleartext.
    pub(crate) fn server_config(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => crate::net::server_config(cert, key).map(Some),
            (Some(_), None) => {
                Err(BadInput::new("--tls-cert needs its key: add --tls-key FILE").into())
            }
            (None, Some(_)) => {
                Err(BadInput::new("--tls-key needs its certificate: add --tls-cert FILE").into())
            }
        }
    }
}
