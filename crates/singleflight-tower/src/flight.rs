// A flight's work: the leader's request to the inner service, and what its
// response becomes for every waiter.
//
// Invariants:
// - `Slot` holds a coalesced request and the ready service to send it with.
//   Exactly one of two things takes them out, once: the flight's work, when
//   that request leads the flight and sends it, or its own `ResponseFuture`,
//   when it must fetch its own response after all. A leader never refetches,
//   since it owns the response its flight produced. A follower swaps the
//   ready service in its slot for an unready clone as soon as it has joined,
//   so that it holds no capacity of the inner service (a concurrency permit,
//   a buffer slot) while it waits; it drives the clone to readiness if it
//   must refetch.
// - A flight whose key has a body still streaming (an earlier flight's)
//   sends nothing: it joins that body, and its request stays in its slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use crate::body::{SharedBody, box_body};
use crate::error::BoxError;
use crate::flown::{Failure, Flown, PrivateResponse, SharedHead, SharedResponse};
use crate::rules;
use crate::state::{Counters, Shared, Waiter};

/// The key of the flight a request leads, in the extensions of the request
/// the inner service receives for it: a service behind the layer can tell
/// a flight's request from one sent straight through, and coalesce it
/// further under the same key (across processes, for instance). Requests
/// that were not coalesced never carry it.
///
/// # Examples
///
/// ```
/// use singleflight_tower::FlightKey;
///
/// fn describe(request: &http::Request<()>) -> &str {
///     match request.extensions().get::<FlightKey>() {
///         Some(key) => key.as_str(),
///         None => "not coalesced",
///     }
/// }
/// assert_eq!(describe(&http::Request::new(())), "not coalesced");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightKey(Arc<str>);

impl FlightKey {
    /// The key: the method, scheme, authority, path and query, and the
    /// key headers' values (or what the layer's key function made).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A coalesced request and the ready service to send it with.
pub(crate) type Slot<S, ReqBody> = Mutex<Option<(S, Request<ReqBody>)>>;

/// Starts a flight's work; called only for the request that leads it.
pub(crate) type Make<S, ReqBody> = Box<dyn FnOnce() -> Work<S, ReqBody> + Send>;

pin_project! {
    /// The work of a flight.
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
            key: Arc<str>,
            // The request's path and query, when the memo may keep the
            // response (what purges match).
            target: Option<Box<str>>,
            // Counts the flight in `Coalesce::in_progress` until its head
            // arrives (or the flight is dropped).
            in_progress: Waiter,
        },
        Joining {
            response: Option<Arc<SharedResponse>>,
        },
        Lost,
    }
}

impl<S, ReqBody> Work<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Joins the body still streaming for `key`, if there is one; sends the
    /// leader's request, from its slot, if not.
    pub(crate) fn start(
        shared: Arc<Shared>,
        slot: &Slot<S, ReqBody>,
        id: u64,
        resource: u64,
        key: Arc<str>,
    ) -> Self {
        if let Some(response) = shared.streaming.find(&key) {
            return Self::Joining {
                response: Some(Arc::new(response)),
            };
        }
        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some((mut service, mut request)) = taken else {
            return Self::Lost;
        };
        Counters::add(&shared.counters.flights);
        request.extensions_mut().insert(FlightKey(Arc::clone(&key)));
        let leader_headers = request.headers().clone();
        let target = shared.memo.as_ref().map(|_| {
            let uri = request.uri();
            uri.path_and_query()
                .map_or_else(|| uri.path(), |target| target.as_str())
                .into()
        });
        let in_progress = shared.waiting.enter(&key);
        Self::Calling {
            future: service.call(request),
            leader_headers,
            shared,
            id,
            resource,
            key,
            target,
            in_progress,
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
        let (future, leader_headers, shared, id, resource, key, target) = match self.project() {
            WorkProj::Calling {
                future,
                leader_headers,
                shared,
                id,
                resource,
                key,
                target,
                in_progress: _,
            } => (future, leader_headers, shared, *id, *resource, key, target),
            WorkProj::Joining { response } => {
                return Poll::Ready(match response.take() {
                    Some(response) => Flown::Joined(response),
                    None => Flown::Failed(Failure::LOST),
                });
            }
            WorkProj::Lost => return Poll::Ready(Flown::Failed(Failure::LOST)),
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
        let (vary, vary_star) = rules::vary_of(&head.headers);
        let config = &*shared.config;
        if vary_star || rules::is_private(&head.headers) {
            let until = Instant::now() + config.private_bypass;
            shared.learn(resource, |facts| facts.bypass_until = Some(until));
            return Poll::Ready(Flown::Private(Arc::new(PrivateResponse {
                owner: id,
                response: Mutex::new(Some(Response::from_parts(head, box_body(body)))),
            })));
        }
        let extra: Vec<HeaderName> = vary
            .iter()
            .filter(|name| !config.key_headers.contains(name))
            .cloned()
            .collect();
        let known = shared.facts.get(&resource);
        if known
            .as_ref()
            .map_or(!extra.is_empty(), |facts| *facts.vary != *extra)
        {
            shared.learn(resource, |facts| facts.vary = extra.into());
        }
        let leader_values = rules::values_of(leader_headers, &vary);
        let settle = shared.streaming.settle(Arc::clone(key), id);
        let body = SharedBody::new(box_body(body), shared.keep.clone(), Some(settle));
        let response = Arc::new(SharedResponse {
            head: Arc::new(SharedHead {
                parts: head,
                vary,
                leader_values,
            }),
            body: Arc::new(body),
        });
        // Registered before this flight ends, so a request that starts the
        // next flight for the key finds it. Nobody reads the body yet, so it
        // cannot have settled in between.
        if response.body.streaming() {
            shared.streaming.register(Arc::clone(key), id, &response);
        }
        // Kept before this flight ends too: a request that arrives between
        // the two finds either the flight or the kept response.
        if let (Some(memo), Some(target)) = (&shared.memo, target.as_deref()) {
            memo.keep(key, target, &response, Instant::now());
        }
        Poll::Ready(Flown::Shared(response))
    }
}
