/// What a call returns: the value, whether it was shared, and where it came from.
///
/// # Examples
///
/// ```
/// use singleflight::{sync::Group, Source};
///
/// let group = Group::<String, u64>::new();
/// let out = group.call("answer", || 42);
/// assert_eq!(out.value, 42);
/// assert!(!out.shared); // nobody else asked for "answer" meanwhile
/// assert_eq!(out.source, Source::Flight);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome<T> {
    /// The flight's result; followers receive a clone of the leader's.
    pub value: T,
    /// Go's `shared`: true for every caller of a flight that had more than
    /// one caller (the leader included), false for a caller that was alone.
    /// A value served from the memo was made for another caller: `true`.
    pub shared: bool,
    /// Where the value came from.
    pub source: Source,
}

/// Where the value of an [`Outcome`] came from.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use singleflight::{sync::Group, Source};
///
/// let group = Group::<String, u32>::builder().memo_all(Duration::from_secs(60)).build();
/// assert_eq!(group.call("k", || 1).source, Source::Flight);
/// assert_eq!(group.call("k", || 2).source, Source::Memo); // the work did not run
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A flight ran the work (this caller's or one it joined).
    Flight,
    /// The memo held a fresh value; no work ran.
    Memo,
    /// The memo held a value past its TTL but within its grace period; a
    /// background refresh was started or is running.
    Stale,
    /// The key's flight had too many waiters and this caller ran its own
    /// work, alone ([`Overflow::RunOwn`](crate::policy::Overflow::RunOwn)).
    Bypass,
}

impl<T> Outcome<T> {
    pub(crate) const fn new(value: T, shared: bool) -> Self {
        Self {
            value,
            shared,
            source: Source::Flight,
        }
    }

    pub(crate) const fn from(value: T, shared: bool, source: Source) -> Self {
        Self {
            value,
            shared,
            source,
        }
    }

    /// The value, dropping the shared flag.
    pub fn into_value(self) -> T {
        self.value
    }
}
