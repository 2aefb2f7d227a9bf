//! Errors of a distributed call.

use std::sync::Arc;

/// Why a [`Group::call`](crate::Group::call) returned no value.
///
/// With the default [`OnRedisError::RunLocally`](crate::OnRedisError),
/// Redis failures never surface here: the call runs the work itself.
///
/// # Examples
///
/// ```
/// let error = singleflight_redis::Error::Codec("expected a string".into());
/// assert!(error.to_string().contains("expected a string"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached or failed, and the group is set to fail
    /// rather than run the work locally.
    #[error("Redis failed ({0}); check that it is up and reachable at the URL given")]
    Redis(Arc<redis::RedisError>),
    /// A value could not be encoded or decoded with the group's codec.
    #[error("the value could not be encoded or decoded: {0}")]
    Codec(String),
    /// The work panicked; every caller of the flight in this process gets
    /// this.
    #[error("the work panicked: {0}")]
    Panicked(String),
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(Arc::new(error))
    }
}
