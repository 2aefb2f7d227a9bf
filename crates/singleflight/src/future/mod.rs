//! The async group, for any executor.
//!
//! See [`Group`]. The group needs no runtime; [`Spawn`] lets it hand
//! abandoned flights to one so they finish anyway (see
//! [`Builder::detach`]).

// Modules from the bottom up: `flight` (a flight's state), `driver` (runs
// and hands over the work), `call` and `deadline` (the futures), `group`
// (the entry points); each uses only those before it.
mod call;
mod deadline;
mod driver;
mod flight;
mod group;
mod spawn;

pub use call::{Call, TryCall};
pub use deadline::{Checked, Until};
pub use group::{Async, Builder, Group};
#[cfg(feature = "tokio")]
pub use spawn::TokioSpawner;
pub use spawn::{Detached, Spawn};
