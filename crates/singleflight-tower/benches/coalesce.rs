//! Criterion benches of the coalescing layer (filled in below).

fn main() {}
