// What only the blocking group's builder has: `timeout` and `build`.

use std::hash::Hash;
use std::time::Duration;

use super::group::Group;

/// Settings of a [`Group`]; from [`Group::builder`]. Its calls are
/// [`policy::Builder`](crate::policy::Builder)'s, plus [`Builder::timeout`]
/// and [`Builder::build`].
pub type Builder<K, T, S> = crate::policy::Builder<K, T, S, Blocking>;

/// What a [`Builder`] of the blocking group holds beyond the policies:
/// nothing, for now.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Blocking;

impl<K, T, S> Builder<K, T, S> {
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
    /// assert_eq!(group.call_checked(&"k", || 1).unwrap().value, 1);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
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
    ///
    /// # Panics
    ///
    /// When a setting would do nothing, with a message that names it and
    /// the fix: `negative_ttl`, `capacity` or `clock` without a memo, and
    /// `failure_if` with neither a memo nor `ErrorPolicy::RetryOnce`.
    #[track_caller]
    pub fn build(self) -> Group<K, T, S> {
        let policy = self.settings.build(false);
        Group::from_parts(self.hasher, policy)
    }
}
