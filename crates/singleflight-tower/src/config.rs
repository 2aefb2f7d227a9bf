//! The settings every clone of a [`Coalesce`](crate::Coalesce) reads, and
//! their defaults. [`CoalesceLayer`](crate::CoalesceLayer) is the public
//! way to set them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::header::ACCEPT_ENCODING;
use http::request::Parts;

/// Decides, from a request's head, whether it goes straight through.
pub(crate) type BypassFn = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;
/// Makes the key of a request from its head; `None` sends it straight through.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The default name of the header that opts a request out; the layer
/// removes it before the request goes on (see
/// [`CoalesceLayer::bypass_header`](crate::CoalesceLayer::bypass_header)).
///
/// # Examples
///
/// ```
/// let request = http::Request::get("/report")
///     .header(singleflight_tower::DEFAULT_BYPASS_HEADER, "1")
///     .body(())
///     .unwrap();
/// assert!(request.headers().contains_key("x-singleflight-bypass"));
/// ```
pub const DEFAULT_BYPASS_HEADER: &str = "x-singleflight-bypass";
/// The default name of the response header that says whether a response
/// was shared.
///
/// # Examples
///
/// ```
/// let response = http::Response::builder()
///     .header(singleflight_tower::DEFAULT_SHARED_HEADER, "true")
///     .body(())
///     .unwrap();
/// assert_eq!(response.headers()["x-singleflight-shared"], "true");
/// ```
pub const DEFAULT_SHARED_HEADER: &str = "x-singleflight-shared";

/// The default in-memory window of a flight's body, in bytes (4 MiB); see
/// [`CoalesceLayer::body_window`](crate::CoalesceLayer::body_window).
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_tower::DEFAULT_BODY_WINDOW, 4 << 20);
/// ```
pub const DEFAULT_BODY_WINDOW: usize = 4 << 20;

/// The default cap on the bytes of one flight's body kept on disk (1 GiB);
/// see [`CoalesceLayer::spill_max`](crate::CoalesceLayer::spill_max).
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_tower::DEFAULT_SPILL_MAX, 1 << 30);
/// ```
pub const DEFAULT_SPILL_MAX: u64 = 1 << 30;

/// The default name of the response header that marks a kept response
/// served past its lifetime: `while-revalidate` (a refresh runs) or
/// `if-error` (the upstream failed); see
/// [`CoalesceLayer::stale_header`](crate::CoalesceLayer::stale_header).
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_tower::DEFAULT_STALE_HEADER, "x-singleflight-stale");
/// ```
pub const DEFAULT_STALE_HEADER: &str = "x-singleflight-stale";

/// The default byte budget of the memo (64 MiB); see
/// [`CoalesceLayer::memo_max_bytes`](crate::CoalesceLayer::memo_max_bytes).
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_tower::DEFAULT_MEMO_MAX_BYTES, 64 << 20);
/// ```
pub const DEFAULT_MEMO_MAX_BYTES: u64 = 64 << 20;

/// What a request that waited [`CoalesceLayer::max_wait`](crate::CoalesceLayer::max_wait)
/// for its flight does.
///
/// # Examples
///
/// ```
/// use singleflight_tower::OnMaxWait;
/// assert_eq!(OnMaxWait::default(), OnMaxWait::GatewayTimeout);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnMaxWait {
    /// Answer `504 Gateway Timeout`; the flight goes on for the others.
    #[default]
    GatewayTimeout,
    /// Send its own request upstream, not coalesced (nginx's
    /// `proxy_cache_lock_timeout`). The request that leads the flight is
    /// already upstream: it keeps waiting for its own response.
    Bypass,
}

/// The layer's settings; shared, never changed once a service is built.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) bypass_header: Option<HeaderName>,
    pub(crate) bypass_if: Option<BypassFn>,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) shared_header: Option<HeaderName>,
    pub(crate) body_window: usize,
    pub(crate) spill_dir: Option<PathBuf>,
    pub(crate) spill_max: u64,
    pub(crate) private_bypass: Duration,
    pub(crate) remembered: usize,
    pub(crate) metrics: Option<String>,
    pub(crate) memo_ttl: Option<Duration>,
    pub(crate) stale: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) stale_header: Option<HeaderName>,
    pub(crate) memo_max_bytes: u64,
    pub(crate) memo_max_entry: u64,
    pub(crate) request_no_cache: bool,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) on_max_wait: OnMaxWait,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key_headers: vec![ACCEPT_ENCODING],
            bypass_header: Some(HeaderName::from_static(DEFAULT_BYPASS_HEADER)),
            bypass_if: None,
            key_fn: None,
            shared_header: Some(HeaderName::from_static(DEFAULT_SHARED_HEADER)),
            body_window: DEFAULT_BODY_WINDOW,
            spill_dir: None,
            spill_max: DEFAULT_SPILL_MAX,
            private_bypass: Duration::from_secs(30),
            remembered: 4096,
            metrics: None,
            memo_ttl: None,
            stale: None,
            stale_if_error: None,
            stale_header: Some(HeaderName::from_static(DEFAULT_STALE_HEADER)),
            memo_max_bytes: DEFAULT_MEMO_MAX_BYTES,
            memo_max_entry: u64::MAX,
            request_no_cache: true,
            max_wait: None,
            on_max_wait: OnMaxWait::GatewayTimeout,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("key_headers", &self.key_headers)
            .field("bypass_header", &self.bypass_header)
            .field("bypass_if", &self.bypass_if.as_ref().map(|_| ".."))
            .field("key_fn", &self.key_fn.as_ref().map(|_| ".."))
            .field("shared_header", &self.shared_header)
            .field("body_window", &self.body_window)
            .field("spill_dir", &self.spill_dir)
            .field("spill_max", &self.spill_max)
            .field("private_bypass", &self.private_bypass)
            .field("remembered", &self.remembered)
            .field("metrics", &self.metrics)
            .field("memo_ttl", &self.memo_ttl)
            .field("stale", &self.stale)
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_header", &self.stale_header)
            .field("memo_max_bytes", &self.memo_max_bytes)
            .field("memo_max_entry", &self.memo_max_entry)
            .field("request_no_cache", &self.request_no_cache)
            .field("max_wait", &self.max_wait)
            .field("on_max_wait", &self.on_max_wait)
            .finish()
    }
}
