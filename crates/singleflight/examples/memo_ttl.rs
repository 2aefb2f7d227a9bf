//! A policy: the memo keeps a successful result for a TTL after its flight
//! ends, so calls within the TTL do not run the work; errors are not kept,
//! so the next call retries at once. A manual clock stands in for time.
//!
//! `cargo run -p oneflight --example memo_ttl`

use std::cell::Cell;
use std::time::Duration;

use singleflight::Source;
use singleflight::policy::ManualClock;
use singleflight::sync::Group;

fn main() {
    let clock = ManualClock::new();
    let group = Group::<String, Result<u32, String>>::builder()
        .memo(Duration::from_secs(30)) // `Err` is a failure: it is not kept
        .clock(clock.clone())
        .build();
    let executions = Cell::new(0);
    let fetch = |value: Result<u32, String>| {
        executions.set(executions.get() + 1);
        value
    };

    let out = group.call("price", || fetch(Err("upstream down".to_string())));
    println!("first call:       {:?} from {:?}", out.value, out.source);
    assert_eq!(out.source, Source::Flight);

    let out = group.call("price", || fetch(Ok(7)));
    println!("after an error:   {:?} from {:?}", out.value, out.source);
    assert_eq!((out.value, out.source), (Ok(7), Source::Flight));

    clock.advance(Duration::from_secs(29));
    let out = group.call("price", || fetch(Ok(8)));
    println!("29 s later:       {:?} from {:?}", out.value, out.source);
    assert_eq!((out.value, out.source), (Ok(7), Source::Memo));

    clock.advance(Duration::from_secs(2));
    let out = group.call("price", || fetch(Ok(8)));
    println!("past the TTL:     {:?} from {:?}", out.value, out.source);
    assert_eq!((out.value, out.source), (Ok(8), Source::Flight));

    println!("4 calls, {} executions", executions.get());
    assert_eq!(executions.get(), 3);
}
