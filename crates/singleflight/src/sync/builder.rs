// The blocking group's builder: the hasher and the policies (see `policy`).

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use super::group::Group;
use crate::policy::{Clock, ErrorPolicy, Fallible, Overflow, Settings};

/// Settings of a [`Group`]; from [`Group::builder`]. Every policy is off
/// unless set.
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
pub struct Builder<K, T, S> {
    hasher: S,
    settings: Settings<T>,
    _keys: std::marker::PhantomData<fn(K)>,
}

impl<K, T, S> Builder<K, T, S> {
    pub(super) fn new(hasher: S) -> Self {
        Self {
            hasher,
            settings: Settings::default(),
            _keys: std::marker::PhantomData,
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
    /// assert_eq!(group.call(1, || 2).value, 2);
    /// ```
    pub fn hasher<S2>(self, hasher: S2) -> Builder<K, T, S2> {
        Builder {
            hasher,
            settings: self.settings,
            _keys: std::marker::PhantomData,
        }
    }

    /// The memo's capacity in entries (default 10,000); past it the cache
    /// evicts (S3-FIFO-like, keeping the often-hit keys).
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
        self.settings.capacity = entries;
        self
    }

    /// Keeps failures in the memo for `ttl` (usually shorter than the memo's
    /// TTL). Without it, failures are not memoised.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<&str, Result<u8, String>>::builder()
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
    /// without either, no value is a failure.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<&str, Option<u8>>::builder()
    ///     .failure_if(Option::is_none)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn failure_if(mut self, is_failure: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.settings.failure = Some(Arc::new(is_failure));
        self
    }

    /// What the waiting callers of a failed flight get (default
    /// [`ErrorPolicy::Share`]). `RetryOnce` needs a classifier:
    /// [`Builder::failure_if`], or [`Builder::memo`] on a [`Fallible`] type.
    ///
    /// # Examples
    ///
    /// ```
    /// use singleflight::policy::ErrorPolicy;
    ///
    /// let group = singleflight::sync::Group::<&str, Result<u8, String>>::builder()
    ///     .failure_if(Result::is_err)
    ///     .error_policy(ErrorPolicy::RetryOnce)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.settings.error_policy = policy;
        self
    }

    /// How long [`Group::call_checked`] waits for another caller's flight
    /// before it returns [`Error::Timeout`](crate::Error::Timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let group = singleflight::sync::Group::<&str, u8>::builder()
    ///     .timeout(Duration::from_millis(250))
    ///     .build();
    /// assert_eq!(group.call_checked("k", || 1).unwrap().value, 1);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
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
    /// let group = singleflight::sync::Group::<&str, u8>::builder()
    ///     .max_waiters(1_000, Overflow::Refuse)
    ///     .build();
    /// # drop(group);
    /// ```
    pub fn max_waiters(mut self, max: usize, overflow: Overflow) -> Self {
        self.settings.cap = Some((max, overflow));
        self
    }

    /// Counts calls, executions, shared results, memo hits, timeouts, panics,
    /// flights and waiters, readable with [`Group::stats`] and, with the
    /// `metrics` feature, through the `metrics` facade labelled
    /// `group = name` (install the recorder before building the group).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<&str, u8>::builder().metrics("users").build();
    /// group.call("k", || 1);
    /// assert_eq!(group.stats().unwrap().executions, 1);
    /// ```
    pub fn metrics(mut self, name: impl Into<String>) -> Self {
        self.settings.metrics = Some(name.into());
        self
    }

    /// The clock of the memo's expiry (default: the OS's coarse monotonic
    /// clock, see [`Clock`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight::{policy::ManualClock, Source};
    ///
    /// let clock = ManualClock::new();
    /// let group = singleflight::sync::Group::<&str, u8>::builder()
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
}

impl<K, T, S> Builder<K, T, S> {
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
    /// clock (see [`Builder::clock`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use singleflight::{sync::Group, Source};
    ///
    /// let group = Group::<&str, Result<u8, String>>::builder()
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
    /// let group = singleflight::sync::Group::<&str, u8>::builder()
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

impl<K: Hash + Eq, T: Clone, S> Builder<K, T, S> {
    /// The group.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = singleflight::sync::Group::<&str, u8>::builder().build();
    /// assert!(group.is_empty());
    /// ```
    pub fn build(self) -> Group<K, T, S> {
        let mut group = Group::with_hasher(self.hasher);
        group.policy = self.settings.build(false);
        group
    }
}

impl<K, T, S> fmt::Debug for Builder<K, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
