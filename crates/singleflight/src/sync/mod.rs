//! The blocking group, for threads.
//!
//! See [`Group`].

mod builder;
mod flight;
mod group;
mod policy;

pub use builder::{Blocking, Builder};
pub use group::Group;
