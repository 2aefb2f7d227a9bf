// A flight's work and the value it gives every waiter.
//
// Invariants:
// - `Slot` holds a coalesced request and the ready service to send it with.
//   Exactly one of two things takes them out, once: the flight's work, when
//   that request leads the flight, or its own `ResponseFuture`, when it must
//   fetch its own response after all. A leader never refetches, since it owns
//   the response its flight produced. A follower swaps the ready service in
//   its slot for an unready clone as soon as it has joined, so that it holds
//   no capacity of the inner service (a concurrency permit, a buffer slot)
//   while it waits; it drives the clone to readiness if it must refetch.
// - A `Flown` is cloned for every waiter; what is in it is shared through
//   `Arc`s, and only `PrivateResponse::response` is ever taken, by its owner.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use super::body::{BoxBody, CoalescedBody, SharedBody, box_body};
use super::error::BoxError;
use super::layer::Config;
use super::service::{Counters, Memo, Shared, values_of};

/// A coalesced request and the ready service to send it with.
pub(crate) type Slot<S, ReqBody> = Mutex<Option<(S, Request<ReqBody>)>>;

/// Starts a flight's work; called only for the request that leads it.
pub(crate) type Make<S, ReqBody> = Box<dyn FnOnce() -> Work<S, ReqBody> + Send>;

/// What a flight gives each of its waiters.
#[derive(Clone)]
pub(crate) enum Flown {
    Shared(Arc<SharedResponse>),
    Private(Arc<PrivateResponse>),
    Failed(Failure),
}

impl Flown {
    /// Whether a later request may be answered with this (the memo): a
    /// shared response, not a 5xx, not `no-cache`, whose body a new reader
    /// gets whole.
    pub(crate) fn replayable(&self) -> bool {
        let Flown::Shared(response) = self else {
            return false;
        };
        let no_cache = cache_directives(&response.head.headers)
            .any(|directive| directive.eq_ignore_ascii_case("no-cache"));
        !response.head.status.is_server_error() && !no_cache && response.body.replayable()
    }
}

/// A response every waiter gets: its head, and its body to read.
pub(crate) struct SharedResponse {
    pub(crate) head: http::response::Parts,
    pub(crate) body: Arc<SharedBody>,
    /// The request headers the response varies on, and the leader's values
    /// of them: a waiter whose values differ must not get it.
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) leader_values: Vec<Vec<HeaderValue>>,
}

/// A response for its own requester only.
pub(crate) struct PrivateResponse {
    pub(crate) owner: u64,
    pub(crate) response: Mutex<Option<Response<BoxBody>>>,
}

impl PrivateResponse {
    pub(crate) fn take(&self) -> Option<Response<BoxBody>> {
        self.response
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The inner service failed: what every waiter answers instead.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

impl Failure {
    pub(crate) const LOST: Self = Self {
        status: StatusCode::BAD_GATEWAY,
        reason: "bad gateway: the upstream request was lost\n",
    };
    pub(crate) const PANICKED: Self = Self {
        status: StatusCode::BAD_GATEWAY,
        reason: "bad gateway: the upstream handler panicked\n",
    };

    /// 504 for a timeout anywhere in the error's chain, 502 otherwise.
    pub(crate) fn of(error: &(dyn StdError + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            let timed_out = error.is::<tower::timeout::error::Elapsed>()
                || error
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|error| error.kind() == std::io::ErrorKind::TimedOut);
            if timed_out {
                return Self {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    reason: "gateway timeout: the upstream did not answer in time\n",
                };
            }
            cause = error.source();
        }
        Self {
            status: StatusCode::BAD_GATEWAY,
            reason: "bad gateway: the upstream request failed\n",
        }
    }

    /// The response a waiter gets for this failure.
    pub(crate) fn response<B: Body>(
        self,
        config: &Config,
        shared: bool,
    ) -> Response<CoalescedBody<B>> {
        let mut response = Response::new(CoalescedBody::full(Bytes::from_static(
            self.reason.as_bytes(),
        )));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        mark(response.headers_mut(), config, shared);
        response
    }
}

/// Adds the header that says whether a response was shared, if it is on.
pub(crate) fn mark(headers: &mut HeaderMap, config: &Config, shared: bool) {
    if let Some(name) = &config.shared_header {
        let value = if shared { "true" } else { "false" };
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
}

/// A response's `Cache-Control` directives, each trimmed, as written
/// (`max-age=60`, `private`).
fn cache_directives(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// Whether a response is for its own requester only.
fn is_private(headers: &HeaderMap) -> bool {
    headers.contains_key(SET_COOKIE)
        || cache_directives(headers)
            .map(|directive| directive.split('=').next().unwrap_or("").trim())
            .any(|directive| {
                directive.eq_ignore_ascii_case("private")
                    || directive.eq_ignore_ascii_case("no-store")
            })
}

/// The header names of a response's `Vary`, and whether it says `*`.
fn vary_of(headers: &HeaderMap) -> (Vec<HeaderName>, bool) {
    let mut names = Vec::new();
    let mut star = false;
    let directives = headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in directives {
        if name == "*" {
            star = true;
        } else if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            if !names.contains(&name) {
                names.push(name);
            }
        } else {
            // A name we cannot compare on: treat it like `*`.
            star = true;
        }
    }
    (names, star)
}

pin_project! {
    /// The work of a flight: the leader's request to the inner service, and
    /// turning its response into what every waiter gets.
    #[project = WorkProj]
    pub(crate) enum Work<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Calling {
            #[pin]
            future: S::Future,
            leader_headers: HeaderMap,
            shared: Arc<Shared>,
            id: u64,
            resource: u64,
        },
        Lost,
    }
}

impl<S, ReqBody> Work<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Sends the leader's request, from its slot.
    pub(crate) fn start(
        shared: Arc<Shared>,
        slot: &Slot<S, ReqBody>,
        id: u64,
        resource: u64,
    ) -> Self {
        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some((mut service, request)) = taken else {
            return Self::Lost;
        };
        Counters::add(&shared.counters.flights);
        let leader_headers = request.headers().clone();
        Self::Calling {
            future: service.call(request),
            leader_headers,
            shared,
            id,
            resource,
        }
    }
}

impl<S, ReqBody, ResBody> Future for Work<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Flown;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Flown> {
        let WorkProj::Calling {
            future,
            leader_headers,
            shared,
            id,
            resource,
        } = self.project()
        else {
            return Poll::Ready(Flown::Failed(Failure::LOST));
        };
        let response = match ready!(future.poll(cx)) {
            Ok(response) => response,
            Err(error) => {
                Counters::add(&shared.counters.upstream_errors);
                let error: BoxError = error.into();
                return Poll::Ready(Flown::Failed(Failure::of(&*error)));
            }
        };
        let (head, body) = response.into_parts();
        let (vary, vary_star) = vary_of(&head.headers);
        let config = &*shared.config;
        if vary_star || is_private(&head.headers) {
            let until = Instant::now() + config.private_bypass;
            remember(shared, resource, |memo| memo.bypass_until = Some(until));
            return Poll::Ready(Flown::Private(Arc::new(PrivateResponse {
                owner: *id,
                response: Mutex::new(Some(Response::from_parts(head, box_body(body)))),
            })));
        }
        let extra: Vec<HeaderName> = vary
            .iter()
            .filter(|name| !config.key_headers.contains(name))
            .cloned()
            .collect();
        let known = shared.memo.get(resource);
        if known
            .as_ref()
            .map_or(!extra.is_empty(), |memo| *memo.vary != *extra)
        {
            remember(shared, resource, |memo| memo.vary = extra.into());
        }
        let leader_values = values_of(leader_headers, &vary);
        Poll::Ready(Flown::Shared(Arc::new(SharedResponse {
            head,
            body: Arc::new(SharedBody::new(box_body(body), config.max_buffer)),
            vary,
            leader_values,
        })))
    }
}

/// Updates what the layer remembers about `resource`.
fn remember(shared: &Shared, resource: &u64, update: impl FnOnce(&mut Memo)) {
    let mut memo = shared.memo.get(resource).unwrap_or_default();
    update(&mut memo);
    shared.memo.insert(*resource, memo);
}
