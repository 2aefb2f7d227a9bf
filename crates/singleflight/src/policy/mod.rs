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
//!     .memo(Duration::from_secs(30)) // `Err` is a failure: `Result` is `Fallible`
//!     .negative_ttl(Duration::from_secs(1))
//!     .error_policy(ErrorPolicy::RetryOnce)
//!     .metrics("users")
//!     .build();
//! assert_eq!(group.call("42", || Ok(7)).source, Source::Flight);
//! assert_eq!(group.call("42", || Ok(8)).value, Ok(7));
//! ```

mod builder;
mod clock;
pub(crate) mod memo;
pub(crate) mod metrics;
mod tick;

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

pub use builder::Builder;
pub(crate) use clock::Time;
#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::{METRIC_NAMES, Stats};

use crate::engine::{Ended, Returned, Table};
use crate::{Outcome, Source};
use memo::{Lookup, Memo};
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
    /// The checked entry points (`call_checked`, `call_with_timeout`,
    /// `call_until`) fail at once with
    /// [`Error::TooManyWaiters`](crate::Error::TooManyWaiters). `call` and
    /// `try_call`, which have no such error to return, run the caller's own
    /// work instead, as [`Overflow::RunOwn`] does.
    Refuse,
    /// Run the caller's own work, alone: not shared, not memoised; its
    /// [`Outcome::source`](crate::Outcome::source) is [`Source::Bypass`].
    RunOwn,
}

/// What the waiting callers of a failed flight get. A failure is an error of
/// `try_call`'s work, or a value the group's classifier calls one: the
/// closure given to `failure_if`, else, in a group built with `memo`,
/// [`Fallible::is_failure`]. A panic is not a failure: it reaches every
/// caller of its flight.
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

/// Which values of a type are failures, for a memo built with `memo` (see
/// [`sync::Builder::memo`](crate::sync::Builder::memo)): kept only for the
/// negative TTL, if at all, and retried under [`ErrorPolicy::RetryOnce`].
///
/// Implemented for `Result` (`Err` is a failure). Implement it for a type of
/// your own whose values can be failures; for a type whose values never are,
/// use `memo_all` instead of `memo`. A classifier given to `failure_if`
/// takes precedence over this one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight::{policy::Fallible, sync::Group, Source};
///
/// #[derive(Clone)]
/// enum Lookup {
///     Found(u32),
///     Unavailable,
/// }
///
/// impl Fallible for Lookup {
///     fn is_failure(&self) -> bool {
///         matches!(self, Lookup::Unavailable)
///     }
/// }
///
/// let group = Group::<String, Lookup>::builder().memo(Duration::from_secs(60)).build();
/// group.call("k", || Lookup::Unavailable); // a failure: not memoised
/// assert_eq!(group.call("k", || Lookup::Found(7)).source, Source::Flight);
/// assert_eq!(group.call("k", || Lookup::Found(8)).source, Source::Memo);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say which of its values are failures",
    label = "`memo` keeps failures out of the memo, so it needs to tell them apart",
    note = "use `memo_all(ttl)` to memoise every value (add `.failure_if(...)` to tell failures apart), or implement `singleflight::policy::Fallible` for `{Self}`"
)]
pub trait Fallible {
    /// Whether this value is a failure.
    fn is_failure(&self) -> bool;
}

impl<V, E> Fallible for Result<V, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

/// Decides which values are failures.
pub(crate) type Classifier<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A builder's policy settings, shared by both groups' builders.
pub(crate) struct Settings<T> {
    pub(crate) ttl: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) grace: Duration,
    /// `None`: [`DEFAULT_CAPACITY`].
    pub(crate) capacity: Option<usize>,
    /// Set by `failure_if`.
    pub(crate) failure: Option<Classifier<T>>,
    /// `Fallible::is_failure`, set by `memo`; `failure` takes precedence.
    pub(crate) fallible: Option<Classifier<T>>,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cap: Option<(usize, Overflow)>,
    pub(crate) metrics: Option<String>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
}

/// Default memo capacity, in entries.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

impl<T> Default for Settings<T> {
    fn default() -> Self {
        Self {
            ttl: None,
            negative_ttl: None,
            grace: Duration::ZERO,
            capacity: None,
            failure: None,
            fallible: None,
            error_policy: ErrorPolicy::Share,
            timeout: None,
            cap: None,
            metrics: None,
            clock: None,
        }
    }
}

impl<T> Settings<T> {
    /// Turns the memo on with a TTL of `ttl`, telling failures apart with
    /// [`Fallible`] unless `failure_if` is given.
    pub(crate) fn memo(&mut self, ttl: Duration)
    where
        T: Fallible + 'static,
    {
        self.ttl = Some(ttl);
        self.fallible = Some(Arc::new(T::is_failure));
    }

    /// Turns the memo on with a TTL of `ttl`, for every value.
    pub(crate) fn memo_all(&mut self, ttl: Duration) {
        self.ttl = Some(ttl);
        self.fallible = None;
    }

    /// The policies, or `None` when every one is off (the plain path).
    /// `spawner`: the group has one (the async group's `detach`).
    ///
    /// # Panics
    ///
    /// When a setting would do nothing: a programming error, named with its
    /// fix, caught by the first test that builds the group.
    #[track_caller]
    pub(crate) fn build<K>(self, spawner: bool) -> Option<Box<Policies<K, T>>>
    where
        K: Hash + Eq,
        T: Clone,
    {
        self.check(spawner);
        let failure = self.failure.or(self.fallible);
        let retry_once = self.error_policy == ErrorPolicy::RetryOnce;
        let (memo, time) = match self.ttl {
            Some(ttl) => {
                let time = self.clock.map_or_else(
                    || Time::ticking(tick_period(ttl, self.negative_ttl, self.grace)),
                    Time::custom,
                );
                let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
                let memo = Memo::new(capacity, ttl, self.negative_ttl, self.grace);
                (Some(memo), time)
            }
            None => (None, Time::precise()),
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
            failure,
            retry_once,
            timeout: self.timeout,
            cap: self.cap,
            metrics: self.metrics.as_deref().map(Metrics::new),
            time,
        }))
    }

    /// Refuses the settings that would do nothing.
    #[track_caller]
    fn check(&self, spawner: bool) {
        let memo = self.ttl.is_some();
        let refuse = |setting: &str, why: &str, fix: &str| -> ! {
            panic!("singleflight: `{setting}` {why}; {fix}")
        };
        let no_memo = "needs a memo, and this group has none";
        let add_memo = "add `.memo(ttl)` or `.memo_all(ttl)`, or remove it";
        if !memo {
            if self.negative_ttl.is_some() {
                refuse("negative_ttl", no_memo, add_memo);
            }
            if self.capacity.is_some() {
                refuse("capacity", no_memo, add_memo);
            }
            if self.clock.is_some() {
                refuse("clock", "times the memo, and this group has none", add_memo);
            }
            if !self.grace.is_zero() {
                refuse("stale_while_revalidate", no_memo, add_memo);
            }
        }
        if !self.grace.is_zero() && !spawner {
            refuse(
                "stale_while_revalidate",
                "refreshes in the background, and this group has no spawner to run the refresh",
                "add `.detach(spawner)` (for tokio, `.detach(TokioSpawner::current())`), or remove it",
            );
        }
        if self.failure.is_some() && !memo && self.error_policy == ErrorPolicy::Share {
            refuse(
                "failure_if",
                "tells failures apart for the memo's negative TTL and for `ErrorPolicy::RetryOnce`, and this group has neither",
                "add `.memo(ttl)`, `.memo_all(ttl)` or `.error_policy(ErrorPolicy::RetryOnce)`, or remove it",
            );
        }
    }
}

/// How often the ticking clock must tick for a memo: 2% of its shortest
/// span (clamped by the ticker to 1..=100 ms).
fn tick_period(ttl: Duration, negative_ttl: Option<Duration>, grace: Duration) -> Duration {
    [Some(ttl), negative_ttl, Some(grace)]
        .into_iter()
        .flatten()
        .filter(|span| !span.is_zero())
        .min()
        .map_or(Duration::ZERO, |span| span / 50)
}

impl<T> fmt::Debug for Settings<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("grace", &self.grace)
            .field("capacity", &self.capacity)
            .field("classifier", &self.failure.is_some())
            .field("fallible", &self.fallible.is_some())
            .field("error_policy", &self.error_policy)
            .field("timeout", &self.timeout)
            .field("max_waiters", &self.cap)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// A group's policies, when at least one is on.
pub(crate) struct Policies<K, T> {
    pub(crate) memo: Option<Memo<K, T>>,
    pub(crate) failure: Option<Classifier<T>>,
    pub(crate) retry_once: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cap: Option<(usize, Overflow)>,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) time: Time,
}

impl<K, T> Policies<K, T> {
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

impl<K: Hash + Eq, T: Clone> Policies<K, T> {
    /// A fresh memoised value for `key`, counted as a hit: the whole hit
    /// path, kept small enough to inline into the groups' calls. Errors are
    /// found on the miss path. On `None` the call is not counted: the miss
    /// path counts it.
    #[inline(always)]
    pub(crate) fn hit<Q>(&self, key: &Q) -> Option<Outcome<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let value = self.memo.as_ref()?.fresh(key, self.now())?;
        self.count(Event::Call);
        self.count(Event::MemoHit);
        Some(Outcome::from(value, true, Source::Memo))
    }

    /// The memo's answer for `key`, and its write count (see `Memo::lookup`).
    #[inline]
    pub(crate) fn lookup<Q>(&self, key: &Q) -> (Lookup<T>, Option<u64>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match &self.memo {
            Some(memo) => {
                let (lookup, writes) = memo.lookup(key, self.now());
                (lookup, Some(writes))
            }
            None => (Lookup::Miss, None),
        }
    }
}

/// A flight's result as its end needs it, made before the table lock is
/// taken: whether it is a failure, and the memo's copy of it.
pub(crate) struct Ending<T> {
    pub(crate) failure: bool,
    copy: Option<(Returned<T>, u64)>,
}

impl<K: Hash + Eq, T: Clone> Policies<K, T> {
    /// Classifies a flight's result and copies it for the memo. Call before
    /// taking the table lock: user `Clone` never runs under it, and a
    /// panicking `Clone` costs the memo entry, never the flight's end.
    pub(crate) fn ending(&self, ended: &Ended<T>) -> Ending<T> {
        let failure = match ended {
            Ended::Returned(Ok(value)) => self.is_failure(value),
            // The error of fallible work is a failure, kept only for the
            // negative TTL.
            Ended::Returned(Err(_)) => true,
            Ended::Panicked(_) => false,
        };
        let copy = self.memo.as_ref().and_then(|_| {
            let copy = match ended {
                Ended::Returned(Ok(value)) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.clone()))
                        .ok()
                        .map(Ok)
                }
                // Every caller shares the error's one `Arc`.
                Ended::Returned(Err(error)) => Some(Err(Arc::clone(error))),
                Ended::Panicked(_) => None,
            }?;
            Some((copy, self.now()))
        });
        Ending { failure, copy }
    }

    /// Ends flight `id` under the table lock `table` holds: removes its
    /// slot (if still there) and writes its result into the memo unless the
    /// flight was forgotten; then releases the lock, drops what was taken
    /// out (user `Drop` code never runs under the lock) and counts the
    /// flight's end. Returns the slot's flight.
    pub(crate) fn close<F>(
        &self,
        mut table: impl DerefMut<Target = Table<K, F>>,
        hash: u64,
        id: u64,
        ending: Ending<T>,
        panicked: bool,
    ) -> Option<F> {
        let mut evicted = None;
        let mut spare_key = None;
        let mut spare_copy = ending.copy;
        let flight = table.remove(hash, id).and_then(|slot| {
            let forgotten = slot.is_forgotten();
            match (&self.memo, spare_copy.take()) {
                (Some(memo), Some((value, now))) if !forgotten => {
                    evicted = Some(memo.store(slot.key, value, ending.failure, now));
                }
                (_, copy) => {
                    spare_copy = copy;
                    spare_key = Some(slot.key);
                }
            }
            slot.flight
        });
        drop(table);
        drop((evicted, spare_copy, spare_key));
        self.gauge(Gauge::Flights, -1);
        if panicked {
            self.count(Event::Panic);
        }
        flight
    }
}

pub(crate) use metrics::{Event as MetricEvent, Gauge as MetricGauge};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_ticks_at_a_fiftieth_of_the_shortest_span() {
        let ms = Duration::from_millis;
        assert_eq!(tick_period(ms(1_000), None, Duration::ZERO), ms(20));
        assert_eq!(tick_period(ms(1_000), Some(ms(500)), ms(5_000)), ms(10));
        assert_eq!(tick_period(ms(1_000), Some(Duration::ZERO), ms(250)), ms(5));
        assert_eq!(
            tick_period(Duration::ZERO, None, Duration::ZERO),
            Duration::ZERO
        );
    }
}
