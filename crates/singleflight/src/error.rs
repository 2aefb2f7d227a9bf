// The error of the policy-aware entry points (`call_checked`, deadlines).

use crate::Panicked;

/// Why a call of a group with policies returned no value.
///
/// Returned by the checked entry points (`call_checked`, `call_with_timeout`,
/// `call_until`); `call` keeps Go's shape, and `try_call` returns the work's
/// own error.
///
/// # Examples
///
/// ```
/// use singleflight::{sync::Group, Error};
///
/// let group = Group::<String, u32>::new();
/// match group.call_checked("key", || panic!("boom")) {
///     Err(Error::Panicked(p)) => assert_eq!(p.message(), "boom"),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's deadline passed before its flight ended. The flight goes
    /// on for its other callers.
    #[error("the call's deadline passed before its flight ended")]
    Timeout,
    /// The flight for the key already had as many waiters as the group's cap
    /// allows, and the group is set to refuse the overflow
    /// ([`Overflow::Refuse`](crate::policy::Overflow::Refuse)).
    #[error("too many callers already wait on this key's flight")]
    TooManyWaiters,
    /// The flight's work panicked.
    #[error(transparent)]
    Panicked(#[from] Panicked),
}
