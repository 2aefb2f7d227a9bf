//! The response future of [`Coalesce`](crate::Coalesce).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use singleflight::future::Checked;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::body::{CoalescedBody, Reader};
use crate::config::OnMaxWait;
use crate::error::BoxError;
use crate::flight::{Make, Slot};
use crate::flown::{Failure, Flown, mark};
use crate::memo::{Kept, set_age};
use crate::rules;
use crate::served::Served;
use crate::state::{Counters, Shared};

type Call<S, ReqBody> = Checked<'static, Arc<str>, Arc<str>, Flown, RandomState, Make<S, ReqBody>>;

pin_project! {
    /// The response future of [`Coalesce`](crate::Coalesce).
    ///
    /// Dropping it leaves the flight to its other waiters: the upstream
    /// request goes on for them.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{Empty, Full};
    /// use singleflight_tower::{Coalesce, ResponseFuture};
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut service = Coalesce::new(tower::service_fn(|_req: http::Request<Empty<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// }));
    /// let ready = service.ready().await.unwrap();
    /// let future = ready.call(http::Request::new(Empty::new()));
    /// let response = future.await.unwrap();
    /// assert_eq!(response.status(), http::StatusCode::OK);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping it before the response gives up only this request: when it
    /// led a flight, a waiting request takes the upstream request over where
    /// it stands; when it was the last, the upstream request is dropped.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, ReqBody>,
    }
}

pin_project! {
    // Two arms only: a request that is not coalesced costs one branch and
    // a tag beside the inner service's future; everything a coalesced one
    // needs (including the future of a request it sends after all) is
    // behind one allocation.
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Passthrough {
            #[pin]
            future: S::Future,
        },
        Coalesced {
            state: Pin<Box<State<S, ReqBody>>>,
        },
        // Answered from the memo: the head to send and a reader of the
        // kept body.
        Kept {
            kept: Option<Box<(http::response::Parts, Reader)>>,
        },
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Leading or waiting for a flight.
        Waiting {
            waiting: Waiting<S, ReqBody>,
        },
        // About to send our own request after all (see `Refetching`): the
        // service, released while waiting, is made ready again first.
        Readying {
            readying: Option<(S, Request<ReqBody>)>,
            shared: Arc<Shared>,
        },
        // Sending our own request after all: the flight's response was
        // private to its requester, varied on a header we differ in, or no
        // longer kept its body's first bytes when we came for it.
        Refetching {
            #[pin]
            future: S::Future,
            shared: Arc<Shared>,
        },
        Done,
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[inline]
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn kept(kept: Box<(http::response::Parts, Reader)>) -> Self {
        Self {
            kind: Kind::Kept { kept: Some(kept) },
        }
    }

    pub(crate) fn coalesced(
        call: Call<S, ReqBody>,
        slot: Arc<Slot<S, ReqBody>>,
        id: u64,
        shared: Arc<Shared>,
        memo_key: Option<Arc<str>>,
    ) -> Self {
        let deadline = shared
            .config
            .max_wait
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        Self {
            kind: Kind::Coalesced {
                state: Box::pin(State::Waiting {
                    waiting: Waiting {
                        call,
                        slot,
                        id,
                        shared,
                        released: false,
                        memo_key,
                        deadline,
                    },
                }),
            },
        }
    }
}

/// The head and body reader of a kept response, as served at `now`: with
/// its `Age`, marked shared, and stale (`stale` says why) when it is.
pub(crate) fn kept_answer(
    kept: &Kept,
    shared: &Shared,
    now: Instant,
    served: Served,
    stale: Option<&'static str>,
) -> Box<(http::response::Parts, Reader)> {
    let config = &*shared.config;
    let mut head = kept.response.head.parts.clone();
    set_age(&mut head.headers, kept, now);
    mark(&mut head.headers, config, true);
    if let (Some(name), Some(why)) = (&config.stale_header, stale) {
        head.headers
            .insert(name.clone(), HeaderValue::from_static(why));
    }
    head.extensions.insert(served);
    Box::new((head, kept.response.body.reader()))
}

/// Tells whoever reads the response where it came from.
fn served<B>(mut response: Response<B>, served: Served) -> Response<B> {
    response.extensions_mut().insert(served);
    response
}

/// A coalesced request waiting for its flight.
struct Waiting<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    call: Call<S, ReqBody>,
    slot: Arc<Slot<S, ReqBody>>,
    id: u64,
    shared: Arc<Shared>,
    /// Whether this waiter swapped its ready service for an unready clone.
    released: bool,
    /// The key, kept only when the memo is on: to answer with a kept
    /// response when the upstream fails (stale-if-error).
    memo_key: Option<Arc<str>>,
    /// When this request stops waiting ([`CoalesceLayer::max_wait`](crate::CoalesceLayer::max_wait)).
    deadline: Option<Pin<Box<Sleep>>>,
}

/// A follower gives back the ready service it was called with (and with it
/// any capacity its readiness reserved, such as a concurrency-limit permit)
/// while it waits, keeping an unready clone in case it must send its own
/// request later. The ready service is dropped outside the slot's lock (its
/// drop is user code); the slot is only ever locked by its own request.
fn release<S: Clone, ReqBody>(slot: &Slot<S, ReqBody>) {
    let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let ready = guard.as_mut().map(|(service, _)| {
        let spare = service.clone();
        std::mem::replace(service, spare)
    });
    drop(guard);
    drop(ready);
}

/// What a waiter does with its flight's value.
enum Delivery<B: Body> {
    Respond(Response<CoalescedBody<B>>),
    Refetch,
}

fn deliver<S, ReqBody, B: Body>(
    flown: Flown,
    was_shared: bool,
    id: u64,
    slot: &Slot<S, ReqBody>,
    shared: &Shared,
) -> Delivery<B> {
    let config = &*shared.config;
    let joined = matches!(flown, Flown::Joined(_));
    // A request whose slot is empty sent its request for the flight.
    let led = !joined
        && slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
    let role = if led {
        Served::Leader
    } else {
        Served::Follower
    };
    match flown {
        Flown::Failed(failure) => {
            Delivery::Respond(served(failure.response(config, was_shared), role))
        }
        Flown::Private(private) => {
            if private.owner != id {
                return Delivery::Refetch;
            }
            match private.take() {
                Some(response) => {
                    let mut response = response.map(CoalescedBody::boxed);
                    mark(response.headers_mut(), config, false);
                    Delivery::Respond(served(response, Served::Leader))
                }
                None => Delivery::Respond(served(Failure::LOST.response(config, false), role)),
            }
        }
        Flown::Shared(response) | Flown::Joined(response) => {
            // A waiter still holding its request did not send it: it checks
            // the response's `Vary` against it, and may send it after all.
            // (Only this waiter's future touches its slot, so looking once
            // here and once below sees the same thing.)
            if !response.head.vary.is_empty() {
                let own = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((_, request)) = own.as_ref()
                    && !rules::same_values(
                        request.headers(),
                        &response.head.vary,
                        &response.head.leader_values,
                    )
                {
                    return Delivery::Refetch;
                }
            }
            // Every byte from the first is needed. A waiter that came too
            // late for it sends its own request; the one that fetched the
            // body has no other, and its reader fails on the first frame.
            let reader = match response.body.join() {
                Some(reader) => reader,
                None if slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some() =>
                {
                    return Delivery::Refetch;
                }
                None => response.body.reader(),
            };
            let was_shared = was_shared || joined;
            if was_shared {
                Counters::add(&shared.counters.shared);
            }
            if joined {
                Counters::add(&shared.counters.joined);
            }
            let mut head = response.head.parts.clone();
            mark(&mut head.headers, config, was_shared);
            head.extensions.insert(role);
            Delivery::Respond(Response::from_parts(head, CoalescedBody::shared(reader)))
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<CoalescedBody<ResBody>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(served(
                    response.map(CoalescedBody::inner),
                    Served::Bypass,
                ))),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Coalesced { state } => poll_coalesced(state.as_mut(), cx),
            KindProj::Kept { kept } => {
                let (head, reader) = *kept.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(Response::from_parts(
                    head,
                    CoalescedBody::shared(reader),
                )))
            }
        }
    }
}

/// Polls a coalesced request; out of line, so that the pass-through path
/// stays small.
#[inline(never)]
fn poll_coalesced<S, ReqBody, ResBody>(
    mut state: Pin<&mut State<S, ReqBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<CoalescedBody<ResBody>>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    loop {
        let refetch = match state.as_mut().project() {
            StateProj::Waiting { waiting } => {
                let Waiting {
                    call,
                    slot,
                    id,
                    shared,
                    released,
                    memo_key,
                    deadline,
                    ..
                } = waiting;
                let delivery = match Pin::new(call).poll(cx) {
                    Poll::Pending => {
                        if !*released {
                            *released = true;
                            release(slot);
                        }
                        let Some(sleep) = deadline.as_mut() else {
                            return Poll::Pending;
                        };
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        *deadline = None;
                        match gave_up(slot, shared) {
                            Some(delivery) => delivery,
                            // A leader that may bypass is upstream already.
                            None => return Poll::Pending,
                        }
                    }
                    Poll::Ready(result) => {
                        let (flown, was_shared) = match result {
                            Ok(outcome) => (outcome.value, outcome.shared),
                            // The group has no cap or deadline: only a panic ends here.
                            Err(_panicked) => (Flown::Failed(Failure::PANICKED), true),
                        };
                        match stale_if_error(&flown, memo_key.as_deref(), shared) {
                            Some((head, reader)) => Delivery::Respond(Response::from_parts(
                                head,
                                CoalescedBody::shared(reader),
                            )),
                            None => deliver(flown, was_shared, *id, slot, shared),
                        }
                    }
                };
                match delivery {
                    Delivery::Respond(response) => {
                        state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                    Delivery::Refetch => {
                        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                        let Some(pair) = taken else {
                            let response = served(
                                Failure::LOST.response(&shared.config, false),
                                Served::Bypass,
                            );
                            state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        };
                        Counters::add(&shared.counters.refetched);
                        State::Readying {
                            readying: Some(pair),
                            shared: Arc::clone(shared),
                        }
                    }
                }
            }
            StateProj::Readying { readying, shared } => {
                let ready = match readying.as_mut() {
                    Some(pair) => ready!(pair.0.poll_ready(cx)),
                    None => Ok(()),
                };
                let pair = readying.take();
                match (ready, pair) {
                    (Ok(()), Some(pair)) => {
                        let (mut service, request) = pair;
                        State::Refetching {
                            future: service.call(request),
                            shared: Arc::clone(shared),
                        }
                    }
                    (ready, _) => {
                        let failure = match ready {
                            Err(error) => Failure::of(&*error.into()),
                            Ok(()) => Failure::LOST,
                        };
                        let response =
                            served(failure.response(&shared.config, false), Served::Bypass);
                        state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                }
            }
            StateProj::Refetching { future, shared } => {
                let mut response = match ready!(future.poll(cx)) {
                    Ok(response) => response.map(CoalescedBody::inner),
                    Err(error) => {
                        let error: BoxError = error.into();
                        Failure::of(&*error).response(&shared.config, false)
                    }
                };
                mark(response.headers_mut(), &shared.config, false);
                state.set(State::Done);
                return Poll::Ready(Ok(served(response, Served::Bypass)));
            }
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        };
        state.set(refetch);
    }
}

/// What a request that waited its [`CoalesceLayer::max_wait`](crate::CoalesceLayer::max_wait)
/// does: a 504, or its own request (`None`: it leads the flight, whose
/// request is its own already, so it keeps waiting).
fn gave_up<S, ReqBody, B: Body>(slot: &Slot<S, ReqBody>, shared: &Shared) -> Option<Delivery<B>> {
    let config = &*shared.config;
    let follows = slot
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some();
    if config.on_max_wait == OnMaxWait::Bypass {
        if follows {
            Counters::add(&shared.counters.max_wait_bypasses);
            return Some(Delivery::Refetch);
        }
        return None;
    }
    Counters::add(&shared.counters.max_wait_timeouts);
    let limit = config.max_wait.unwrap_or_default();
    let mut response = Response::new(CoalescedBody::full(Bytes::from(format!(
        "gave up waiting after {limit:?}\n"
    ))));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let role = if follows {
        Served::Follower
    } else {
        Served::Leader
    };
    Some(Delivery::Respond(served(response, role)))
}

/// A kept response standing in for a failed flight (a transport error, a
/// timeout, a 5xx), while the memo may serve it (stale-if-error).
fn stale_if_error(
    flown: &Flown,
    key: Option<&str>,
    shared: &Shared,
) -> Option<(http::response::Parts, Reader)> {
    let failed = match flown {
        Flown::Failed(_) => true,
        Flown::Shared(response) | Flown::Joined(response) => {
            response.head.parts.status.is_server_error()
        }
        Flown::Private(_) => false,
    };
    if !failed {
        return None;
    }
    let now = Instant::now();
    let kept = shared.memo.as_ref()?.if_error(key?, now)?;
    Counters::add(&shared.counters.stale_if_error);
    Some(*kept_answer(
        &kept,
        shared,
        now,
        Served::Stale,
        Some("if-error"),
    ))
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Coalesced { state } => match &**state {
                State::Waiting { .. } => "Waiting",
                State::Readying { .. } => "Readying",
                State::Refetching { .. } => "Refetching",
                State::Done => "Done",
            },
            Kind::Kept { .. } => "Kept",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
