//! The shortest use of the blocking group (the README shows this file).

use singleflight::sync::Group;
use std::{thread, time::Duration};

fn main() {
    let group = Group::<String, String>::new();
    thread::scope(|s| {
        for _ in 0..10 {
            s.spawn(|| {
                // Ten threads ask at once: the slow work runs once, all ten get its result.
                let out = group.call("config", || {
                    thread::sleep(Duration::from_millis(200));
                    "v1".to_string()
                });
                println!("{} (shared: {})", out.value, out.shared);
            });
        }
    });
}
