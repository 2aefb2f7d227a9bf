// The builder both groups share: the hasher and the policies; what only one
// group has (the blocking group's `timeout`, the async group's spawner and
// stale-while-revalidate, and each `build`) is in that group's module.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::{Clock, ErrorPolicy, Fallible, Overflow, Settings};

/// Settings of a group, from `Group::builder()`; every policy is off unless
/// set. [`sync::Builder`](crate::sync::Builder) and
/// [`future::Builder`](crate::future::Builder) name it for each group: `G`
/// holds what only that group has. The examples use the blocking group; the
/// async group's builder takes the same calls.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight::policy::{ErrorPolicy, Overflow};
///
/// let group = singleflight::sync::Group::<String, Result<String, String>>::builder()
///     .memo(Duration::from_secs(10))
///     .negative_ttl(Duration::from_secs(1))
///     .error_policy(ErrorPolicy::RetryOnce)
///     .timeout(Duration::from_secs(2))
///     .max_waiters(1_000, Overflow::Refuse)
///     .metrics("profiles")
///     .build();
/// # drop(group);
/// ```
pub struct Builder<K, T, S, G> {
    pub(crate) hasher: S,
    pub(crate) settings: Settings<T>,
    pub(crate) group: G,
    _types: PhantomData<fn(K) -> T>,
}

impl<K, T, S, G> Builder<K, T, S, G> {
    pub(crate) fn new(hasher: S, group: G) -> Self {
        Self {
            hasher,
            settings: Settings::default(),
            group,
            _types: PhantomData,
        }
    }

    /// Hashes keys with `hasher` (the memo uses its own fast hasher).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<u64, u64>::builder()
    ///     .hasher(std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default())
    ///     .build();
    /// assert_eq!(group.call(&1, || 2).value, 2);
    /// ```
    pub fn hasher<S2>(self, hasher: S2) -> Builder<K, T, S2, G> {
        Builder {
            hasher,
            settings: self.settings,
            group: self.group,
            _types: PhantomData,
        }
    }

    /// The memo's capacity in entries (default 10,000); past it the cache
    /// evicts (S3-FIFO-like, keeping the often-hit keys). Needs a memo:
    /// `build` refuses it without one.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<u64, u64>::builder()
    ///     .memo_all(std::time::Duration::from_secs(60))
    ///     .capacity(100)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn capacity(mut self, entries: usize) -> Self {
        self.settings.capacity = Some(entries);
        self
    }

    /// Keeps failures in the memo for `ttl` (usually shorter than the memo's
    /// TTL): `try_call`'s errors, and the values the classifier calls
    /// failures. Without it, failures are not memoised. Needs a memo:
    /// `build` refuses it without one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<String, Result<u8, String>>::builder()
    ///     .memo(Duration::from_secs(60))
    ///     .negative_ttl(Duration::from_secs(1))
    ///     .build();
    /// group.call("k", || Err("down".to_string()));
    /// assert!(group.call("k", || Ok(1)).value.is_err()); // kept for a second
    /// ```
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.settings.negative_ttl = Some(ttl);
        self
    }

    /// Which values are failures, for the negative TTL and the error policy.
    /// It takes precedence over [`Fallible`], which `memo` uses otherwise;
    /// without either, no value is a failure. (The errors of `try_call` are
    /// always failures.) It needs a memo or [`ErrorPolicy::RetryOnce`]:
    /// `build` refuses it with neither.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::policy::ErrorPolicy;
    ///
    /// let group = singleflight::sync::Group::<String, Option<u8>>::builder()
    ///     .failure_if(Option::is_none)
    ///     .error_policy(ErrorPolicy::RetryOnce)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn failure_if(mut self, is_failure: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.settings.failure = Some(Arc::new(is_failure));
        self
    }

    /// What the waiting callers of a failed flight get (default
    /// [`ErrorPolicy::Share`]). A failure is an error of `try_call`'s work,
    /// or a value that [`Builder::failure_if`] (or, with [`Builder::memo`],
    /// [`Fallible`]) calls one.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::policy::ErrorPolicy;
    ///
    /// let group = singleflight::sync::Group::<String, Result<u8, String>>::builder()
    ///     .failure_if(Result::is_err)
    ///     .error_policy(ErrorPolicy::RetryOnce)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.settings.error_policy = policy;
        self
    }

    /// At most `max` callers wait on one flight; the next ones do as
    /// `overflow` says.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::policy::Overflow;
    ///
    /// let group = singleflight::sync::Group::<String, u8>::builder()
    ///     .max_waiters(1_000, Overflow::Refuse)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn max_waiters(mut self, max: usize, overflow: Overflow) -> Self {
        self.settings.cap = Some((max, overflow));
        self
    }

    /// Counts calls, executions, shared results, memo hits, timeouts, panics,
    /// flights and waiters, readable with [`Group::stats`](crate::sync::Group::stats) and, with the
    /// `metrics` feature, through the `metrics` facade labelled
    /// `group = name` (install the recorder before building the group).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<String, u8>::builder().metrics("users").build();
    /// group.call("k", || 1);
    /// assert_eq!(group.stats().unwrap().executions, 1);
    /// ```
    pub fn metrics(mut self, name: impl Into<String>) -> Self {
        self.settings.metrics = Some(name.into());
        self
    }

    /// The clock of the memo's expiry (default: the process's ticking
    /// clock, see [`Clock`]). Needs a memo: `build` refuses it without one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight::{policy::ManualClock, Source};
    ///
    /// let clock = ManualClock::new();
    /// let group = singleflight::sync::Group::<String, u8>::builder()
    ///     .memo_all(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build();
    /// group.call("k", || 1);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(group.call("k", || 2).source, Source::Flight); // expired
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Some(Arc::new(clock));
        self
    }

    /// Keeps a flight's value for `ttl` after it ends: calls within it get
    /// the value ([`Source::Memo`](crate::Source::Memo)) without running the work. Failures, the
    /// values [`Fallible::is_failure`] calls so (for a `Result`, `Err`;
    /// [`Builder::failure_if`] overrides it), are not kept, or kept for
    /// [`Builder::negative_ttl`] only; the group's error policy uses the same
    /// classifier. For a type with no [`Fallible`] impl, use
    /// [`Builder::memo_all`].
    ///
    /// The memo is a bounded [`quick_cache`] cache ([`Builder::capacity`]
    /// entries, default 10,000); expiry is checked on read, on the group's
    /// clock (see [`Builder::clock`]; pass `TokioClock` to drive it with
    /// tokio's paused time in tests).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight::{sync::Group, Source};
    ///
    /// let group = Group::<String, Result<u8, String>>::builder()
    ///     .memo(Duration::from_secs(60))
    ///     .build();
    /// group.call("k", || Err("down".to_string()));
    /// // The failure was not kept: this call runs its work.
    /// assert_eq!(group.call("k", || Ok(1)).source, Source::Flight);
    /// assert_eq!(group.call("k", || Ok(2)).value, Ok(1));
    /// ```
    pub fn memo(mut self, ttl: Duration) -> Self
    where
        T: Fallible + 'static,
    {
        self.settings.memo(ttl);
        self
    }

    /// Like [`Builder::memo`], for values of any type: every value is kept
    /// for `ttl`, unless [`Builder::failure_if`] calls it a failure.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight::Source;
    ///
    /// let group = singleflight::sync::Group::<String, u8>::builder()
    ///     .memo_all(Duration::from_secs(60))
    ///     .build();
    /// group.call("k", || 1);
    /// assert_eq!(group.call("k", || 2).source, Source::Memo);
    /// ```
    pub fn memo_all(mut self, ttl: Duration) -> Self {
        self.settings.memo_all(ttl);
        self
    }
}

impl<K, T, S, G: fmt::Debug> fmt::Debug for Builder<K, T, S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}
