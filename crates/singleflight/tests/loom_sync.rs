//! loom models of the blocking group's races: join against finish, a panic
//! against a joining caller, forget against a finishing flight, and a failed
//! flight against a follower under `ErrorPolicy::RetryOnce`.
//!
//! Run with `RUSTFLAGS="--cfg singleflight_loom" cargo test --release --test loom_sync`.
#![cfg(singleflight_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use singleflight::sync::Group;

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
            (Err(err), Err(_)) => assert_eq!(err.message(), "boom"),
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
    use singleflight::policy::ErrorPolicy;
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
