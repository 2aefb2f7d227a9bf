//! The `singleflight` binary.
fn main() {}
