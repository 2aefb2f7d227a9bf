//! A tower layer that coalesces identical HTTP requests (work in progress).
