// What a flight gives each of its waiters, and the responses made from it.
//
// A `Flown` is cloned for every waiter; what is in it is shared through
// `Arc`s, and only `PrivateResponse::response` is ever taken, by its owner.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;

use crate::body::{BoxBody, CoalescedBody, SharedBody};
use crate::config::Config;

/// What a flight gives each of its waiters.
#[derive(Clone)]
pub(crate) enum Flown {
    /// The flight's own response, for every waiter.
    Shared(Arc<SharedResponse>),
    /// An earlier flight's response, whose body was still streaming when
    /// this flight started: its waiters read it from the first byte, and it
    /// counts as shared for all of them.
    Joined(Arc<SharedResponse>),
    Private(Arc<PrivateResponse>),
    Failed(Failure),
}

/// A response every waiter gets: its head, and its body to read.
pub(crate) struct SharedResponse {
    pub(crate) head: Arc<SharedHead>,
    pub(crate) body: Arc<SharedBody>,
}

/// The head of a shared response, and what decides who may have it.
pub(crate) struct SharedHead {
    pub(crate) parts: http::response::Parts,
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
