//! The blocking group, for threads.
//!
//! See [`Group`].

mod builder;
mod flight;
mod group;

pub use builder::{Blocking, Builder};
pub use group::Group;
