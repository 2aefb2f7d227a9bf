//! The blocking group: eight threads ask for the same key at once, the work
//! runs once, and every thread gets its value; a call after the flight has
//! ended runs the work again (there is no memo unless one is set).
//!
//! `cargo run -p oneflight --example sync_group`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use singleflight::sync::Group;

const CALLERS: usize = 8;

fn main() {
    let group = Group::<String, String>::new();
    let executions = AtomicUsize::new(0);

    let outcomes: Vec<_> = thread::scope(|s| {
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                s.spawn(|| {
                    group.call("user:42", || {
                        // The work holds its flight open until every other
                        // caller waits on it, so the run is the same every
                        // time; real work is simply slow.
                        while group.waiters("user:42") < CALLERS - 1 {
                            thread::yield_now();
                        }
                        executions.fetch_add(1, Ordering::SeqCst);
                        "Ada Lovelace".to_string()
                    })
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().expect("a caller panicked"))
            .collect()
    });

    for (i, out) in outcomes.iter().enumerate() {
        println!("caller {i}: {} (shared: {})", out.value, out.shared);
    }
    let runs = executions.load(Ordering::SeqCst);
    println!("{CALLERS} callers, {runs} execution");
    assert_eq!(runs, 1, "one execution for the whole herd");
    assert!(
        outcomes
            .iter()
            .all(|o| o.value == "Ada Lovelace" && o.shared)
    );

    // The flight has ended and its key is free: the next call runs the work.
    let later = group.call("user:42", || {
        executions.fetch_add(1, Ordering::SeqCst);
        "Ada Lovelace".to_string()
    });
    println!("a later call: {} (shared: {})", later.value, later.shared);
    assert!(!later.shared);
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    assert!(group.is_empty(), "nothing is left behind");
}
