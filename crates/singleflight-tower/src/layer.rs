//! The layer: the public face of the settings of [`Coalesce`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::request::Parts;
use tower::Layer;

use crate::config::{Config, OnMaxWait};
use crate::service::Coalesce;

/// Coalesces identical concurrent HTTP requests: wraps a service in
/// [`Coalesce`].
///
/// The defaults are safe for any service: only `GET` and `HEAD` requests
/// without a body are coalesced, never one that carries `Authorization` or
/// `Cookie`, and a response that is private to its requester (`Set-Cookie`,
/// `Cache-Control: private` or `no-store`, `Vary: *`) is never given to
/// another. See [`Coalesce`] for the whole behaviour.
///
/// Each service the layer wraps gets its own flights; clones of that
/// service share them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use http::header::ACCEPT_LANGUAGE;
/// use singleflight_tower::CoalesceLayer;
///
/// let layer = CoalesceLayer::new()
///     .key_header(ACCEPT_LANGUAGE)
///     .body_window(1 << 20)
///     .private_bypass(Duration::from_secs(10))
///     .bypass_if(|head| head.uri.path().starts_with("/admin"));
/// # drop(layer);
/// ```
#[derive(Clone, Default)]
pub struct CoalesceLayer {
    pub(crate) config: Arc<Config>,
}

impl CoalesceLayer {
    /// The layer with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Adds `name` to the request headers whose values are part of the key
    /// (by default only `Accept-Encoding`): requests that differ in it are
    /// not coalesced together.
    ///
    /// Listing `Authorization` or `Cookie` here is what lets requests that
    /// carry them be coalesced, each with those whose value is identical.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .key_header(http::header::AUTHORIZATION);
    /// # drop(layer);
    /// ```
    pub fn key_header(mut self, name: HeaderName) -> Self {
        let headers = &mut self.config().key_headers;
        if !headers.contains(&name) {
            headers.push(name);
        }
        self
    }

    /// Replaces the request headers whose values are part of the key
    /// (by default `Accept-Encoding`).
    ///
    /// # Examples
    ///
    /// ```
    /// // Only method, scheme, authority, path and query.
    /// let layer = singleflight_tower::CoalesceLayer::new().key_headers([]);
    /// # drop(layer);
    /// ```
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config().key_headers = names.into_iter().collect();
        self
    }

    /// Sets the request header whose presence sends a request straight
    /// through (by default [`DEFAULT_BYPASS_HEADER`](crate::DEFAULT_BYPASS_HEADER)); `None` turns it off.
    ///
    /// The header is the layer's own: a `GET` or `HEAD` request that carries
    /// it goes to the inner service without it. Requests of other methods
    /// are never coalesced and are passed on untouched, this header
    /// included: the layer does not look at their headers. Name a header
    /// that means nothing to the inner service; to send requests that carry
    /// some standard header straight through, use
    /// [`bypass_if`](Self::bypass_if), which removes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use http::HeaderName;
    ///
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .bypass_header(Some(HeaderName::from_static("x-no-coalesce")));
    /// # drop(layer);
    /// ```
    pub fn bypass_header(mut self, name: Option<HeaderName>) -> Self {
        self.config().bypass_header = name;
        self
    }

    /// Sends a request straight through when `predicate` returns true for
    /// its head.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .bypass_if(|head| head.uri.query().is_some_and(|q| q.contains("fresh")));
    /// # drop(layer);
    /// ```
    pub fn bypass_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.config().bypass_if = Some(Arc::new(predicate));
        self
    }

    /// Replaces the key with what `key` returns for a request's head;
    /// `None` sends the request straight through.
    ///
    /// The rules still apply: only `GET` and `HEAD` without a body, never a
    /// request with `Authorization` or `Cookie` unless that header is listed
    /// with [`key_header`](Self::key_header), and responses' `Vary` and
    /// privacy are honoured. The method is always part of the key.
    ///
    /// # Examples
    ///
    /// ```
    /// // Coalesce by path alone, ignoring the query string.
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .key_fn(|head| Some(head.uri.path().to_owned()));
    /// # drop(layer);
    /// ```
    pub fn key_fn<F>(mut self, key: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config().key_fn = Some(Arc::new(key));
        self
    }

    /// Sets the response header that says whether a coalesced request's
    /// response was shared (`true`) or not (`false`); by default
    /// [`DEFAULT_SHARED_HEADER`](crate::DEFAULT_SHARED_HEADER). `None` turns it off. Requests that are not
    /// candidates (other methods, opted out) never get it.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().shared_header(None);
    /// # drop(layer);
    /// ```
    pub fn shared_header(mut self, name: Option<HeaderName>) -> Self {
        self.config().shared_header = name;
        self
    }

    /// Sets how many bytes of a flight's body are kept in memory for its
    /// readers (by default [`DEFAULT_BODY_WINDOW`](crate::DEFAULT_BODY_WINDOW),
    /// 4 MiB): the newest bytes, which the readers keeping up read from.
    ///
    /// Every reader of a flight reads its body at its own pace, from the
    /// first byte, and a request that arrives while the body still streams
    /// joins the flight and reads it from the first byte too. Bytes that
    /// leave the window are written to a spill file (see
    /// [`spill_dir`](Self::spill_dir)), where readers that are behind, or
    /// joined late, read them; the upstream and the readers that keep up
    /// never wait for them. Memory per flight is therefore bounded by the
    /// window (plus the newest chunk, which is always kept whole), whatever
    /// the body's size and the number of readers; a reader behind holds
    /// at most the 256 KiB it read from the file last, until its client
    /// takes it. A larger window serves more readers from memory: with 50
    /// readers of a 50 MiB body on two cores, 64 MiB (all of it) was about
    /// 10% faster than 4 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().body_window(16 << 20);
    /// # drop(layer);
    /// ```
    pub fn body_window(mut self, bytes: usize) -> Self {
        self.config().body_window = bytes;
        self
    }

    /// Sets the directory of the spill files (by default the system's
    /// temporary directory, [`std::env::temp_dir`]).
    ///
    /// A flight makes its spill file only when its body outgrows the
    /// [`body_window`](Self::body_window). The file is unlinked as soon as
    /// it is made, so nothing is left in the directory, whether the flight
    /// ends, fails or the process crashes; its space is returned when the
    /// last reader is done with it. When the file cannot be made or
    /// written, the flight goes on in memory alone, as past
    /// [`spill_max`](Self::spill_max).
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().spill_dir("/var/cache/sf");
    /// # drop(layer);
    /// ```
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config().spill_dir = Some(dir.into());
        self
    }

    /// Caps the bytes of one flight's body kept on disk (by default
    /// [`DEFAULT_SPILL_MAX`](crate::DEFAULT_SPILL_MAX), 1 GiB); `0` turns
    /// spilling off.
    ///
    /// A body longer than the window and the cap together cannot be kept
    /// whole for everyone (chunks leave the window whole, so a body a
    /// little shorter may not be either). When the bytes that left the
    /// window would pass the cap, the flight
    /// drops its spill file and goes on in memory alone: the readers within
    /// the window carry on to the end, unaffected; every reader behind it
    /// fails at once with [`Error::FellBehind`](crate::Error::FellBehind),
    /// so its client sees an aborted response, never a short one that looks
    /// whole; and the flight is no longer joined by new requests, which
    /// send a request of their own instead. The same holds for a reader
    /// that falls behind the window when spilling is off.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().spill_max(256 << 20);
    /// # drop(layer);
    /// ```
    pub fn spill_max(mut self, bytes: u64) -> Self {
        self.config().spill_max = bytes;
        self
    }

    /// How long requests for a resource go straight through after it
    /// answered with a response private to its requester (by default 30 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .private_bypass(Duration::from_secs(60));
    /// # drop(layer);
    /// ```
    pub fn private_bypass(mut self, duration: Duration) -> Self {
        self.config().private_bypass = duration;
        self
    }

    /// How many resources (method, scheme, authority, path and query) the
    /// layer remembers something about: the `Vary` of their last response,
    /// or that they answer privately (by default 4096). The least recently
    /// used are forgotten first.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().remember(100_000);
    /// # drop(layer);
    /// ```
    pub fn remember(mut self, resources: usize) -> Self {
        self.config().remembered = resources.max(1);
        self
    }
}

impl CoalesceLayer {
    /// Turns on the core group's counters for the flights (calls,
    /// executions, shared results, cancellations, panics, flights and
    /// waiters in progress), readable with
    /// [`Coalesce::group_stats`] and, with
    /// this crate's `metrics` feature, exported through the `metrics`
    /// facade labelled `group = name` (see
    /// [`singleflight::policy::METRIC_NAMES`]).
    ///
    /// The layer's own HTTP counters ([`Coalesce::stats`])
    /// are always on.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().metrics("api");
    /// # drop(layer);
    /// ```
    pub fn metrics(mut self, name: impl Into<String>) -> Self {
        self.config().metrics = Some(name.into());
        self
    }
}

impl CoalesceLayer {
    /// Keeps responses after their flight, an HTTP cache (RFC 9111) in
    /// front of the inner service: a later request for the same key is
    /// answered from the kept response, with its `Age`, without a request
    /// upstream. `ceiling` is the longest a response is kept fresh.
    ///
    /// A response's own lifetime limits it: `s-maxage`, else `max-age`, else
    /// `Expires` minus `Date`, less the `Age` it came with. Never kept: a
    /// response private to its requester (`Set-Cookie`, `private`,
    /// `no-store`), one marked `no-cache`, one whose lifetime is over
    /// (`max-age=0`, `s-maxage=0`), a 5xx, and a body without a
    /// `Content-Length` within [`body_window`](CoalesceLayer::body_window)
    /// and [`memo_max_entry`](CoalesceLayer::memo_max_entry). A kept
    /// response whose body then failed upstream is dropped at its next hit,
    /// and that request goes upstream. A request with `Cache-Control:
    /// no-cache` goes upstream (see
    /// [`request_no_cache`](CoalesceLayer::request_no_cache)), and what it
    /// brings back is kept.
    ///
    /// Use it for data that may be up to `ceiling` old: read very often,
    /// changed rarely or not needed in real time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = singleflight_tower::CoalesceLayer::new().memo(Duration::from_secs(1));
    /// # drop(layer);
    /// ```
    pub fn memo(mut self, ceiling: Duration) -> Self {
        self.config().memo_ttl = Some(ceiling);
        self
    }

    /// Past its lifetime, a kept response is still served for up to `grace`
    /// while one background request refreshes it (on the tokio runtime the
    /// service runs on); a response's `stale-while-revalidate=N` (RFC 5861)
    /// shortens it, and `must-revalidate`, `proxy-revalidate` or `s-maxage`
    /// forbid it. Needs [`memo`](CoalesceLayer::memo); ignored without it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .memo(Duration::from_secs(1))
    ///     .stale_while_revalidate(Duration::from_secs(10));
    /// # drop(layer);
    /// ```
    pub fn stale_while_revalidate(mut self, grace: Duration) -> Self {
        self.config().stale = Some(grace);
        self
    }

    /// When a flight fails (a transport error, a timeout, a 5xx), its
    /// waiters get the last kept response instead, up to `grace` past its
    /// lifetime (nginx's `proxy_cache_use_stale`); a response's
    /// `stale-if-error=N` (RFC 5861) shortens it, and `must-revalidate`,
    /// `proxy-revalidate` or `s-maxage` forbid it. Such a response carries
    /// the [`stale_header`](CoalesceLayer::stale_header) (`if-error`). Needs
    /// [`memo`](CoalesceLayer::memo); ignored without it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = singleflight_tower::CoalesceLayer::new()
    ///     .memo(Duration::from_secs(1))
    ///     .stale_if_error(Duration::from_secs(300));
    /// # drop(layer);
    /// ```
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.config().stale_if_error = Some(grace);
        self
    }

    /// Sets the response header that marks a kept response served past its
    /// lifetime, with `while-revalidate` or `if-error` (by default
    /// [`DEFAULT_STALE_HEADER`](crate::DEFAULT_STALE_HEADER)); `None` turns
    /// it off.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().stale_header(None);
    /// # drop(layer);
    /// ```
    pub fn stale_header(mut self, name: Option<HeaderName>) -> Self {
        self.config().stale_header = name;
        self
    }

    /// The memo's budget in bytes (by default
    /// [`DEFAULT_MEMO_MAX_BYTES`](crate::DEFAULT_MEMO_MAX_BYTES)): each kept
    /// response weighs its body, its headers and its key, and past the
    /// budget the least useful are dropped (the memo's store is an S3-FIFO
    /// cache: responses hit again are kept over those that are not).
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().memo_max_bytes(256 << 20);
    /// # drop(layer);
    /// ```
    pub fn memo_max_bytes(mut self, bytes: u64) -> Self {
        self.config().memo_max_bytes = bytes;
        self
    }

    /// The largest body the memo keeps, in bytes (by default the
    /// [`body_window`](CoalesceLayer::body_window), which also bounds it).
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().memo_max_entry(1 << 20);
    /// # drop(layer);
    /// ```
    pub fn memo_max_entry(mut self, bytes: u64) -> Self {
        self.config().memo_max_entry = bytes;
        self
    }

    /// Whether a request's `Cache-Control: no-cache` (or `max-age=0`, or
    /// `Pragma: no-cache`) sends it upstream instead of to the memo (by
    /// default, true). Turn it off when clients send it by habit and the
    /// upstream must be spared.
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = singleflight_tower::CoalesceLayer::new().request_no_cache(false);
    /// # drop(layer);
    /// ```
    pub fn request_no_cache(mut self, honour: bool) -> Self {
        self.config().request_no_cache = honour;
        self
    }

    /// The longest a coalesced request waits for its flight's response head
    /// (by default, no limit); past it, `on` says what it does: a 504, or
    /// its own request upstream. The flight goes on for the others either
    /// way. Counted in [`Stats::max_wait_timeouts`](crate::Stats::max_wait_timeouts)
    /// and [`Stats::max_wait_bypasses`](crate::Stats::max_wait_bypasses).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight_tower::{CoalesceLayer, OnMaxWait};
    ///
    /// let layer = CoalesceLayer::new().max_wait(Duration::from_secs(2), OnMaxWait::Bypass);
    /// # drop(layer);
    /// ```
    pub fn max_wait(mut self, limit: Duration, on: OnMaxWait) -> Self {
        let config = self.config();
        config.max_wait = Some(limit);
        config.on_max_wait = on;
        self
    }
}

impl fmt::Debug for CoalesceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = Coalesce<S>;

    fn layer(&self, inner: S) -> Coalesce<S> {
        Coalesce::with_config(inner, Arc::clone(&self.config))
    }
}
