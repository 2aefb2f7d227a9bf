//! The Redis keys of one user key: namespaced by the group's prefix, the
//! user's key hex-encoded (any bytes are safe: spaces, newlines, braces,
//! binary), and wrapped in a hash tag so that a cluster puts a key's lease,
//! generation and results in one slot, as its scripts need.

use std::fmt::Write as _;

/// The keys a flight uses.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `SET NX PX` lease: `"{generation}:{token}"`.
    pub(crate) lease: String,
    /// The fencing counter (`INCR`), one generation per leader.
    pub(crate) generation: String,
    /// The stream of results, each with its generation.
    pub(crate) results: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, key: &[u8]) -> Self {
        let mut tag = String::with_capacity(key.len() * 2);
        for byte in key {
            let _ = write!(tag, "{byte:02x}");
        }
        Self {
            lease: format!("{prefix}:{{{tag}}}:lease"),
            generation: format!("{prefix}:{{{tag}}}:gen"),
            results: format!("{prefix}:{{{tag}}}:results"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_make_a_plain_key_inside_the_prefix() {
        let keys = Keys::new("sf", b"a b\n{x}:\0");
        assert_eq!(keys.lease, "sf:{6120620a7b787d3a00}:lease");
        assert!(keys.generation.starts_with("sf:{6120620a7b787d3a00}:"));
        assert!(keys.results.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn different_keys_never_share_redis_keys() {
        // Hex is one-to-one: "ab" and "a" + "b" as bytes cannot collide.
        assert_ne!(Keys::new("sf", b"ab").lease, Keys::new("sf", b"a").lease);
        assert_ne!(Keys::new("sf", b"").lease, Keys::new("sf", b"00").lease);
    }
}
