//! The blocking group's policies: memo and negative TTL on a hand-driven
//! clock, generation-safe invalidate, RetryOnce, deadlines, the waiter cap
//! and the counters.
//!
//! Time-dependent behaviour runs on `ManualClock`. Where a test must know
//! that callers are waiting, it waits for the group's own `waiters` gauge
//! (bounded by `HANG`, which bounds a hang and times nothing).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use singleflight::policy::{ErrorPolicy, ManualClock, Overflow, Stats};

use singleflight::sync::Group;
use singleflight::{Error, Source};

const HANG: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(10);

/// A gate the work waits on, opened by the test.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    fn wait(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// Waits until `group` reports `n` callers waiting on flights.
fn until_waiters<K, T, S>(group: &Group<K, T, S>, n: u64) {
    let start = Instant::now();
    while group.stats().expect("metrics on").waiters != n {
        assert!(start.elapsed() < HANG, "callers never started waiting");
        thread::yield_now();
    }
}

/// Waits until a flight for `key` is in progress.
fn until_flight<T: Clone, S: std::hash::BuildHasher>(group: &Group<String, T, S>, key: &str) {
    let start = Instant::now();
    while !group.contains(key) {
        assert!(start.elapsed() < HANG, "the flight never started");
        thread::yield_now();
    }
}

fn stats<K, T, S>(group: &Group<K, T, S>) -> Stats {
    group.stats().expect("metrics on")
}

#[test]
fn memo_hit_before_the_ttl_and_miss_after() {
    let clock = ManualClock::new();
    let group = Group::<String, u32>::builder()
        .memo_all(TTL)
        .clock(clock.clone())
        .build();
    let runs = AtomicUsize::new(0);
    let work = |v| {
        runs.fetch_add(1, Ordering::SeqCst);
        v
    };

    let first = group.call("k", || work(1));
    assert_eq!(
        (first.value, first.source, first.shared),
        (1, Source::Flight, false)
    );

    clock.advance(TTL - Duration::from_nanos(1));
    let hit = group.call("k", || work(2));
    assert_eq!((hit.value, hit.source, hit.shared), (1, Source::Memo, true));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_nanos(1));
    let miss = group.call("k", || work(3));
    assert_eq!((miss.value, miss.source), (3, Source::Flight));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Other keys never see it.
    assert_eq!(group.call("other", || work(4)).value, 4);
}

#[test]
fn failures_are_kept_for_the_negative_ttl_only() {
    let clock = ManualClock::new();
    let negative = Duration::from_secs(1);
    // `Err` is a failure without a classifier: `Result` is `Fallible`.
    let group = Group::<String, Result<u32, String>>::builder()
        .memo(TTL)
        .negative_ttl(negative)
        .clock(clock.clone())
        .build();

    assert!(group.call("k", || Err("down".into())).value.is_err());
    clock.advance(negative - Duration::from_nanos(1));
    let kept = group.call("k", || Ok(1));
    assert_eq!(
        (kept.value, kept.source),
        (Err("down".into()), Source::Memo)
    );
    clock.advance(Duration::from_nanos(1));
    let fresh = group.call("k", || Ok(2));
    assert_eq!((fresh.value, fresh.source), (Ok(2), Source::Flight));
    // A success replaces it, for the full TTL.
    clock.advance(negative);
    assert_eq!(group.call("k", || Ok(3)).value, Ok(2));
}

#[test]
fn without_a_negative_ttl_failures_are_not_memoised() {
    let group = Group::<String, Result<u32, String>>::builder()
        .memo(TTL)
        .clock(ManualClock::new())
        .build();
    assert!(group.call("k", || Err("down".into())).value.is_err());
    let next = group.call("k", || Ok(1));
    assert_eq!((next.value, next.source), (Ok(1), Source::Flight));
}

#[test]
fn the_default_clock_expires_values() {
    // The ticking clock, on real time: this waits for the expiry it checks,
    // bounded by HANG, and times nothing.
    let group = Group::<String, u32>::builder()
        .memo_all(Duration::from_millis(5))
        .build();
    assert_eq!(group.call("k", || 1).source, Source::Flight);
    let start = Instant::now();
    let mut n = 1;
    loop {
        n += 1;
        let out = group.call("k", || n);
        if out.source == Source::Flight {
            assert_eq!(out.value, n);
            break;
        }
        assert_eq!(out.value, 1, "a memo hit serves the memoised value");
        assert!(start.elapsed() < HANG, "the memoised value never expired");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn memo_all_keeps_every_value_and_failure_if_overrides_fallible() {
    let all = Group::<String, Result<u32, String>>::builder()
        .memo_all(TTL)
        .clock(ManualClock::new())
        .build();
    all.call("k", || Err("down".into()));
    let kept = all.call("k", || Ok(1));
    assert_eq!(
        (kept.value, kept.source),
        (Err("down".into()), Source::Memo)
    );

    // Here a zero is the failure and an `Err` a value like any other.
    let custom = Group::<String, Result<u32, String>>::builder()
        .failure_if(|r| matches!(r, Ok(0)))
        .memo(TTL)
        .clock(ManualClock::new())
        .build();
    custom.call("zero", || Ok(0));
    assert_eq!(custom.call("zero", || Ok(1)).source, Source::Flight);
    custom.call("err", || Err("kept".into()));
    assert_eq!(custom.call("err", || Ok(1)).source, Source::Memo);
}

#[test]
fn a_flight_started_before_invalidate_does_not_write_the_memo() {
    let group = Arc::new(
        Group::<String, u32>::builder()
            .memo_all(TTL)
            .clock(ManualClock::new())
            .metrics("invalidate")
            .build(),
    );
    let gate = Gate::default();
    let leader = {
        let (group, gate) = (group.clone(), gate.clone());
        thread::spawn(move || {
            group.call("k", || {
                gate.wait();
                1
            })
        })
    };
    until_flight(&group, "k");
    let follower = {
        let group = group.clone();
        thread::spawn(move || group.call("k", || 99))
    };
    until_waiters(&group, 1);
    assert!(group.invalidate("k"));
    gate.open();
    // Callers of the old flight still get its value...
    assert_eq!(leader.join().unwrap().value, 1);
    assert_eq!(follower.join().unwrap().value, 1);
    // ...but it did not reach the memo: the next call runs the work.
    let next = group.call("k", || 2);
    assert_eq!((next.value, next.source), (2, Source::Flight));
    // And that newer value is memoised as usual.
    assert_eq!(group.call("k", || 3).source, Source::Memo);
    assert!(group.invalidate("k"));
    assert!(!group.invalidate("k"));
}

#[test]
fn retry_once_runs_exactly_two_executions_none_serialised() {
    const N: usize = 8;
    let group = Arc::new(
        Group::<String, Result<u32, String>>::builder()
            .failure_if(Result::is_err)
            .error_policy(ErrorPolicy::RetryOnce)
            .metrics("retry")
            .build(),
    );
    let executions = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();

    let leader = {
        let (group, gate, executions) = (group.clone(), gate.clone(), executions.clone());
        thread::spawn(move || {
            group.call("k", || {
                executions.fetch_add(1, Ordering::SeqCst);
                gate.wait();
                Err("first attempt failed".to_string())
            })
        })
    };
    until_flight(&group, "k");
    let followers: Vec<_> = (0..N)
        .map(|_| {
            let (group, executions, running) = (group.clone(), executions.clone(), running.clone());
            thread::spawn(move || {
                group.call("k", || {
                    executions.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "retries overlap");
                    // The other followers wait on this one retry, all at once.
                    until_waiters(&group, N as u64 - 1);
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(7)
                })
            })
        })
        .collect();
    until_waiters(&group, N as u64);
    gate.open();

    let led = leader.join().unwrap();
    assert_eq!(led.value, Err("first attempt failed".to_string()));
    for follower in followers {
        let out = follower.join().unwrap();
        assert_eq!(out.value, Ok(7));
        assert!(out.shared);
    }
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    assert!(group.is_empty());
}

#[test]
fn a_failed_retry_is_final() {
    let group = Arc::new(
        Group::<String, Result<u32, u32>>::builder()
            .failure_if(Result::is_err)
            .error_policy(ErrorPolicy::RetryOnce)
            .metrics("retry-fails")
            .build(),
    );
    let executions = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let leader = {
        let (group, gate, executions) = (group.clone(), gate.clone(), executions.clone());
        thread::spawn(move || {
            group.call("k", || {
                executions.fetch_add(1, Ordering::SeqCst);
                gate.wait();
                Err(1)
            })
        })
    };
    until_flight(&group, "k");
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let (group, executions) = (group.clone(), executions.clone());
            thread::spawn(move || {
                group.call("k", || {
                    Err(executions.fetch_add(1, Ordering::SeqCst) as u32 + 1)
                })
            })
        })
        .collect();
    until_waiters(&group, 3);
    gate.open();
    assert_eq!(leader.join().unwrap().value, Err(1));
    for follower in followers {
        assert_eq!(follower.join().unwrap().value, Err(2));
    }
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    assert!(group.is_empty());
}

#[test]
fn a_caller_past_its_deadline_leaves_and_the_flight_goes_on() {
    let group = Arc::new(Group::<String, u32>::builder().metrics("deadline").build());
    let gate = Gate::default();
    let executions = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (group, gate, executions) = (group.clone(), gate.clone(), executions.clone());
        thread::spawn(move || {
            group.call("k", || {
                executions.fetch_add(1, Ordering::SeqCst);
                gate.wait();
                5
            })
        })
    };
    until_flight(&group, "k");
    let patient = {
        let group = group.clone();
        thread::spawn(move || group.call("k", || 0))
    };
    until_waiters(&group, 1);
    // The gate stays shut until this caller has given up: no timing involved.
    let hasty = group.call_with_timeout("k", Duration::from_millis(1), || 0);
    assert!(matches!(hasty, Err(Error::Timeout)));
    assert_eq!(stats(&group).timeouts, 1);
    assert!(group.contains("k"), "the flight goes on");
    gate.open();
    assert_eq!(leader.join().unwrap().value, 5);
    assert_eq!(patient.join().unwrap().value, 5);
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    assert!(group.is_empty());
}

#[test]
fn the_builder_timeout_applies_to_call_checked() {
    let group = Arc::new(
        Group::<String, u32>::builder()
            .timeout(Duration::from_millis(1))
            .metrics("timeout")
            .build(),
    );
    let gate = Gate::default();
    let leader = {
        let (group, gate) = (group.clone(), gate.clone());
        thread::spawn(move || {
            group.call_checked("k", || {
                gate.wait();
                1
            })
        })
    };
    until_flight(&group, "k");
    assert!(matches!(group.call_checked("k", || 0), Err(Error::Timeout)));
    gate.open();
    assert_eq!(leader.join().unwrap().unwrap().value, 1);
}

/// A capped group whose key has a running flight and one waiter.
struct Capped {
    group: Arc<Group<String, u32>>,
    gate: Gate,
    leader: thread::JoinHandle<u32>,
    follower: thread::JoinHandle<u32>,
}

fn capped(overflow: Overflow) -> Capped {
    let group = Arc::new(
        Group::<String, u32>::builder()
            .max_waiters(1, overflow)
            .metrics("cap")
            .build(),
    );
    let gate = Gate::default();
    let leader = {
        let (group, gate) = (group.clone(), gate.clone());
        thread::spawn(move || {
            group
                .call("k", || {
                    gate.wait();
                    1
                })
                .value
        })
    };
    until_flight(&group, "k");
    let follower = {
        let group = group.clone();
        thread::spawn(move || group.call("k", || 0).value)
    };
    until_waiters(&group, 1);
    Capped {
        group,
        gate,
        leader,
        follower,
    }
}

#[test]
fn past_the_waiter_cap_a_caller_is_refused() {
    let Capped {
        group,
        gate,
        leader,
        follower,
    } = capped(Overflow::Refuse);
    assert!(matches!(
        group.call_checked("k", || 2),
        Err(Error::TooManyWaiters)
    ));
    gate.open();
    assert_eq!((leader.join().unwrap(), follower.join().unwrap()), (1, 1));
    // Under the cap again, the next caller is served.
    assert_eq!(group.call_checked("k", || 3).unwrap().value, 3);
}

#[test]
fn past_the_waiter_cap_a_caller_runs_its_own_work() {
    let Capped {
        group,
        gate,
        leader,
        follower,
    } = capped(Overflow::RunOwn);
    let own = group.call("k", || 2);
    assert_eq!(
        (own.value, own.shared, own.source),
        (2, false, Source::Bypass)
    );
    assert!(group.contains("k"), "the capped flight is untouched");
    gate.open();
    assert_eq!((leader.join().unwrap(), follower.join().unwrap()), (1, 1));
    assert_eq!(stats(&group).executions, 2);
}

#[test]
fn every_counter_after_a_scripted_scenario() {
    let clock = ManualClock::new();
    let group = Arc::new(
        Group::<String, u32>::builder()
            .memo_all(TTL)
            .clock(clock.clone())
            .metrics("scripted")
            .build(),
    );
    // 1 call, 1 execution: a lone flight.
    group.call("a", || 1);
    // 2 memo hits.
    group.call("a", || 0);
    group.call("a", || 0);
    // A flight with a follower (2 shared), and a third caller timing out.
    let gate = Gate::default();
    let leader = {
        let (group, gate) = (group.clone(), gate.clone());
        thread::spawn(move || {
            group.call("b", || {
                gate.wait();
                2
            })
        })
    };
    until_flight(&group, "b");
    let follower = {
        let group = group.clone();
        thread::spawn(move || group.call("b", || 0))
    };
    until_waiters(&group, 1);
    let during = stats(&group);
    assert_eq!((during.flights, during.waiters), (1, 1));
    assert!(matches!(
        group.call_with_timeout("b", Duration::from_millis(1), || 0),
        Err(Error::Timeout)
    ));
    gate.open();
    leader.join().unwrap();
    follower.join().unwrap();
    // A panic.
    assert!(group.call_checked("c", || panic!("boom")).is_err());

    let end = stats(&group);
    assert_eq!(
        (end.calls, end.executions, end.shared, end.memo_hits),
        (7, 3, 2, 2)
    );
    assert_eq!(
        (end.stale_hits, end.timeouts, end.cancellations, end.panics),
        (0, 1, 0, 1)
    );
    assert_eq!((end.flights, end.waiters), (0, 0));
}

#[test]
fn a_panicking_clone_for_the_memo_still_ends_the_flight() {
    #[derive(Debug, PartialEq)]
    struct Fragile(u32);
    impl Clone for Fragile {
        fn clone(&self) -> Self {
            panic!("clone failed")
        }
    }
    let group = Group::<String, Fragile>::builder().memo_all(TTL).build();
    // The leader's own value is not cloned; the memo's copy panics and is skipped.
    assert_eq!(group.call("k", || Fragile(1)).value, Fragile(1));
    assert!(group.is_empty());
    assert_eq!(group.call("k", || Fragile(2)).value, Fragile(2));
}

#[test]
fn a_forgotten_flight_does_not_write_the_memo_either() {
    let group = Arc::new(
        Group::<String, u32>::builder()
            .memo_all(TTL)
            .clock(ManualClock::new())
            .build(),
    );
    let gate = Gate::default();
    let old = {
        let (group, gate) = (group.clone(), gate.clone());
        thread::spawn(move || {
            group.call("k", || {
                gate.wait();
                1
            })
        })
    };
    until_flight(&group, "k");
    assert!(group.forget("k"));
    // A newer flight for the key runs beside the forgotten one and memoises.
    assert_eq!(group.call("k", || 2).value, 2);
    gate.open();
    assert_eq!(old.join().unwrap().value, 1);
    // The forgotten flight ended last, yet the memo holds the newer value.
    let memo = group.call("k", || 3);
    assert_eq!((memo.value, memo.source), (2, Source::Memo));
}
