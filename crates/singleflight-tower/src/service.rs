//! The service: decides which requests are coalesced, under what key, and
//! starts their flights.

use std::fmt;
use std::mem;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use singleflight::future::Group;
use tokio::time::Instant;
use tower::Service;

use crate::body::CoalescedBody;
use crate::config::Config;
use crate::error::BoxError;
use crate::flight::{Make, Slot, Work};
use crate::future::{ResponseFuture, kept_answer};
use crate::memo::{Lookup, Purge};
use crate::rules;
use crate::served::Served;
use crate::state::{Counters, InProgress, Shared, Stats};

/// Coalesces identical concurrent HTTP requests to the inner service; made
/// by [`CoalesceLayer`](crate::CoalesceLayer).
///
/// # What is coalesced
///
/// `GET` and `HEAD` requests without a body. Never any other method (writes
/// must never be merged), never a request with a body, never one carrying
/// `Authorization`, `Proxy-Authorization` or `Cookie` unless that header is
/// part of the key
/// ([`CoalesceLayer::key_header`](crate::CoalesceLayer::key_header)). A request opts out with the bypass
/// header ([`CoalesceLayer::bypass_header`](crate::CoalesceLayer::bypass_header), removed before the request goes
/// on) or a predicate ([`CoalesceLayer::bypass_if`](crate::CoalesceLayer::bypass_if)).
///
/// Requests are identical when their keys are: method, scheme, authority
/// (or `Host`), path and query, and the values of the key headers
/// (`Accept-Encoding` by default), or what [`CoalesceLayer::key_fn`](crate::CoalesceLayer::key_fn)
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
/// streams in, each from its first byte (see [`CoalescedBody`]). A request
/// that arrives after the head, while the body still streams, joins too: it
/// gets the head at once, the bytes that have arrived, and the rest as they
/// come. The request belongs to all of them: if the first one's client goes
/// away, the upstream request and its body go on for the others. Slow
/// readers are never failed for being slow: what leaves the in-memory
/// window ([`CoalesceLayer::body_window`](crate::CoalesceLayer::body_window)) is kept in a spill file
/// ([`CoalesceLayer::spill_dir`](crate::CoalesceLayer::spill_dir), up to [`CoalesceLayer::spill_max`](crate::CoalesceLayer::spill_max)).
///
/// - A response with `Set-Cookie`, `Cache-Control: private` or `no-store`,
///   or `Vary: *` goes to its own requester only. The other waiters then
///   send their own requests, all at once, and requests for that resource go
///   straight through for [`CoalesceLayer::private_bypass`](crate::CoalesceLayer::private_bypass).
/// - 5xx responses are shared like any other.
/// - An inner service error becomes, for every waiter, `504 Gateway Timeout`
///   when it is a timeout ([`tower::timeout::error::Elapsed`] or an I/O
///   `TimedOut` anywhere in its chain) and `502 Bad Gateway` otherwise, with
///   a short plain-text reason. Requests that were not coalesced get the
///   inner service's error unchanged.
/// - Coalesced requests' responses carry `x-singleflight-shared: true` or
///   `false` ([`CoalesceLayer::shared_header`](crate::CoalesceLayer::shared_header)).
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
    /// Wraps `inner` with the default settings ([`CoalesceLayer::new`](crate::CoalesceLayer::new)).
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
        Self::with_config(inner, Arc::default())
    }

    pub(crate) fn with_config(inner: S, config: Arc<Config>) -> Self {
        let mut builder = Group::builder();
        if let Some(name) = &config.metrics {
            builder = builder.metrics(name.clone());
        }
        Self {
            inner,
            shared: Arc::new(Shared::new(config, builder.build())),
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
        self.shared.counters.snapshot(self.shared.memo.as_ref())
    }

    /// Drops the kept responses `purge` matches ([`CoalesceLayer::memo`](crate::CoalesceLayer::memo));
    /// returns how many. Flights in progress are not touched: what they
    /// bring back is kept as usual.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight_tower::{Coalesce, Purge};
    /// # let service = Coalesce::new(());
    /// assert_eq!(service.purge(&Purge::Prefix("/reports/".into())), 0);
    /// ```
    pub fn purge(&self, purge: &Purge) -> usize {
        self.shared
            .memo
            .as_ref()
            .map_or(0, |memo| memo.purge(purge))
    }

    /// The core group's counters, when [`CoalesceLayer::metrics`](crate::CoalesceLayer::metrics) turned
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

    /// The keys whose flights have requests waiting for their response
    /// head now, most waiters first: the hot keys, live.
    ///
    /// # Examples
    ///
    /// ```
    /// # let service = singleflight_tower::Coalesce::new(());
    /// assert!(service.in_progress().is_empty());
    /// ```
    pub fn in_progress(&self) -> Vec<InProgress> {
        let group = &self.shared.group;
        self.shared.waiting.list(|key| group.waiters(key))
    }

    /// The number of flights in progress: waiting for their response head,
    /// or streaming a body that requests may still join.
    ///
    /// # Examples
    ///
    /// ```
    /// # let service = singleflight_tower::Coalesce::new(());
    /// assert_eq!(service.flights(), 0);
    /// ```
    pub fn flights(&self) -> usize {
        self.shared.group.len() + self.shared.streaming.len()
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
        let mut refresh = None;
        if let Some(memo) = &self.shared.memo
            && !(self.shared.config.request_no_cache && rules::request_no_cache(&head.headers))
        {
            let now = Instant::now();
            let (kept, fresh) = match memo.lookup(&key, now) {
                Lookup::Fresh(kept) => (Some(kept), true),
                Lookup::Stale(kept) => (Some(kept), false),
                Lookup::Miss => (None, false),
            };
            if let Some(kept) = kept {
                let vary = &kept.response.head;
                if !kept.whole() {
                    // Its body failed upstream after it was kept.
                    memo.remove(&key, &kept);
                } else if rules::same_values(&head.headers, &vary.vary, &vary.leader_values) {
                    if fresh {
                        Counters::add(&self.shared.counters.memo_hits);
                        return ResponseFuture::kept(kept_answer(
                            &kept,
                            &self.shared,
                            now,
                            Served::Memo,
                            None,
                        ));
                    }
                    // Stale while one refresh runs, on the runtime the
                    // service runs on; without one, the request goes upstream.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let answer = kept_answer(
                            &kept,
                            &self.shared,
                            now,
                            Served::Stale,
                            Some("while-revalidate"),
                        );
                        Counters::add(&self.shared.counters.stale_hits);
                        if !kept.begin_refresh() {
                            return ResponseFuture::kept(answer);
                        }
                        refresh = Some((runtime, kept, answer));
                    }
                }
            }
        }
        // Shared from here on; a memo hit never gets this far.
        let key: Arc<str> = Arc::from(key);
        // A flight may outlive this call: take the service that was driven
        // to readiness, and leave a clone.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let id = self.shared.next_id();
        let slot: Arc<Slot<S, ReqBody>> =
            Arc::new(Mutex::new(Some((inner, Request::from_parts(head, body)))));
        let make: Make<S, ReqBody> = Box::new({
            let (shared, slot, key) = (
                Arc::clone(&self.shared),
                Arc::clone(&slot),
                Arc::clone(&key),
            );
            move || Work::start(shared, &slot, id, resource, key)
        });
        if let Some((runtime, kept, answer)) = refresh {
            // This request's own becomes the refresh: its flight keeps
            // what comes back, and any request that misses joins it.
            let call = self.shared.group.call_checked_owned(Arc::clone(&key), make);
            drop(runtime.spawn(async move {
                drop(call.await);
                kept.end_refresh();
            }));
            return ResponseFuture::kept(answer);
        }
        Counters::add(&self.shared.counters.coalesced);
        let memo_key = self.shared.memo.is_some().then(|| Arc::clone(&key));
        let call = self.shared.group.call_checked_owned(key, make);
        ResponseFuture::coalesced(call, slot, id, Arc::clone(&self.shared), memo_key)
    }
}
