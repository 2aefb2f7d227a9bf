//! Request coalescing across processes and machines through Redis.
//!
//! A service behind a load balancer runs many instances; each coalesces
//! its own callers, so a cold key still costs one execution per instance.
//! [`Group`] coalesces within its process first (at most one caller per
//! process and key talks to Redis), then across every process that shares
//! the Redis and the prefix: one runs the work, the others receive its
//! value.
//!
//! # How
//!
//! - The leader is elected by a lease, `SET {key}:lease "{generation}:{token}"
//!   NX PX {lease}`, taken in one script with the key's fencing generation
//!   (`INCR`). The token is unique to the flight.
//! - While its work runs, the leader renews the lease every third of its
//!   span with an owner-checked script, for at most `max_work`. A leader
//!   that loses its lease says so (a warning and
//!   `singleflight_redis_lost_leases_total`) and never takes it back.
//! - The leader publishes its value, encoded by a [`Codec`] ([`Json`] by
//!   default) with its generation, to a stream, then releases the lease by
//!   compare-and-delete. Waiters read the stream from its start with a
//!   blocking `XREAD`, so a value published before they began to read is
//!   never missed, and they drop a value of an older generation than the
//!   lease they saw.
//! - When the lease expires without a value (the leader died), a waiter
//!   takes over. When Redis is unreachable, calls coalesce within their
//!   process and run the work (or fail, per [`OnRedisError`]), with one log
//!   line per episode.
//! - `redis://` and `rediss://` (TLS through rustls, against the
//!   platform's roots or [`Builder::root_certificate`]).
//! - Keys are namespaced by a prefix and hex-encoded (any bytes are safe),
//!   inside a cluster hash tag. Values over `max_value_bytes` are not
//!   published; the waiters run the work themselves.
//!
//! # What it guarantees
//!
//! Duplicate work becomes rare, not impossible: a leader paused for longer
//! than its lease (a stop-the-world pause, a suspended VM, a partition)
//! loses it while a waiter takes over, and both may finish. The lock is for
//! efficiency, never for correctness: never use it for writes (insert,
//! update, delete), and never for work that must run at most once.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn fetch_status() -> String { String::new() }
//! # async fn run() -> Result<(), singleflight_redis::Error> {
//! let group = singleflight_redis::Group::<String>::builder("redis://127.0.0.1:6379")
//!     .prefix("status")
//!     .lease(Duration::from_secs(2))
//!     .build()?;
//! let outcome = group.call("upstream", || async { fetch_status().await }).await?;
//! println!("{} ({:?})", outcome.value, outcome.source);
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod error;
mod group;
mod keys;
mod protocol;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

pub use codec::{Codec, Json};
pub use error::Error;
pub use group::{Builder, Group, OnRedisError, Outcome, Source, Stats};
