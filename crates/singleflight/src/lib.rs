//! Request coalescing: when many callers ask for the same thing at once, the
//! work runs once and all of them get the result.
//!
//! This is Go's [`golang.org/x/sync/singleflight`] for Rust, with a blocking
//! group for threads ([`sync::Group`]) and an async group for any executor
//! ([`future::Group`]) whose flights belong to all their callers: dropping
//! the caller that started a flight does not cancel it for the others.
//!
//! [`golang.org/x/sync/singleflight`]: https://pkg.go.dev/golang.org/x/sync/singleflight
//!
//! # When to coalesce
//!
//! Reads of data that is requested very often, by many callers at once, and
//! changes rarely or may be slightly stale. **Never writes** (insert, update,
//! delete): merging them hides a caller's own effect or races.
//!
//! # Examples
//!
//! ```
//! use singleflight::sync::Group;
//!
//! let group = Group::<String, String>::new();
//! let out = group.call("status", || "200 OK".to_string());
//! assert_eq!(out.value, "200 OK");
//! println!("shared: {}", out.shared);
//!
//! // Fallible work: the error reaches every caller of the flight behind one
//! // `Arc`, so it needs no `Clone`.
//! let err = group
//!     .try_call("status", || Err(std::io::Error::other("upstream down")))
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "upstream down");
//! ```
//!
//! Calls take the key by reference (`&str` for a `String` key) and clone it
//! into the group only when they start a flight.
//!
//! # Guarantees (both groups)
//!
//! - One execution per key at a time; calls that arrive meanwhile share it.
//! - No lock is held while the work runs.
//! - A panic in the work reaches every caller of that flight, frees the key
//!   and leaves the group usable; an error of fallible work (`try_call`)
//!   reaches every caller as the same `Arc`.
//! - No policy makes a call panic; a call for a key from inside that key's
//!   own work panics at once instead of waiting for itself forever.
//! - [`forget`](sync::Group::forget) lets new callers start a new flight while
//!   those waiting still get the old one's value.
//! - After every caller has returned, been cancelled or panicked, the group
//!   holds nothing for that key.
//! - Waiters sleep; nothing polls or spins.
//!
//! # Features
//!
//! - `tokio`: [`future::TokioSpawner`], to run detached flights on a tokio
//!   runtime, `call_with_timeout` on the async group, and
//!   [`policy::TokioClock`], a memo clock that follows tokio's time, so that
//!   tests can pause and advance it. Without it no async runtime is pulled
//!   in.
//! - `metrics`: a group built with `.metrics(name)` also reports its counters
//!   through the [`metrics`](https://docs.rs/metrics) facade. Without it,
//!   `stats()` still works.
//!
//! # Policies
//!
//! Beyond Go, all off by default: a memo with TTL, negative TTL and
//! stale-while-revalidate, an error policy, deadlines, a waiter cap and
//! metrics. See [`policy`].

// docs.rs builds with `--cfg docsrs`: badges name the feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod engine;
mod error;
mod loom;
mod outcome;
mod panic;

pub mod future;
pub mod policy;
pub mod sync;

pub use error::Error;
pub use outcome::{Outcome, Source};
pub use panic::Panicked;
