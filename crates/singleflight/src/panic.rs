// How a panic in the work reaches every caller of its flight.
//
// The leader catches the panic and keeps the original payload, which it
// re-raises for its own caller. The payload is `Box<dyn Any + Send>` and
// cannot be cloned, so followers receive its message as a `String` payload:
// `catch_unwind` on a follower yields a `String` equal to the original
// message (or a placeholder when the payload was not a string).

use std::any::Any;
use std::fmt;
use std::panic;
use std::sync::Arc;

/// Message of a panic as shared with a flight's followers.
pub(crate) type Message = Arc<str>;

/// The message of a panic payload, as `panic!` formats it.
pub(crate) fn message_of(payload: &(dyn Any + Send)) -> Message {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("<panic payload that is not a string>")
    }
}

/// The work of a flight panicked.
///
/// Returned, inside [`Error::Panicked`](crate::Error::Panicked), by the
/// checked entry points (`call_checked`, `call_with_timeout`, `call_until`)
/// instead of a panic.
/// The caller that ran the work gets the original panic payload back from
/// [`Panicked::into_payload`]; the other callers of the flight get the
/// panic's message as a `String` payload.
///
/// # Examples
///
/// ```
/// use singleflight::{sync::Group, Error};
///
/// let group = Group::<String, u32>::new();
/// let Err(Error::Panicked(err)) = group.call_checked("key", || panic!("upstream exploded")) else {
///     unreachable!("the work panicked");
/// };
/// assert_eq!(err.message(), "upstream exploded");
/// // The key is free again: the next call runs afresh.
/// assert_eq!(group.call("key", || 7).value, 7);
/// ```
pub struct Panicked {
    message: Message,
    payload: Option<Box<dyn Any + Send>>,
}

impl Panicked {
    pub(crate) fn leader(payload: Box<dyn Any + Send>) -> Self {
        Self {
            message: message_of(&*payload),
            payload: Some(payload),
        }
    }

    pub(crate) fn follower(message: Message) -> Self {
        Self {
            message,
            payload: None,
        }
    }

    /// The panic's message (`"<panic payload that is not a string>"` when the
    /// payload was neither `&str` nor `String`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The panic payload: the original one for the caller that ran the work,
    /// the message as a `String` for the others.
    pub fn into_payload(self) -> Box<dyn Any + Send> {
        match self.payload {
            Some(payload) => payload,
            None => Box::new(self.message.to_string()),
        }
    }

    /// Re-raises the panic on the current thread, with [`Panicked::into_payload`].
    ///
    /// The panic hook is not called again, so the message is printed once,
    /// where the work panicked.
    pub fn resume(self) -> ! {
        panic::resume_unwind(self.into_payload())
    }
}

impl fmt::Debug for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panicked")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the flight's work panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}
