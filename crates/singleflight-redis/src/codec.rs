//! How values travel through Redis.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Turns values into bytes for Redis and back. [`Json`] is the default;
/// implement this for another format.
///
/// # Examples
///
/// ```
/// use singleflight_redis::{Codec, Json};
///
/// let bytes = Json.encode(&vec![1, 2, 3]).unwrap();
/// let back: Vec<u32> = Json.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// The bytes of `value`.
    ///
    /// # Errors
    ///
    /// Why `value` could not be encoded.
    fn encode(&self, value: &T) -> Result<Vec<u8>, String>;

    /// The value of `bytes`.
    ///
    /// # Errors
    ///
    /// Why `bytes` are not a value.
    fn decode(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON through `serde_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn encode(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|error| error.to_string())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|error| error.to_string())
    }
}
