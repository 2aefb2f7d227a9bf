//! Coalescing of identical concurrent HTTP requests, in tower's shape: the
//! layer ([`CoalesceLayer`]), the service ([`Coalesce`]), its response
//! future ([`ResponseFuture`]), the body every waiter reads
//! ([`CoalescedBody`]) and its [`Error`].

mod body;
mod error;
mod flight;
mod future;
mod layer;
mod service;

pub use body::CoalescedBody;
pub use error::{BoxError, Error};
pub use future::ResponseFuture;
pub use layer::{CoalesceLayer, DEFAULT_BYPASS_HEADER, DEFAULT_SHARED_HEADER};
pub use service::{Coalesce, Stats};
