// How a flight's leader hands its result to the flight's followers and to its
// own caller; the same for both groups.

use crate::panic::{Message, message_of};
use crate::{Outcome, Panicked};

/// What a flight ended with: its value, or the message of its panic.
pub(crate) type Published<T> = Result<T, Message>;

/// A flight's shared state, where followers wait for the [`Published`] end.
pub(crate) trait Publish<T> {
    /// Stores the end of the flight in the flight itself, wakes every
    /// follower, and returns what it stored. Called once.
    fn publish(&self, result: Published<T>) -> &Published<T>;
}

/// Ends a flight whose work returned `result`: publishes it to the followers,
/// if any joined (`flight`), then returns the leader's own outcome.
pub(crate) fn settle<T: Clone>(
    result: std::thread::Result<T>,
    flight: Option<&impl Publish<T>>,
) -> Result<Outcome<T>, Panicked> {
    match (result, flight) {
        (Ok(value), None) => Ok(Outcome::new(value, false)),
        // Publish before cloning for ourselves, so followers are woken even
        // if `T::clone` panics here; the flight keeps the one value.
        (Ok(value), Some(flight)) => received(flight.publish(Ok(value))),
        (Err(payload), flight) => {
            if let Some(flight) = flight {
                flight.publish(Err(message_of(&*payload)));
            }
            Err(Panicked::leader(payload))
        }
    }
}

/// A shared caller's outcome from what its flight published: a clone of the
/// value, made outside any lock.
pub(crate) fn received<T: Clone>(published: &Published<T>) -> Result<Outcome<T>, Panicked> {
    match published {
        Ok(value) => Ok(Outcome::new(T::clone(value), true)),
        Err(message) => Err(Panicked::follower(message.clone())),
    }
}
