//! The blocking group's core contract: one execution per key, shared flags,
//! no lock held while the work runs, panics reaching every caller, forget.

use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasherDefault, Hash};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use singleflight::sync::Group;

/// Generous bound for tests that would otherwise hang on a deadlock: they
/// fail instead. It bounds a hang, it does not time the code.
const HANG: Duration = Duration::from_secs(30);

/// Runs `f` on a thread and fails the test if it has not returned within `HANG`.
fn within_hang_bound<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()).ok());
    rx.recv_timeout(HANG)
        .expect("deadlock: the calls did not complete")
}

/// Returns once `n` callers wait on the flight for "key" (failing the test
/// if that never happens): they joined it, none can start another.
fn until_waiters<K, T>(group: &Arc<Group<K, T>>, n: usize)
where
    K: Borrow<str> + Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    let group = group.clone();
    within_hang_bound(move || {
        while group.waiters("key") < n {
            thread::sleep(Duration::from_millis(1));
        }
    });
}

/// A gate the work waits on, opened by the test.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

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

/// Spawns `n` threads that each call `key` on `group` with `work`, released
/// together; returns their join handles.
fn herd<T: Clone + Send + Sync + 'static>(
    group: &Arc<Group<String, T>>,
    n: usize,
    work: impl Fn() -> T + Send + Sync + 'static,
) -> Vec<thread::JoinHandle<singleflight::Outcome<T>>> {
    let barrier = Arc::new(Barrier::new(n));
    let work = Arc::new(work);
    (0..n)
        .map(|_| {
            let (group, barrier, work) = (group.clone(), barrier.clone(), work.clone());
            thread::spawn(move || {
                barrier.wait();
                group.call("key", || work())
            })
        })
        .collect()
}

#[test]
fn herd_of_256_threads_runs_the_work_once_and_all_share() {
    const N: usize = 256;
    let group = Arc::new(Group::<String, u64>::new());
    let executions = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let handles = {
        let (executions, gate) = (executions.clone(), gate.clone());
        herd(&group, N, move || {
            executions.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            42
        })
    };
    // Open the gate once the other N - 1 threads wait on the flight: none can
    // then arrive late and start a second execution.
    until_waiters(&group, N - 1);
    gate.open();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    assert!(outs.iter().all(|o| o.value == 42 && o.shared));
    assert!(group.is_empty());
}

#[test]
fn a_caller_alone_is_not_shared() {
    let group = Group::<String, u8>::new();
    let out = group.call("alone", || 1);
    assert_eq!(out.value, 1);
    assert!(!out.shared);
    assert!(group.is_empty());
}

#[test]
fn sequential_calls_each_run_the_work() {
    let group = Group::<String, usize>::new();
    let executions = AtomicUsize::new(0);
    for i in 1..=3 {
        let out = group.call("key", || executions.fetch_add(1, Ordering::SeqCst) + 1);
        assert_eq!(out.value, i);
        assert!(!out.shared);
    }
}

#[test]
fn different_keys_whose_work_waits_on_each_other_complete() {
    // Each key's work waits until the other key's work has started: a lock
    // held while the work runs would serialise them and deadlock.
    within_hang_bound(|| {
        let group = Arc::new(Group::<String, &'static str>::new());
        let both_running = Arc::new(Barrier::new(2));
        let spawn = |key: &'static str| {
            let (group, both_running) = (group.clone(), both_running.clone());
            thread::spawn(move || {
                group.call(key, || {
                    both_running.wait();
                    key
                })
            })
        };
        let (a, b) = (spawn("a"), spawn("b"));
        assert_eq!(a.join().unwrap().value, "a");
        assert_eq!(b.join().unwrap().value, "b");
        assert!(group.is_empty());
    });
}

#[test]
fn work_may_call_the_group_for_another_key() {
    within_hang_bound(|| {
        let group = Group::<String, u32>::new();
        let out = group.call("outer", || group.call("inner", || 1).value + 1);
        assert_eq!(out.value, 2);
        assert!(group.is_empty());
    });
}

#[test]
fn errors_are_values_shared_with_every_caller() {
    let group = Arc::new(Group::<String, Result<u8, String>>::new());
    let gate = Gate::default();
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (group, gate, started) = (group.clone(), gate.clone(), started.clone());
        thread::spawn(move || {
            group.call("key", || {
                started.wait();
                gate.wait();
                Err("upstream down".to_string())
            })
        })
    };
    started.wait();
    let follower = {
        let group = group.clone();
        thread::spawn(move || group.call("key", || Ok(1)))
    };
    until_waiters(&group, 1);
    gate.open();
    let (l, f) = (leader.join().unwrap(), follower.join().unwrap());
    assert_eq!(l.value, Err("upstream down".to_string()));
    assert_eq!(f.value, Err("upstream down".to_string()));
    assert!(l.shared && f.shared);
}

#[test]
fn panic_reaches_every_caller_with_its_message_and_the_group_stays_usable() {
    const FOLLOWERS: usize = 8;
    let group = Arc::new(Group::<String, u8>::new());
    let gate = Gate::default();
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (group, gate, started) = (group.clone(), gate.clone(), started.clone());
        thread::spawn(move || {
            panic::catch_unwind(AssertUnwindSafe(|| {
                group.call("key", || {
                    started.wait();
                    gate.wait();
                    panic!("upstream exploded");
                })
            }))
        })
    };
    started.wait();
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let group = group.clone();
            thread::spawn(move || {
                panic::catch_unwind(AssertUnwindSafe(|| {
                    group.call("key", || unreachable!("joined a running flight"))
                }))
            })
        })
        .collect();
    until_waiters(&group, FOLLOWERS);
    gate.open();

    let payload = leader.join().unwrap().unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"upstream exploded"));
    for follower in followers {
        let payload = follower.join().unwrap().unwrap_err();
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("upstream exploded")
        );
    }
    assert!(group.is_empty(), "the panicked flight freed its key");
    let out = group.call("key", || 5);
    assert_eq!((out.value, out.shared), (5, false));
}

#[test]
fn call_checked_hands_a_panic_over_as_an_error() {
    let group = Group::<String, u8>::new();
    let err =
        panicked(group.call_checked("key", || panic!("formatted {}", std::hint::black_box(42))));
    assert_eq!(err.message(), "formatted 42");
    assert_eq!(
        err.into_payload()
            .downcast_ref::<String>()
            .map(String::as_str),
        Some("formatted 42")
    );
    assert_eq!(group.call_checked("key", || 3).unwrap().value, 3);
}

#[test]
fn a_non_string_panic_payload_reaches_its_leader_unchanged() {
    let group = Group::<String, u8>::new();
    let err = panicked(group.call_checked("key", || panic::panic_any(17_u32)));
    assert_eq!(err.into_payload().downcast_ref::<u32>(), Some(&17));
}

#[test]
fn forget_during_a_flight_lets_new_callers_start_a_new_one() {
    let group = Arc::new(Group::<String, &'static str>::new());
    let (old_gate, new_gate) = (Gate::default(), Gate::default());
    let started = Arc::new(Barrier::new(2));
    let old_leader = {
        let (group, gate, started) = (group.clone(), old_gate.clone(), started.clone());
        thread::spawn(move || {
            group.call("key", || {
                started.wait();
                gate.wait();
                "old"
            })
        })
    };
    started.wait();
    let old_follower = {
        let group = group.clone();
        thread::spawn(move || group.call("key", || "never run"))
    };
    until_waiters(&group, 1);

    assert!(group.forget("key"));
    assert!(!group.contains("key"));
    assert!(!group.forget("key"), "only a live flight can be forgotten");

    let new_started = Arc::new(Barrier::new(2));
    let new_leader = {
        let (group, gate, started) = (group.clone(), new_gate.clone(), new_started.clone());
        thread::spawn(move || {
            group.call("key", || {
                started.wait();
                gate.wait();
                "new"
            })
        })
    };
    new_started.wait();
    assert!(group.contains("key"));
    assert_eq!(group.len(), 2, "the forgotten flight is kept until it ends");

    old_gate.open();
    assert_eq!(old_leader.join().unwrap().value, "old");
    assert_eq!(old_follower.join().unwrap().value, "old");

    // The old flight ended after the new one began: it must have removed its
    // own entry only. A caller arriving now joins the new flight.
    assert!(group.contains("key"));
    assert_eq!(group.len(), 1);
    let late = {
        let group = group.clone();
        thread::spawn(move || group.call("key", || "a third execution"))
    };
    until_waiters(&group, 1);
    new_gate.open();
    assert_eq!(new_leader.join().unwrap().value, "new");
    let late = late.join().unwrap();
    assert_eq!(late.value, "new");
    assert!(late.shared);
    assert!(group.is_empty());
}

#[test]
fn keys_are_looked_up_by_borrowed_form_with_a_custom_hasher() {
    let group = Group::<String, u8, _>::with_hasher(BuildHasherDefault::<DefaultHasher>::default());
    let out = group.call("owned", || {
        assert!(group.contains("owned"), "found by &str while in flight");
        9
    });
    assert_eq!(out.value, 9);
    assert!(!group.contains("owned"));
}

#[test]
fn a_panicking_clone_hurts_only_its_own_caller() {
    #[derive(Debug)]
    struct Fragile(u8);
    impl Clone for Fragile {
        fn clone(&self) -> Self {
            if thread::current().name() == Some("fragile") {
                panic!("clone refused");
            }
            Fragile(self.0)
        }
    }
    let group = Arc::new(Group::<String, Fragile>::new());
    let gate = Gate::default();
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (group, gate, started) = (group.clone(), gate.clone(), started.clone());
        thread::spawn(move || {
            group.call("key", || {
                started.wait();
                gate.wait();
                Fragile(4)
            })
        })
    };
    started.wait();
    let fragile = {
        let group = group.clone();
        thread::Builder::new()
            .name("fragile".into())
            .spawn(move || {
                panic::catch_unwind(AssertUnwindSafe(|| group.call("key", || Fragile(0))))
            })
            .unwrap()
    };
    let sturdy = {
        let group = group.clone();
        thread::spawn(move || group.call("key", || Fragile(0)))
    };
    until_waiters(&group, 2);
    gate.open();
    assert_eq!(leader.join().unwrap().value.0, 4);
    assert_eq!(sturdy.join().unwrap().value.0, 4);
    assert!(fragile.join().unwrap().is_err());
    assert!(group.is_empty());
}

/// The panic a checked call ended with.
fn panicked<T: std::fmt::Debug>(
    result: Result<singleflight::Outcome<T>, singleflight::Error>,
) -> singleflight::Panicked {
    match result {
        Err(singleflight::Error::Panicked(panicked)) => panicked,
        other => panic!("expected a panic, got {other:?}"),
    }
}
