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
//! A flight lasts until its body ends, not only until its head arrives:
//! every request for the key until then joins it and reads the body from
//! the first byte, what has arrived at once and the rest as it comes. No
//! task is spawned: whichever reader is at the end of what has arrived
//! pulls the next chunk from the upstream (under a lock held only for that
//! non-blocking poll), appends it to a log every reader reads at its own
//! pace, and wakes the others. The upstream is polled with a waker that
//! wakes every waiting reader, so a reader that stalls or goes away never
//! holds the others up, and the upstream is read as fast as the fastest
//! reader reads.
//!
//! The newest [`CoalesceLayer::body_window`] bytes (4 MiB by default) stay
//! in memory. Older bytes go to an unlinked spill file
//! ([`CoalesceLayer::spill_dir`]), up to [`CoalesceLayer::spill_max`] bytes
//! (1 GiB by default): a reader that falls behind, or joins late, reads
//! them from there, and nobody waits for it. So memory per flight is
//! bounded by the window whatever the body's size and the number of
//! readers, and no reader is failed for being slow. Only past the spill cap
//! does a reader that is behind fail, with [`Error::FellBehind`]. An
//! upstream failure mid-body is an [`Error::Upstream`] for every reader,
//! after the bytes that came before it. No reader ever gets a short body
//! that looks whole: a server forwarding the body aborts the response.
//!
//! # The memo: an HTTP cache in front of the flights
//!
//! With [`CoalesceLayer::memo`], responses are kept after their flight, by
//! request key, and later requests are answered from them with their `Age`
//! ([`Served::Memo`]). Each response's own freshness (RFC 9111) limits how
//! long: `s-maxage`, `max-age`, `Expires` minus `Date`; `no-store`,
//! `no-cache`, `private` and zero lifetimes are never kept. Past its
//! lifetime, a kept response may still be served while a refresh runs
//! ([`CoalesceLayer::stale_while_revalidate`]) or when the upstream fails
//! ([`CoalesceLayer::stale_if_error`]), within bounds the response itself
//! may shorten (RFC 5861). The memo has a byte budget
//! ([`CoalesceLayer::memo_max_bytes`]) and can be purged
//! ([`Coalesce::purge`]).
//!
//! The memo is the layer's, not the core group's: freshness comes from
//! HTTP headers, and the core knows nothing of HTTP. The group still
//! coalesces every flight, refreshes included.
//!
//! Every response says where it came from in a [`Served`] extension, for
//! access logs and metrics.
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

// docs.rs builds with `--cfg docsrs`: badges name the feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
mod error;
mod flight;
mod flown;
mod future;
mod layer;
mod memo;
mod rules;
mod served;
mod service;
mod state;

pub use body::CoalescedBody;
pub use config::{
    DEFAULT_BODY_WINDOW, DEFAULT_BYPASS_HEADER, DEFAULT_MEMO_MAX_BYTES, DEFAULT_SHARED_HEADER,
    DEFAULT_SPILL_MAX, DEFAULT_STALE_HEADER, OnMaxWait,
};
pub use error::{BoxError, Error};
pub use flight::FlightKey;
pub use future::ResponseFuture;
pub use layer::CoalesceLayer;
pub use memo::Purge;
pub use rules::is_shareable;
pub use served::Served;
pub use service::Coalesce;
pub use state::{InProgress, Stats};
