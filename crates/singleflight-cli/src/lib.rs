//! The `singleflight` command line (work in progress).
