//! loom models of the blocking group's races: join against finish, a panic
//! against a joining caller, forget against a finishing flight, a failed
//! flight against a follower under `ErrorPolicy::RetryOnce`, and a failed
//! flight opening its retry against a follower whose deadline passes.
//!
//! Run with `RUSTFLAGS="--cfg singleflight_loom" cargo test --release --test loom_sync`.
#![cfg(singleflight_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use singleflight::Error;
use singleflight::policy::ErrorPolicy;
use singleflight::sync::Group;

/// A work's run count, out of loom's sight: the library marks the work of a
/// flight as running in a std thread-local, and loom runs every model
/// thread on one OS thread, so a work that yielded to loom (through a loom
/// atomic) would make another model thread look like a re-entrant call.
type Runs = std::sync::Arc<std::sync::atomic::AtomicUsize>;

fn runs() -> Runs {
    Runs::default()
}

#[test]
fn join_races_finish() {
    loom::model(|| {
        let group = Arc::new(Group::<u8, u8>::new());
        let executions = Arc::new(AtomicUsize::new(0));
        let other = {
            let (group, executions) = (group.clone(), executions.clone());
            thread::spawn(move || {
                group
                    .call_checked(&1, || {
                        executions.fetch_add(1, Ordering::SeqCst);
                        7
                    })
                    .unwrap()
            })
        };
        let mine = group
            .call_checked(&1, || {
                executions.fetch_add(1, Ordering::SeqCst);
                7
            })
            .unwrap();
        let theirs = other.join().unwrap();
        let runs = executions.load(Ordering::SeqCst);
        assert!(runs == 1 || runs == 2);
        assert_eq!((mine.value, theirs.value), (7, 7));
        // Shared exactly when one execution served both.
        assert_eq!(mine.shared, runs == 1);
        assert_eq!(theirs.shared, runs == 1);
        assert!(group.is_empty());
    });
}

#[test]
fn panic_races_a_joining_caller() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    loom::model(|| {
        let group = Arc::new(Group::<u8, u8>::new());
        let panicker = {
            let group = group.clone();
            thread::spawn(move || group.call_checked(&1, || panic!("boom")).map(|o| o.value))
        };
        let mine = group.call_checked(&1, || 5).map(|o| o.value);
        let theirs = panicker.join().unwrap();
        match (&mine, &theirs) {
            // Separate flights, or the panicker joined ours.
            (Ok(5), Err(_)) | (Ok(5), Ok(5)) => {}
            // We joined the panicking flight.
            (Err(singleflight::Error::Panicked(err)), Err(_)) => assert_eq!(err.message(), "boom"),
            other => panic!("impossible outcome {other:?}"),
        }
        assert!(group.is_empty());
    });
    std::panic::set_hook(hook);
}

#[test]
fn forget_races_a_finishing_flight() {
    loom::model(|| {
        let group = Arc::new(Group::<u8, u8>::new());
        let first = {
            let group = group.clone();
            thread::spawn(move || group.call(&1, || 1).value)
        };
        group.forget(&1);
        let second = group.call(&1, || 2).value;
        let first = first.join().unwrap();
        // Whatever the order, each caller got a value of a flight it could
        // have joined, and no slot is left behind.
        assert!(first == 1 || first == 2);
        assert!(second == 1 || second == 2);
        assert!(group.is_empty());
    });
}

#[test]
fn a_failed_flight_races_a_follower_under_retry_once() {
    loom::model(|| {
        let group = Arc::new(
            Group::<u8, Result<u8, u8>>::builder()
                .failure_if(Result::is_err)
                .error_policy(ErrorPolicy::RetryOnce)
                .build(),
        );
        let executions = Arc::new(AtomicUsize::new(0));
        let follower = {
            let (group, executions) = (group.clone(), executions.clone());
            thread::spawn(move || {
                group
                    .call(&1, || {
                        executions.fetch_add(1, Ordering::SeqCst);
                        Ok(2)
                    })
                    .value
            })
        };
        let mine = group
            .call(&1, || {
                executions.fetch_add(1, Ordering::SeqCst);
                Err(9)
            })
            .value;
        let theirs = follower.join().unwrap();
        let runs = executions.load(Ordering::SeqCst);
        // The follower never gets the failure: it ran alone, led the retry,
        // or led the flight we joined. We get our own failure only if our
        // work ran.
        assert_eq!(theirs, Ok(2));
        match runs {
            1 => assert_eq!(mine, Ok(2)),
            2 => assert_eq!(mine, Err(9)),
            _ => panic!("{runs} executions: a retry ran more than once"),
        }
        assert!(group.is_empty());
    });
}

/// A follower whose deadline has passed leaves while the driver's failure
/// opens the retry: whichever comes first, the flight ends, nobody waits for
/// a retry that nobody will run, and the group is left empty.
///
/// The deadline is zero: loom's condvar never times out, and a zero
/// deadline is past at the follower's first look, whatever the real clock
/// says, so every schedule is deterministic. The works count their runs
/// out of loom's sight (see `Runs`).
#[test]
fn a_follower_past_its_deadline_races_the_retry_a_failure_opens() {
    #[derive(Debug, PartialEq)]
    struct Down(u8);

    loom::model(|| {
        let group = Arc::new(
            Group::<u8, u8>::builder()
                .error_policy(ErrorPolicy::RetryOnce)
                .build(),
        );
        let (failed, retried) = (runs(), runs());
        let driver = {
            let (group, failed) = (group.clone(), failed.clone());
            thread::spawn(move || {
                group
                    .try_call(&1, || {
                        failed.fetch_add(1, Ordering::SeqCst);
                        Err(Down(9))
                    })
                    .map(|o| o.value)
                    .map_err(|e| e.0)
            })
        };
        let mine = group.call_with_timeout(&1, Duration::ZERO, || {
            retried.fetch_add(1, Ordering::SeqCst);
            2
        });
        let theirs = driver.join().unwrap();
        let failed = failed.load(Ordering::SeqCst);
        let retried = retried.load(Ordering::SeqCst);
        match &mine {
            // Led a flight of its own (the driver may have joined it), or
            // claimed the retry before its deadline was looked at.
            Ok(out) => {
                assert_eq!(out.value, 2);
                assert_eq!(retried, 1);
            }
            // Joined the failing flight and left: it ran nothing.
            Err(Error::Timeout) => assert_eq!((failed, retried), (1, 0)),
            Err(other) => panic!("unexpected error {other:?}"),
        }
        // The driver gets its own failure if its work ran, else the value
        // of the flight it joined.
        match theirs {
            Err(9) => assert_eq!(failed, 1),
            Ok(2) => assert_eq!((failed, retried), (0, 1)),
            other => panic!("unexpected driver outcome {other:?}"),
        }
        assert!(group.is_empty(), "a flight outlived its callers");
        assert_eq!(group.waiters(&1), 0);
    });
}
