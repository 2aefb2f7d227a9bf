//! Side-by-side benchmarks of singleflight against its peers (work in progress).
