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
