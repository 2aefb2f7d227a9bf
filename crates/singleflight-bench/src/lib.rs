//! Side-by-side benchmarks of singleflight against its peers.
//!
//! Two binaries use this library; `scripts/bench` runs both:
//!
//! - `sf-compare` times every contender of a scenario in one run, interleaved
//!   repetition by repetition, and prints one table per scenario plus the
//!   targets as ratios (`sf-compare --help`);
//! - `sf-memory` counts, with a counting global allocator, the bytes the
//!   groups allocate per flight and per waiting caller.
//!
//! The blocking contenders ([`blocking`]) are our `sync::Group`, the
//! `singleflight` crate 0.3, a floor, and Go's `x/sync/singleflight` (a
//! separate program under `go/xsync`, driven through [`go`]). The async
//! contenders ([`asynch`]) are our `future::Group`, async_singleflight 0.6,
//! singleflight-async 0.2, moka 0.12 and a floor.

pub mod asynch;
pub mod blocking;
pub mod go;
pub mod report;

/// The key of call `i` in the distinct-keys scenarios: `"key-"` and `i` in
/// decimal in one fresh heap `String`. Go builds the same bytes.
///
/// # Examples
///
/// ```
/// assert_eq!(singleflight_bench::key(42), "key-42");
/// ```
#[inline]
pub fn key(i: usize) -> String {
    format!("key-{i}")
}
