// The layer's HTTP cache: responses kept after their flight, by request key,
// each with its own freshness (RFC 9111) and stale windows (RFC 5861), and a
// weight, under a byte budget. The core group still coalesces the flights;
// this decides what a request may be answered with instead of one.
//
// Invariants:
// - An entry's response is shared (never private), not a 5xx, and its body
//   was replayable (announced length within the window and the per-entry
//   limit) when it was kept; a body that failed since is found at its next
//   hit (`Kept::whole`) and the entry dropped.
// - `fresh_until <= swr_until` and `fresh_until <= error_until`; both stale
//   windows are empty when the response forbids stale (`must-revalidate`,
//   `proxy-revalidate`, `s-maxage`).
// - At most one refresh per entry runs at a time (`refreshing`); the flight
//   it starts is coalesced like any other.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use http::header::{AGE, CONTENT_LENGTH};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use tokio::time::Instant;

use crate::config::Config;
use crate::flown::SharedResponse;
use crate::rules;

/// Which kept responses [`Coalesce::purge`](crate::Coalesce::purge) drops.
///
/// Paths are matched on the request target as the client sent it: the path
/// and the query (`/report?day=1`).
///
/// # Examples
///
/// ```
/// use singleflight_tower::Purge;
///
/// let one = Purge::Path("/report?day=1".into());
/// let under = Purge::Prefix("/reports/".into());
/// assert!(one.matches("/report?day=1") && !one.matches("/report"));
/// assert!(under.matches("/reports/2024") && !under.matches("/report"));
/// assert!(Purge::All.matches("/anything"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// Responses to requests for exactly this path and query (every method
    /// and variant of it).
    Path(String),
    /// Responses to requests whose path and query start with this.
    Prefix(String),
    /// Every kept response.
    All,
}

impl Purge {
    /// Whether a response to a request for `target` (path and query) goes.
    pub fn matches(&self, target: &str) -> bool {
        match self {
            Purge::Path(path) => target == path,
            Purge::Prefix(prefix) => target.starts_with(prefix.as_str()),
            Purge::All => true,
        }
    }
}

/// A kept response.
pub(crate) struct Kept {
    pub(crate) response: Arc<SharedResponse>,
    /// The request target it answered: what purges match.
    target: Box<str>,
    /// When it was kept, and how old it already was then (its `Age`).
    kept_at: Instant,
    age: Duration,
    fresh_until: Instant,
    /// The end of its stale-while-revalidate window.
    swr_until: Instant,
    /// The end of its stale-if-error window.
    error_until: Instant,
    weight: u64,
    refreshing: AtomicBool,
}

impl Kept {
    /// Its `Age` at `now`, in seconds: as old as it came, plus how long it
    /// has been kept.
    pub(crate) fn age_header(&self, now: Instant) -> HeaderValue {
        let age = self.age + now.saturating_duration_since(self.kept_at);
        HeaderValue::from(age.as_secs())
    }

    /// Whether a new reader still gets its whole body.
    pub(crate) fn whole(&self) -> bool {
        self.response.body.replayable()
    }

    /// Claims its refresh; false when one already runs.
    pub(crate) fn begin_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Lets a later stale hit start another refresh (this one failed, or
    /// left it in place).
    pub(crate) fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

/// What the memo has for a request.
pub(crate) enum Lookup {
    /// Fresh.
    Fresh(Arc<Kept>),
    /// Past its lifetime, within its stale-while-revalidate window.
    Stale(Arc<Kept>),
    /// Nothing it may be answered with now.
    Miss,
}

#[derive(Clone)]
struct ByWeight;

impl Weighter<Arc<str>, Arc<Kept>> for ByWeight {
    fn weight(&self, _key: &Arc<str>, kept: &Arc<Kept>) -> u64 {
        kept.weight
    }
}

/// The kept responses, by request key.
pub(crate) struct Memo {
    cache: Cache<Arc<str>, Arc<Kept>, ByWeight, DefaultHashBuilder>,
    /// The longest a response is kept fresh, whatever it says.
    ceiling: Duration,
    swr: Duration,
    stale_if_error: Duration,
    /// The largest body kept, in bytes.
    max_entry: u64,
}

/// A guess at a kept response's size, to size the cache's tables.
const TYPICAL_ENTRY: u64 = 4096;

impl Memo {
    /// The memo `config` asks for, if any.
    pub(crate) fn new(config: &Config) -> Option<Self> {
        let ceiling = config.memo_ttl?;
        let budget = config.memo_max_bytes.max(1);
        let max_entry = config
            .memo_max_entry
            .min(config.body_window as u64)
            .min(budget);
        // Each shard holds its share of the budget, and must hold the
        // largest entry: fewer shards for a small budget.
        let mut shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
        while shards > 1 && budget / shards as u64 <= max_entry {
            shards /= 2;
        }
        let items = usize::try_from(budget / TYPICAL_ENTRY)
            .unwrap_or(usize::MAX)
            .max(32);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(items)
            .weight_capacity(budget)
            .build()
            .ok()?;
        Some(Self {
            cache: Cache::with_options(
                options,
                ByWeight,
                DefaultHashBuilder::default(),
                Default::default(),
            ),
            ceiling,
            swr: config.stale.unwrap_or_default(),
            stale_if_error: config.stale_if_error.unwrap_or_default(),
            max_entry,
        })
    }

    /// What the memo may answer a request for `key` with at `now`.
    #[inline]
    pub(crate) fn lookup(&self, key: &str, now: Instant) -> Lookup {
        match self.cache.get(key) {
            Some(kept) if now < kept.fresh_until => Lookup::Fresh(kept),
            Some(kept) if now < kept.swr_until => Lookup::Stale(kept),
            _ => Lookup::Miss,
        }
    }

    /// A response for `key` that may stand in for a failed upstream at
    /// `now` (stale-if-error).
    pub(crate) fn if_error(&self, key: &str, now: Instant) -> Option<Arc<Kept>> {
        self.cache
            .get(key)
            .filter(|kept| now < kept.error_until && kept.whole())
    }

    /// Keeps `response`, the answer to a request for `target` under `key`,
    /// if its headers, status and body allow; returns whether it did.
    pub(crate) fn keep(
        &self,
        key: &Arc<str>,
        target: &str,
        response: &Arc<SharedResponse>,
        now: Instant,
    ) -> bool {
        let parts = &response.head.parts;
        if parts.status.is_server_error() || !response.body.replayable() {
            return false;
        }
        let announced = response.body.exact_len().or_else(|| {
            parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|length| length.to_str().ok()?.parse().ok())
        });
        let body = announced.unwrap_or(0);
        if body > self.max_entry {
            return false;
        }
        let freshness = rules::freshness(&parts.headers, SystemTime::now());
        if !freshness.storable {
            return false;
        }
        let remaining = freshness.lifetime.map_or(self.ceiling, |lifetime| {
            lifetime.saturating_sub(freshness.age).min(self.ceiling)
        });
        if remaining.is_zero() {
            return false;
        }
        // The response's own stale windows, bounded by the settings; none
        // at all when it forbids stale.
        let window = |own: Option<Duration>, bound: Duration| {
            if freshness.no_stale {
                Duration::ZERO
            } else {
                own.map_or(bound, |own| own.min(bound))
            }
        };
        let fresh_until = now + remaining;
        let headers: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let kept = Kept {
            response: Arc::clone(response),
            target: target.into(),
            kept_at: now,
            age: freshness.age,
            fresh_until,
            swr_until: fresh_until + window(freshness.stale_while_revalidate, self.swr),
            error_until: fresh_until + window(freshness.stale_if_error, self.stale_if_error),
            weight: (key.len() + target.len() + headers) as u64 + body,
            refreshing: AtomicBool::new(false),
        };
        self.cache.insert(Arc::clone(key), Arc::new(kept));
        true
    }

    /// Drops the entry for `key` if it is still `kept`.
    pub(crate) fn remove(&self, key: &str, kept: &Arc<Kept>) {
        drop(self.cache.remove_if(key, |now| Arc::ptr_eq(now, kept)));
    }

    /// Drops the entries `purge` matches; returns how many.
    pub(crate) fn purge(&self, purge: &Purge) -> usize {
        let purged = AtomicUsize::new(0);
        self.cache.retain(|_, kept| {
            let keep = !purge.matches(&kept.target);
            if !keep {
                purged.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        purged.into_inner()
    }

    /// How many responses are kept, and their weight in bytes.
    pub(crate) fn size(&self) -> (u64, u64) {
        (self.cache.len() as u64, self.cache.weight())
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish_non_exhaustive()
    }
}

/// Adds `Age` to a kept response's head.
pub(crate) fn set_age(headers: &mut http::HeaderMap, kept: &Kept, now: Instant) {
    headers.insert(AGE, kept.age_header(now));
}
