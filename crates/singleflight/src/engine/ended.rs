// How a flight ends and how each caller receives that end; the same for both
// groups.
//
// The work of a flight returns a value, an error (fallible work, `try_call`)
// or panics. The leader keeps what it can own alone (the panic payload); the
// flight keeps what every caller shares (the value, the error behind one
// `Arc`, the panic's message), and each follower takes its own copy of that
// with no lock held.

use std::any::Any;
use std::sync::Arc;

use crate::panic::{Message, message_of};
use crate::{Error, Outcome, Panicked};

/// The error of fallible work, behind the one `Arc` every caller of the
/// flight receives. Its type is checked where a caller takes it back.
pub(crate) type ErrorObject = Arc<dyn Any + Send + Sync>;

/// Whether a caller can take an error object back as its own error type.
pub(crate) type Accepts = fn(&ErrorObject) -> bool;

/// A caller of infallible work takes no error back.
pub(crate) fn accepts_none(_: &ErrorObject) -> bool {
    false
}

/// A caller of fallible work with error type `E` takes back errors of that type.
pub(crate) fn accepts<E: Any>(error: &ErrorObject) -> bool {
    (**error).is::<E>()
}

/// What a flight's work returned without panicking: a value, or the error of
/// fallible work. This is also what the memo keeps.
pub(crate) type Returned<T> = Result<T, ErrorObject>;

/// How the work ended, as its leader holds it.
pub(crate) enum Ended<T> {
    Returned(Returned<T>),
    Panicked(Box<dyn Any + Send>),
}

impl<T> Ended<T> {
    /// The end of work that ran under `catch_unwind`.
    pub(crate) fn of(result: std::thread::Result<Returned<T>>) -> Self {
        match result {
            Ok(returned) => Self::Returned(returned),
            Err(payload) => Self::Panicked(payload),
        }
    }
}

/// How a flight failed, as it keeps it for its followers.
pub(crate) enum Failure {
    Error(ErrorObject),
    Panicked(Message),
}

/// How the flight ended, as it keeps it for its followers. A failure sits
/// behind one thin `Arc`: the end a flight keeps is a word and a tag
/// beyond the value, as small as the state of a flight can be.
pub(crate) type Published<T> = Result<T, Arc<Failure>>;

/// Why a caller got no value.
pub(crate) enum Stop {
    /// The flight's fallible work failed with this error.
    Error(ErrorObject),
    /// The flight's work panicked. Boxed: a call's result stays two words
    /// and a tag, which every call moves, for the rare panic.
    Panicked(Box<Panicked>),
    /// The waiter cap refused the call (checked entry points only).
    TooManyWaiters,
    /// The caller's deadline passed (checked entry points only).
    Timeout,
}

/// What a call ends with, before each entry point shapes it.
pub(crate) type Received<T> = Result<Outcome<T>, Stop>;

impl Stop {
    /// How an infallible call without a deadline or a refusal ends without
    /// a value: it re-raises the panic of the work.
    pub(crate) fn resume(self) -> ! {
        match self {
            Self::Panicked(panicked) => panicked.resume(),
            Self::Error(_) | Self::TooManyWaiters | Self::Timeout => {
                unreachable!("infallible work, no cap refusal, no deadline")
            }
        }
    }
}

/// What a `try_call` returns: the flight's error behind its one `Arc`, or
/// the work's panic re-raised.
pub(crate) fn try_result<T, E: Any + Send + Sync>(
    received: Received<T>,
) -> Result<Outcome<T>, Arc<E>> {
    match received {
        Ok(outcome) => Ok(outcome),
        Err(Stop::Error(error)) => Err(error
            .downcast::<E>()
            .unwrap_or_else(|_| unreachable!("only errors of type `E` are taken"))),
        Err(Stop::Panicked(panicked)) => panicked.resume(),
        Err(Stop::TooManyWaiters | Stop::Timeout) => {
            unreachable!("no cap refusal, no deadline")
        }
    }
}

/// What a checked call returns: every way to end without a value as an
/// `Error`.
pub(crate) fn checked_result<T>(received: Received<T>) -> Result<Outcome<T>, Error> {
    match received {
        Ok(outcome) => Ok(outcome),
        Err(Stop::Panicked(panicked)) => Err(Error::Panicked(*panicked)),
        Err(Stop::TooManyWaiters) => Err(Error::TooManyWaiters),
        Err(Stop::Timeout) => Err(Error::Timeout),
        Err(Stop::Error(_)) => unreachable!("infallible work"),
    }
}

/// A flight's shared state, where followers wait for the [`Published`] end.
pub(crate) trait Publish<T> {
    /// Stores the end of the flight in the flight itself, wakes every
    /// follower, and returns what it stored. Called once.
    fn publish(&self, result: Published<T>) -> &Published<T>;
}

/// Ends a flight whose work ended with `ended`: publishes it to the
/// followers, if any joined (`flight`), then returns the leader's own
/// outcome.
pub(crate) fn settle<T: Clone>(ended: Ended<T>, flight: Option<&impl Publish<T>>) -> Received<T> {
    match (ended, flight) {
        (Ended::Returned(Ok(value)), None) => Ok(Outcome::new(value, false)),
        (Ended::Returned(Err(error)), None) => Err(Stop::Error(error)),
        // Publish before cloning for ourselves, so followers are woken even
        // if `T::clone` panics here; the flight keeps the one value.
        (Ended::Returned(Ok(value)), Some(flight)) => received(flight.publish(Ok(value))),
        (Ended::Returned(Err(error)), Some(flight)) => {
            flight.publish(Err(Arc::new(Failure::Error(Arc::clone(&error)))));
            Err(Stop::Error(error))
        }
        (Ended::Panicked(payload), flight) => {
            if let Some(flight) = flight {
                flight.publish(Err(Arc::new(Failure::Panicked(message_of(&*payload)))));
            }
            Err(Stop::Panicked(Box::new(Panicked::leader(payload))))
        }
    }
}

/// A shared caller's outcome from what its flight published: a clone of the
/// value (or of the error's `Arc`), made outside any lock.
pub(crate) fn received<T: Clone>(published: &Published<T>) -> Received<T> {
    match published {
        Ok(value) => Ok(Outcome::new(T::clone(value), true)),
        Err(failure) => match &**failure {
            Failure::Error(error) => Err(Stop::Error(Arc::clone(error))),
            Failure::Panicked(message) => Err(Stop::Panicked(Box::new(Panicked::follower(
                message.clone(),
            )))),
        },
    }
}
