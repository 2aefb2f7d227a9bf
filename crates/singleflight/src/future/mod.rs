//! The async group, for any executor.
//!
//! See [`Group`]. The group needs no runtime; [`Spawn`] lets it hand
//! abandoned flights to one so they finish anyway (see
//! [`Builder::detach`]).

mod call;
mod deadline;
mod flight;
mod group;
mod policy;
mod spawn;

pub use call::{Call, TryCall};
pub use deadline::{Checked, Until};
pub use group::{Async, Builder, Group};
#[cfg(feature = "tokio")]
pub use spawn::TokioSpawner;
pub use spawn::{Detached, Spawn};
