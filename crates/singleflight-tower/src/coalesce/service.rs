//! The service: decides which requests are coalesced, and under what key.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, COOKIE, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, PROXY_AUTHORIZATION, RANGE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body::Body;
use singleflight::future::{Detached, Group};
use tokio::time::Instant;
use tower::Service;

use super::body::CoalescedBody;
use super::error::BoxError;
use super::flight::{Flown, Make, Slot, Work};
use super::future::ResponseFuture;
use super::layer::{CoalesceLayer, Config};

/// What the layer remembers about a resource from its last responses.
#[derive(Clone, Default)]
pub(crate) struct Memo {
    /// The request headers its responses vary on, beyond the configured ones.
    pub(crate) vary: Arc<[HeaderName]>,
    /// It answered privately: requests for it go straight through until then.
    pub(crate) bypass_until: Option<Instant>,
}

/// Counters, shared by every clone of a service.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) coalesced: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) flights: AtomicU64,
    pub(crate) shared: AtomicU64,
    pub(crate) refetched: AtomicU64,
    pub(crate) upstream_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a [`Coalesce`] and its clones have counted so far; from
/// [`Coalesce::stats`].
///
/// Requests whose method is neither `GET` nor `HEAD` are not counted: they
/// take a path with no bookkeeping at all.
///
/// # Examples
///
/// ```
/// let service = singleflight_tower::Coalesce::new(());
/// let stats = service.stats();
/// // Requests the layer saved the upstream from.
/// let saved = stats.coalesced - stats.flights - stats.refetched;
/// assert_eq!(saved, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `GET`/`HEAD` requests that led or joined a flight.
    pub coalesced: u64,
    /// `GET`/`HEAD` requests sent straight through: with a body,
    /// `Authorization` or `Cookie`, opted out, or for a resource that
    /// answered privately a short while ago.
    pub bypassed: u64,
    /// Flights: requests sent to the inner service on behalf of coalesced
    /// requests.
    pub flights: u64,
    /// Coalesced requests whose response was shared with another.
    pub shared: u64,
    /// Coalesced requests that sent their own request after all, because
    /// their flight's response was private to its requester or varied on a
    /// header they differ in.
    pub refetched: u64,
    /// Flights whose upstream failed (answered 502 or 504).
    pub upstream_errors: u64,
}

/// The state every clone of a [`Coalesce`] shares.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) group: Group<String, Flown>,
    /// What is remembered per resource, by the resource's hash.
    pub(crate) memo: quick_cache::sync::Cache<u64, Memo>,
    resources: RandomState,
    pub(crate) counters: Counters,
    next_id: AtomicU64,
}

impl Shared {
    /// The key of a candidate request and the hash of its resource, or
    /// `None` when it must go straight through.
    fn key(&self, head: &Parts, body_is_empty: bool) -> Option<(String, u64)> {
        let config = &*self.config;
        if !body_is_empty {
            return None;
        }
        for credential in [&AUTHORIZATION, &PROXY_AUTHORIZATION, &COOKIE] {
            if head.headers.contains_key(credential) && !config.key_headers.contains(credential) {
                return None;
            }
        }
        if let Some(name) = &config.bypass_header
            && head.headers.contains_key(name)
        {
            return None;
        }
        if let Some(bypass) = &config.bypass_if
            && bypass(head)
        {
            return None;
        }
        let mut key = String::with_capacity(96);
        push_resource(&mut key, head);
        // The memo is keyed by the resource's hash: a collision could at
        // worst add headers to a key or send requests straight through, and
        // each waiter still checks the response's `Vary` against its own
        // request.
        let resource = self.resources.hash_one(key.as_str());
        let memo = self.memo.get(&resource);
        if let Some(until) = memo.as_ref().and_then(|memo| memo.bypass_until)
            && Instant::now() < until
        {
            return None;
        }
        if let Some(key_fn) = &config.key_fn {
            // Prefixed by the method, and marked so that a custom key never
            // equals a built one.
            let custom = key_fn(head)?;
            key.clear();
            key.push_str(head.method.as_str());
            key.push_str(" custom:");
            key.push_str(&custom);
        }
        let vary = memo.map(|memo| memo.vary).unwrap_or_default();
        let conditions = CONDITIONS
            .iter()
            .filter(|name| head.headers.contains_key(*name));
        for name in config
            .key_headers
            .iter()
            .chain(vary.iter())
            .chain(conditions)
        {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            for (i, value) in head.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        Some((key, resource))
    }
}

/// Request headers that change what the response is (a part, or a 304/412
/// instead of the resource): always part of the key when present, so that a
/// conditional or partial response never reaches a waiter that did not ask
/// for it.
const CONDITIONS: [HeaderName; 6] = [
    RANGE,
    IF_RANGE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
];

/// Appends method, scheme, authority, path and query of a request.
fn push_resource(key: &mut String, head: &Parts) {
    let uri = &head.uri;
    let authority = uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| head.headers.get(HOST).and_then(|host| host.to_str().ok()))
        .unwrap_or("");
    key.push_str(head.method.as_str());
    key.push(' ');
    key.push_str(uri.scheme_str().unwrap_or(""));
    key.push_str("://");
    key.push_str(authority);
    key.push_str(uri.path_and_query().map_or("/", |path| path.as_str()));
}

/// Coalesces identical concurrent HTTP requests to the inner service; made
/// by [`CoalesceLayer`].
///
/// # What is coalesced
///
/// `GET` and `HEAD` requests without a body. Never any other method (writes
/// must never be merged), never a request with a body, never one carrying
/// `Authorization`, `Proxy-Authorization` or `Cookie` unless that header is
/// part of the key
/// ([`CoalesceLayer::key_header`]). A request opts out with the bypass
/// header ([`CoalesceLayer::bypass_header`], removed before the request goes
/// on) or a predicate ([`CoalesceLayer::bypass_if`]).
///
/// Requests are identical when their keys are: method, scheme, authority
/// (or `Host`), path and query, and the values of the key headers
/// (`Accept-Encoding` by default), or what [`CoalesceLayer::key_fn`]
/// returns. `Range` and the conditional headers (`If-None-Match`,
/// `If-Modified-Since`, `If-Match`, `If-Unmodified-Since`, `If-Range`) are
/// always part of the key when present, so a partial or `304` response only
/// reaches waiters that asked for exactly that. When a resource answers with `Vary`, the headers it names join
/// its key for the requests that follow; a waiter that joined before it was
/// known and differs from the leader in one of them sends its own request.
///
/// # What waiters get
///
/// The first request for a key sends it to the inner service; the others
/// that arrive while it runs wait for its response, and all of them get the
/// same status and headers as soon as it arrives, and the body as it
/// streams in (see [`CoalescedBody`] and [`CoalesceLayer::max_buffer`]).
/// The request belongs to all of them: if the first one's client goes away,
/// the upstream request and its body go on for the others.
///
/// - A response with `Set-Cookie`, `Cache-Control: private` or `no-store`,
///   or `Vary: *` goes to its own requester only. The other waiters then
///   send their own requests, all at once, and requests for that resource go
///   straight through for [`CoalesceLayer::private_bypass`].
/// - 5xx responses are shared like any other.
/// - An inner service error becomes, for every waiter, `504 Gateway Timeout`
///   when it is a timeout ([`tower::timeout::error::Elapsed`] or an I/O
///   `TimedOut` anywhere in its chain) and `502 Bad Gateway` otherwise, with
///   a short plain-text reason. Requests that were not coalesced get the
///   inner service's error unchanged.
/// - Coalesced requests' responses carry `x-singleflight-shared: true` or
///   `false` ([`CoalesceLayer::shared_header`]).
/// - Extensions of a shared response are cloned for every waiter.
///
/// Flights are per [`Coalesce`]: its clones share them, but each service the
/// layer wraps has its own. With axum, `Router::layer` wraps each route;
/// serve the router with `axum::serve` (or call `Router::with_state`) so
/// that this happens once, not per request.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Empty, Full};
/// use singleflight_tower::CoalesceLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let service = ServiceBuilder::new()
///     .layer(CoalesceLayer::new())
///     .service_fn(|_req: Request<Empty<Bytes>>| async {
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
///     });
///
/// let response = service.oneshot(Request::new(Empty::new())).await?;
/// assert_eq!(response.headers()["x-singleflight-shared"], "false");
/// let body = response.into_body().collect().await?.to_bytes();
/// assert_eq!(body, "hello");
/// # Ok(())
/// # }
/// ```
pub struct Coalesce<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the default settings ([`CoalesceLayer::new`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let service = singleflight_tower::Coalesce::new(tower::service_fn(
    ///     |_req: http::Request<String>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     },
    /// ));
    /// assert_eq!(service.stats().flights, 0);
    /// ```
    pub fn new(inner: S) -> Self {
        Self::with_layer(inner, &CoalesceLayer::new())
    }

    pub(crate) fn with_layer(inner: S, layer: &CoalesceLayer) -> Self {
        let config = Arc::clone(&layer.config);
        let memo = quick_cache::sync::Cache::new(config.remembered);
        let mut builder = Group::builder();
        if let Some(name) = &config.metrics {
            builder = builder.metrics(name.clone());
        }
        if let Some(ttl) = config.memo_ttl {
            // Not kept: whatever a later reader could not be given whole.
            builder = builder
                .memo_all(ttl)
                .failure_if(|flown: &Flown| !flown.replayable());
            if let Some(grace) = config.stale {
                // Refreshes run on the runtime the service runs on. Outside
                // one (a future dropped after its runtime), the flight is
                // dropped, which cancels it.
                builder = builder
                    .detach(|flight: Detached| {
                        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                            drop(runtime.spawn(flight));
                        }
                    })
                    .stale_while_revalidate(grace);
            }
        }
        let group = builder.build();
        Self {
            inner,
            shared: Arc::new(Shared {
                config,
                group,
                memo,
                resources: RandomState::new(),
                counters: Counters::default(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What this service and its clones have counted so far.
    ///
    /// # Examples
    ///
    /// ```
    /// # let service = singleflight_tower::Coalesce::new(());
    /// let stats = service.stats();
    /// let saved = stats.coalesced - stats.flights - stats.refetched;
    /// assert_eq!(saved, 0);
    /// ```
    pub fn stats(&self) -> Stats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            coalesced: load(&counters.coalesced),
            bypassed: load(&counters.bypassed),
            flights: load(&counters.flights),
            shared: load(&counters.shared),
            refetched: load(&counters.refetched),
            upstream_errors: load(&counters.upstream_errors),
        }
    }

    /// The core group's counters, when [`CoalesceLayer::metrics`] turned
    /// them on.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight_tower::{Coalesce, CoalesceLayer};
    /// use tower::Layer;
    ///
    /// let service: Coalesce<()> = CoalesceLayer::new().metrics("api").layer(());
    /// assert_eq!(service.group_stats().map(|stats| stats.calls), Some(0));
    /// assert!(Coalesce::new(()).group_stats().is_none());
    /// ```
    pub fn group_stats(&self) -> Option<singleflight::policy::Stats> {
        self.shared.group.stats()
    }

    /// The number of flights in progress.
    ///
    /// # Examples
    ///
    /// ```
    /// # let service = singleflight_tower::Coalesce::new(());
    /// assert_eq!(service.flights(), 0);
    /// ```
    pub fn flights(&self) -> usize {
        self.shared.group.len()
    }
}

impl<S: Clone> Clone for Coalesce<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("flights", &self.shared.group.len())
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Coalesce<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CoalescedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Never coalesced: the ready service sends it as it is, and the
        // next call drives it to readiness again. Decided from the method
        // alone, before anything else is looked at.
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        self.candidate(request)
    }
}

impl<S> Coalesce<S> {
    /// Coalesces a `GET` or `HEAD` request, unless a rule sends it straight
    /// through. Out of line, so that `call` stays small for the others.
    #[inline(never)]
    fn candidate<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqBody: Body + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let (mut head, body) = request.into_parts();
        let body_is_empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let Some((key, resource)) = self.shared.key(&head, body_is_empty) else {
            Counters::add(&self.shared.counters.bypassed);
            // The opt-out header is the layer's, not the upstream's.
            if let Some(name) = &self.shared.config.bypass_header {
                head.headers.remove(name);
            }
            return ResponseFuture::passthrough(self.inner.call(Request::from_parts(head, body)));
        };
        Counters::add(&self.shared.counters.coalesced);
        // A flight may outlive this call: take the service that was driven
        // to readiness, and leave a clone.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let slot: Arc<Slot<S, ReqBody>> =
            Arc::new(Mutex::new(Some((inner, Request::from_parts(head, body)))));
        let make: Make<S, ReqBody> = Box::new({
            let (shared, slot) = (Arc::clone(&self.shared), Arc::clone(&slot));
            move || Work::start(shared, &slot, id, resource)
        });
        let memo_key = self.shared.config.memo_ttl.is_some().then(|| key.clone());
        let call = self.shared.group.try_call_owned(key, make);
        ResponseFuture::coalesced(call, slot, id, Arc::clone(&self.shared), memo_key)
    }
}

/// The values of `names` in `headers`, in order.
pub(crate) fn values_of(headers: &HeaderMap, names: &[HeaderName]) -> Vec<Vec<http::HeaderValue>> {
    names
        .iter()
        .map(|name| headers.get_all(name).iter().cloned().collect())
        .collect()
}
