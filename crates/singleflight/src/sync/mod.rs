//! The blocking group, for threads.
//!
//! See [`Group`].

mod flight;
mod group;

pub use group::Group;
