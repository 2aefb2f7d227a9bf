//! How the machine itself scales from one thread to two, without any group:
//! making and dropping the distinct-keys scenario's key (`format!` and the
//! allocator), and pure arithmetic. The distinct-keys 2-thread target reads
//! against these.
//!
//! `cargo run --release -p singleflight-bench --example key_scaling`

use std::hint::black_box;
use std::thread;
use std::time::Instant;

fn keys(n: usize, t: usize) {
    for i in t * n..(t + 1) * n {
        black_box(singleflight_bench::key(i));
    }
}

fn arithmetic(n: usize) {
    let mut x = 1u64;
    for i in 0..n as u64 * 40 {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
    black_box(x);
}

/// ns per item on one thread, then per item as each of two threads sees it.
fn scaling(n: usize, body: fn(usize, usize)) -> (f64, f64) {
    let start = Instant::now();
    body(n, 0);
    let one = start.elapsed().as_nanos() as f64 / n as f64;
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(|| body(n, 0));
        s.spawn(|| body(n, 1));
    });
    let two = start.elapsed().as_nanos() as f64 / n as f64;
    (one, two)
}

fn main() {
    let n = 2_000_000;
    for _ in 0..3 {
        let (k1, k2) = scaling(n, keys);
        let (a1, a2) = scaling(n, |n, _| arithmetic(n));
        println!(
            "key alone: {k1:.1} ns on 1 thread, {k2:.1} ns on 2 ({:.2}x) | arithmetic: {a1:.1} / {a2:.1} ns ({:.2}x)",
            k2 / k1,
            a2 / a1
        );
    }
}
