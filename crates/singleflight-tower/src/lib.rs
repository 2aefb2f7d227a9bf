//! A [tower] layer that coalesces identical concurrent HTTP requests,
//! safely, streaming the body to every waiter.
//!
//! When many clients ask for the same resource at once, [`CoalesceLayer`]
//! sends one request to the service behind it and gives its response to all
//! of them, the body streamed to each as it arrives. It is built on
//! [`singleflight::future::Group`], so the upstream request belongs to all
//! its waiters: the first client going away does not cancel it for the
//! others.
//!
//! Safe by default: only `GET` and `HEAD` without a body are coalesced,
//! never writes, never requests with `Authorization` or `Cookie`, never a
//! response private to its requester (`Set-Cookie`, `Cache-Control:
//! private`/`no-store`); `Vary` is honoured. See [`Coalesce`] for the rules
//! and [`CoalesceLayer`] for the settings.
//!
//! # How the body is shared
//!
//! The flight's value is the response head and one shared body. No task is
//! spawned: whichever waiter's body is polled at the end of what has arrived
//! pulls the next chunk from the upstream (under a lock held only for that
//! non-blocking poll), appends it to a log every waiter reads at its own
//! pace, and wakes the others. The upstream is polled with a waker that
//! wakes every waiting reader, so a waiter that stalls or goes away never
//! holds the others up, and the upstream is only read as fast as the
//! fastest waiter reads.
//!
//! The log keeps up to [`CoalesceLayer::max_buffer`] bytes (4 MiB by
//! default): a body no longer than that reaches every waiter whole however
//! slow it is; past it, a waiter that falls further behind than that fails
//! with [`Error::FellBehind`] and its client sees an aborted response. An
//! upstream failure mid-body is an [`Error::Upstream`] for every waiter, after
//! the bytes that came before it. No waiter ever gets a short body that looks
//! whole.
//!
//! # Examples
//!
//! With axum (see `examples/axum.rs` for a whole server):
//!
//! ```
//! use axum::{Router, routing::get};
//! use singleflight_tower::CoalesceLayer;
//!
//! let app: Router = Router::new()
//!     .route("/report", get(|| async { "an expensive report" }))
//!     .layer(CoalesceLayer::new());
//! # drop(app);
//! ```

mod coalesce;

pub use coalesce::{
    BoxError, Coalesce, CoalesceLayer, CoalescedBody, DEFAULT_BYPASS_HEADER, DEFAULT_SHARED_HEADER,
    Error, ResponseFuture, Stats,
};
