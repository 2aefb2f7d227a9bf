//! Policies beyond Go's semantics, all off by default: a memo with a TTL (and
//! a negative TTL, and stale-while-revalidate in the async group), an error
//! policy, per-caller deadlines, a cap on waiters per key, and metrics.
//!
//! They are set on a group's builder ([`sync::Group::builder`],
//! [`future::Group::builder`]); a group built with none of them runs the
//! plain path, which checks a single `Option` per call.
//!
//! [`sync::Group::builder`]: crate::sync::Group::builder
//! [`future::Group::builder`]: crate::future::Group::builder
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use singleflight::{policy::ErrorPolicy, sync::Group, Source};
//!
//! let group = Group::<String, Result<u32, String>>::builder()
//!     .memo(Duration::from_secs(30))
//!     .failure_if(Result::is_err)
//!     .negative_ttl(Duration::from_secs(1))
//!     .error_policy(ErrorPolicy::RetryOnce)
//!     .metrics("users")
//!     .build();
//! assert_eq!(group.call("42".to_string(), || Ok(7)).source, Source::Flight);
//! assert_eq!(group.call("42".to_string(), || Ok(8)).value, Ok(7));
//! ```

mod clock;
pub(crate) mod memo;
pub(crate) mod metrics;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use clock::Time;
#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::{METRIC_NAMES, Stats};

use memo::{Lookup, MakeStore, Memo, Store};
use metrics::{Event, Gauge, Metrics};

/// What a caller does when the key's flight already has the group's maximum
/// number of waiters ([`max_waiters`](crate::sync::Group::builder)).
///
/// # Examples
///
/// ```
/// use singleflight::policy::Overflow;
/// let group = singleflight::sync::Group::<u8, u8>::builder()
///     .max_waiters(64, Overflow::RunOwn)
///     .build();
/// # drop(group);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Fail at once with [`Error::TooManyWaiters`](crate::Error::TooManyWaiters)
    /// (from the checked entry points; `call` and `try_call` panic).
    Refuse,
    /// Run the caller's own work, alone: not shared, not memoised; its
    /// [`Outcome::source`](crate::Outcome::source) is [`Source::Bypass`](crate::Source::Bypass).
    RunOwn,
}

/// What the waiting callers of a failed flight get. A failure is a value the
/// group's classifier ([`failure_if`](crate::sync::Group::builder)) calls one;
/// without a classifier nothing is a failure.
///
/// # Examples
///
/// ```
/// use singleflight::policy::ErrorPolicy;
/// assert_eq!(ErrorPolicy::default(), ErrorPolicy::Share);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Every caller of the flight receives the failure (Go's behaviour).
    #[default]
    Share,
    /// The caller that ran the work receives its failure; the flight's
    /// waiting callers get one retry: the first of them to wake runs its own
    /// work as the leader of a single retry flight on the same key, and the
    /// others (and new callers) wait for that retry, all at once. Exactly two
    /// executions, whatever the number of waiters; the retry's result is
    /// final, failure or not.
    RetryOnce,
}

/// Decides which values are failures.
pub(crate) type Classifier<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A builder's policy settings, shared by both groups' builders.
pub(crate) struct Settings<K, T> {
    /// Set by the builder's `memo` (where `K: Send + Sync` is known).
    pub(crate) make_memo: Option<MakeStore<K, T>>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) grace: Duration,
    pub(crate) capacity: usize,
    pub(crate) failure: Option<Classifier<T>>,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cap: Option<(usize, Overflow)>,
    pub(crate) metrics: Option<String>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
}

/// Default memo capacity, in entries.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

impl<K, T> Default for Settings<K, T> {
    fn default() -> Self {
        Self {
            make_memo: None,
            ttl: None,
            negative_ttl: None,
            grace: Duration::ZERO,
            capacity: DEFAULT_CAPACITY,
            failure: None,
            error_policy: ErrorPolicy::Share,
            timeout: None,
            cap: None,
            metrics: None,
            clock: None,
        }
    }
}

impl<K, T> Settings<K, T> {
    /// Turns the memo on, with a TTL of `ttl`.
    pub(crate) fn memo(&mut self, ttl: Duration)
    where
        K: Hash + Eq + Send + Sync + 'static,
        T: Clone + Send + Sync + 'static,
    {
        self.ttl = Some(ttl);
        self.make_memo = Some(Memo::<K, T>::boxed);
    }

    /// The policies, or `None` when every one is off (the plain path).
    pub(crate) fn build(self, swr: bool) -> Option<Box<Policies<K, T>>> {
        let retry_once = self.error_policy == ErrorPolicy::RetryOnce && self.failure.is_some();
        let time = self.clock.map_or(Time::Coarse, Time::custom);
        let memo = match (self.ttl, self.make_memo) {
            (Some(ttl), Some(make)) => {
                let grace = if swr { self.grace } else { Duration::ZERO };
                Some(make(self.capacity, ttl, self.negative_ttl, grace, &time))
            }
            _ => None,
        };
        if memo.is_none()
            && !retry_once
            && self.timeout.is_none()
            && self.cap.is_none()
            && self.metrics.is_none()
        {
            return None;
        }
        Some(Box::new(Policies {
            memo,
            failure: self.failure,
            retry_once,
            timeout: self.timeout,
            cap: self.cap,
            metrics: self.metrics.as_deref().map(Metrics::new),
            time,
        }))
    }
}

impl<K, T> fmt::Debug for Settings<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("grace", &self.grace)
            .field("capacity", &self.capacity)
            .field("classifier", &self.failure.is_some())
            .field("error_policy", &self.error_policy)
            .field("timeout", &self.timeout)
            .field("max_waiters", &self.cap)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// A group's policies, when at least one is on.
pub(crate) struct Policies<K, T> {
    pub(crate) memo: Option<Box<dyn Store<K, T>>>,
    pub(crate) failure: Option<Classifier<T>>,
    pub(crate) retry_once: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cap: Option<(usize, Overflow)>,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) time: Time,
}

impl<K, T> Policies<K, T> {
    /// Policies with everything off, for a deadline on a plain group.
    pub(crate) fn plain() -> Self {
        Self {
            memo: None,
            failure: None,
            retry_once: false,
            timeout: None,
            cap: None,
            metrics: None,
            time: Time::Coarse,
        }
    }

    pub(crate) fn is_failure(&self, value: &T) -> bool {
        self.failure.as_ref().is_some_and(|f| f(value))
    }

    #[inline]
    pub(crate) fn count(&self, event: Event) {
        if let Some(metrics) = &self.metrics {
            metrics.count(event);
        }
    }

    pub(crate) fn gauge(&self, gauge: Gauge, delta: i64) {
        if let Some(metrics) = &self.metrics {
            metrics.gauge(gauge, delta);
        }
    }

    pub(crate) fn stats(&self) -> Option<Stats> {
        self.metrics.as_ref().map(Metrics::stats)
    }

    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.time.now()
    }

    /// Whether a new follower would exceed the waiter cap.
    pub(crate) fn over_cap(&self, followers: usize) -> Option<Overflow> {
        match self.cap {
            Some((max, overflow)) if followers >= max => Some(overflow),
            _ => None,
        }
    }
}

impl<K, T> Policies<K, T> {
    /// The memo's answer for `key`, and its write count (see `Store::lookup`).
    #[inline]
    pub(crate) fn lookup(&self, key: &K) -> (Lookup<T>, Option<u64>) {
        match &self.memo {
            Some(memo) => {
                let (lookup, writes) = memo.lookup(key, self.now());
                (lookup, Some(writes))
            }
            None => (Lookup::Miss, None),
        }
    }
}

pub(crate) use metrics::{Event as MetricEvent, Gauge as MetricGauge};
