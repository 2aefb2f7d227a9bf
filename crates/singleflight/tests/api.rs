//! The calls of both groups as their new signatures promise them: fallible
//! work whose error is shared behind one `Arc` (and memoised only with a
//! negative TTL), the waiter cap's `Refuse` under the plain `call`, the
//! builder refusing settings that would do nothing, and a call made from
//! inside its own key's work panicking instead of waiting for itself.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use singleflight::policy::{ErrorPolicy, ManualClock, Overflow};
use singleflight::{Error, Outcome, Source, future, sync};

/// Bounds a wait that would otherwise hang the test: it fails instead. It
/// times nothing.
const HANG: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);
/// What a call made from inside its own key's work panics with.
const REENTERED: &str = "from inside the work of that key's own flight";

/// The error of the failing work. Deliberately not `Clone`: `try_call`
/// shares it behind one `Arc`.
#[derive(Debug, PartialEq, Eq)]
struct Unavailable {
    code: u16,
}

/// A gate the work of a blocking flight waits on, opened by the test.
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

/// An async gate, for the work of an async flight.
#[derive(Clone)]
struct AsyncGate(Arc<tokio::sync::Semaphore>);

impl AsyncGate {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }
    fn open(&self) {
        self.0.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
    async fn wait(&self) {
        drop(self.0.acquire().await.expect("never closed"));
    }
}

/// Waits until `done()` holds, failing the test past `HANG`.
fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "{what} never happened");
        thread::sleep(Duration::from_millis(1));
    }
}

/// `until`, for a test on a tokio runtime.
async fn until_async(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `f` on a thread of its own and returns what it returned, or fails
/// the test if it has not within `HANG` (a call that waits for itself).
fn on_a_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()));
    rx.recv_timeout(HANG)
        .expect("the call hung (or its thread died without an answer)")
}

/// Every error is the very same `Arc` as the first.
fn one_arc(errors: &[Arc<Unavailable>]) {
    assert_eq!(*errors[0], Unavailable { code: 503 });
    for error in errors {
        assert!(Arc::ptr_eq(error, &errors[0]), "an error was not shared");
    }
}

// ---- try_call: one error, behind one Arc, for a whole herd ----

#[test]
fn sync_herd_shares_one_non_clone_error_behind_one_arc() {
    let group = Arc::new(sync::Group::<String, u64>::new());
    let gate = Gate::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (group, gate, runs, barrier) =
                (group.clone(), gate.clone(), runs.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                group.try_call("key", || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                    Err(Unavailable { code: 503 })
                })
            })
        })
        .collect();
    // The leader's work holds until the seven others have joined its flight.
    until("7 waiters", || group.waiters("key") == 7);
    gate.open();
    let errors: Vec<Arc<Unavailable>> = callers
        .into_iter()
        .map(|caller| caller.join().unwrap().unwrap_err())
        .collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
    one_arc(&errors);
    assert!(group.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_herd_shares_one_non_clone_error_behind_one_arc() {
    let group = future::Group::<String, u64>::new();
    let gate = AsyncGate::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (group, gate, runs) = (group.clone(), gate.clone(), runs.clone());
            tokio::spawn(async move {
                group
                    .try_call("key", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        Err::<u64, _>(Unavailable { code: 503 })
                    })
                    .await
            })
        })
        .collect();
    until_async("7 waiters", || group.waiters("key") == 7).await;
    gate.open();
    let mut errors = Vec::new();
    for caller in callers {
        errors.push(caller.await.unwrap().unwrap_err());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution");
    one_arc(&errors);
    assert!(group.is_empty());
}

// ---- try_call and the memo: errors are kept for the negative TTL only ----

#[test]
fn sync_errors_are_memoised_only_with_a_negative_ttl() {
    let runs = AtomicUsize::new(0);
    let fail = || {
        runs.fetch_add(1, Ordering::SeqCst);
        Err(Unavailable { code: 503 })
    };
    let succeed = || {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    };

    let forgetful = sync::Group::<String, u64>::builder().memo_all(TTL).build();
    assert!(forgetful.try_call("k", fail).is_err());
    let next = forgetful.try_call("k", succeed).unwrap();
    assert_eq!((next.value, next.source), (7, Source::Flight));
    assert_eq!(runs.swap(0, Ordering::SeqCst), 2, "the error was not kept");

    let keeping = sync::Group::<String, u64>::builder()
        .memo_all(TTL)
        .negative_ttl(TTL)
        .build();
    let first = keeping.try_call("k", fail).unwrap_err();
    let kept = keeping.try_call("k", succeed).unwrap_err();
    assert!(
        Arc::ptr_eq(&first, &kept),
        "the memo hands out the same Arc"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second work never ran");
}

#[tokio::test]
async fn async_errors_are_memoised_only_with_a_negative_ttl() {
    let runs = Arc::new(AtomicUsize::new(0));
    let fail = || {
        let runs = runs.clone();
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<u64, _>(Unavailable { code: 503 })
        }
    };
    let succeed = || {
        let runs = runs.clone();
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Unavailable>(7)
        }
    };

    let forgetful = future::Group::<String, u64>::builder()
        .memo_all(TTL)
        .build();
    assert!(forgetful.try_call("k", fail()).await.is_err());
    let next = forgetful.try_call("k", succeed()).await.unwrap();
    assert_eq!((next.value, next.source), (7, Source::Flight));
    assert_eq!(runs.swap(0, Ordering::SeqCst), 2, "the error was not kept");

    let keeping = future::Group::<String, u64>::builder()
        .memo_all(TTL)
        .negative_ttl(TTL)
        .build();
    let first = keeping.try_call("k", fail()).await.unwrap_err();
    let kept = keeping.try_call("k", succeed()).await.unwrap_err();
    assert!(
        Arc::ptr_eq(&first, &kept),
        "the memo hands out the same Arc"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second work never ran");
}

// ---- Overflow::Refuse: `call` runs its own work, `call_checked` refuses ----

#[test]
fn sync_past_a_refusing_cap_call_bypasses_and_call_checked_is_refused() {
    let group = Arc::new(
        sync::Group::<String, u64>::builder()
            .max_waiters(0, Overflow::Refuse)
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
    until("the flight", || group.contains("k"));

    let own = group.call("k", || 2);
    assert_eq!(
        (own.value, own.shared, own.source),
        (2, false, Source::Bypass)
    );
    let own = group.try_call::<_, Unavailable, _>("k", || Ok(3)).unwrap();
    assert_eq!((own.value, own.source), (3, Source::Bypass));
    let refused = group.call_checked("k", || 4);
    assert!(
        matches!(refused, Err(Error::TooManyWaiters)),
        "got {refused:?}"
    );

    assert!(group.contains("k"), "the capped flight is untouched");
    gate.open();
    let led = leader.join().unwrap();
    assert_eq!(
        (led.value, led.shared, led.source),
        (1, false, Source::Flight)
    );
    assert!(group.is_empty());
}

#[tokio::test]
async fn async_past_a_refusing_cap_call_bypasses_and_call_checked_is_refused() {
    let group = future::Group::<String, u64>::builder()
        .max_waiters(0, Overflow::Refuse)
        .build();
    let gate = AsyncGate::new();
    let leader = tokio::spawn({
        let (group, gate) = (group.clone(), gate.clone());
        async move {
            group
                .call("k", || async move {
                    gate.wait().await;
                    1
                })
                .await
        }
    });
    until_async("the flight", || group.contains("k")).await;

    let own = group.call("k", || async { 2 }).await;
    assert_eq!(
        (own.value, own.shared, own.source),
        (2, false, Source::Bypass)
    );
    let own = group
        .try_call("k", || async { Ok::<_, Unavailable>(3) })
        .await
        .unwrap();
    assert_eq!((own.value, own.source), (3, Source::Bypass));
    let refused = group.call_checked("k", || async { 4 }).await;
    assert!(
        matches!(refused, Err(Error::TooManyWaiters)),
        "got {refused:?}"
    );

    assert!(group.contains("k"), "the capped flight is untouched");
    gate.open();
    let led = leader.await.unwrap();
    assert_eq!(
        (led.value, led.shared, led.source),
        (1, false, Source::Flight)
    );
    assert!(group.is_empty());
}

// ---- Settings that would do nothing are refused when the group is built ----

/// A spawner for the async builder that needs no runtime; the tests that
/// use it never detach a flight.
fn no_runtime(flight: future::Detached) {
    drop(flight);
}

/// `#[should_panic]` tests of one refused setting: the blocking builder's,
/// then the async builder's.
macro_rules! refused {
    ($($sync:ident, $async:ident: $expected:literal, |$b:ident| $set:expr;)*) => {$(
        #[test]
        #[should_panic(expected = $expected)]
        fn $sync() {
            let $b = sync::Group::<String, Result<u64, String>>::builder();
            drop($set.build());
        }

        #[test]
        #[should_panic(expected = $expected)]
        fn $async() {
            let $b = future::Group::<String, Result<u64, String>>::builder();
            drop($set.build());
        }
    )*};
}

refused! {
    sync_negative_ttl_without_a_memo, async_negative_ttl_without_a_memo:
        "`negative_ttl` needs a memo", |b| b.negative_ttl(TTL);
    sync_capacity_without_a_memo, async_capacity_without_a_memo:
        "`capacity` needs a memo", |b| b.capacity(100);
    sync_clock_without_a_memo, async_clock_without_a_memo:
        "`clock` times the memo", |b| b.clock(ManualClock::new());
    sync_failure_if_without_memo_or_retry, async_failure_if_without_memo_or_retry:
        "`failure_if` tells failures apart", |b| b.failure_if(Result::is_err);
}

#[test]
#[should_panic(expected = "`stale_while_revalidate` needs a memo")]
fn async_stale_while_revalidate_without_a_memo() {
    let builder = future::Group::<String, u64>::builder()
        .detach(no_runtime)
        .stale_while_revalidate(TTL);
    drop(builder.build());
}

#[test]
#[should_panic(expected = "`stale_while_revalidate` refreshes in the background")]
fn async_stale_while_revalidate_without_detach() {
    let builder = future::Group::<String, u64>::builder()
        .memo_all(TTL)
        .stale_while_revalidate(TTL);
    drop(builder.build());
}

#[test]
fn every_setting_builds_where_it_does_something() {
    type Value = Result<u64, String>;
    let ok = |group: sync::Group<String, Value>| {
        assert_eq!(group.call("k", || Ok(1)).value, Ok(1));
    };
    // The memo's settings, on a memo.
    ok(sync::Group::builder()
        .memo(TTL)
        .negative_ttl(TTL)
        .capacity(100)
        .clock(ManualClock::new())
        .failure_if(Result::is_err)
        .build());
    // A classifier for the retry alone, or for the memo alone.
    ok(sync::Group::builder()
        .failure_if(Result::is_err)
        .error_policy(ErrorPolicy::RetryOnce)
        .build());
    ok(sync::Group::builder()
        .memo_all(TTL)
        .failure_if(Result::is_err)
        .build());
    ok(sync::Group::builder()
        .timeout(TTL)
        .max_waiters(8, Overflow::Refuse)
        .metrics("every_setting")
        .build());

    let ok = |group: future::Group<String, Value>| {
        let out = futures::executor::block_on(group.call("k", || async { Ok(1) }));
        assert_eq!(out.value, Ok(1));
    };
    ok(future::Group::builder()
        .memo(TTL)
        .negative_ttl(TTL)
        .capacity(100)
        .clock(ManualClock::new())
        .failure_if(Result::is_err)
        .build());
    ok(future::Group::builder()
        .failure_if(Result::is_err)
        .error_policy(ErrorPolicy::RetryOnce)
        .build());
    // Stale-while-revalidate, with its memo and its spawner.
    ok(future::Group::builder()
        .memo(TTL)
        .stale_while_revalidate(TTL)
        .detach(no_runtime)
        .build());
}

// ---- A call from inside its own key's work panics; another key works ----

#[test]
fn sync_a_call_from_inside_its_own_keys_work_panics() {
    let group = Arc::new(sync::Group::<String, u64>::new());
    let out = on_a_thread({
        let group = group.clone();
        move || {
            group
                .call_checked("key", || group.call("key", || 2).value)
                .map(|o| o.value)
        }
    });
    match out {
        Err(Error::Panicked(panicked)) => assert!(
            panicked.message().contains(REENTERED),
            "panicked with {:?}",
            panicked.message()
        ),
        other => panic!("expected the re-entry panic, got {other:?}"),
    }
    // The panic ended the flight: the key is free again.
    assert!(group.is_empty());
    assert_eq!(group.call("key", || 3).value, 3);
}

#[test]
fn sync_a_call_from_inside_the_work_for_another_key_runs() {
    let group = Arc::new(sync::Group::<String, u64>::new());
    let out = on_a_thread({
        let group = group.clone();
        move || {
            let outer = group.call("outer", || group.call("inner", || 2).value + 1);
            let tried = group.try_call::<_, Unavailable, _>("tried", || {
                Ok(group.call_checked("inner", || 4).unwrap().value + 1)
            });
            (outer.value, tried.unwrap().value)
        }
    });
    assert_eq!(out, (3, 5));
    assert!(group.is_empty());
}

/// The outcome of `call`, awaited on a small executor of the caller's
/// thread, as a value: `Ok(value)` or the message of the panic it raised.
fn block_on_checked<T>(call: impl Future<Output = Result<Outcome<T>, Error>>) -> Result<T, String> {
    match futures::executor::block_on(call) {
        Ok(outcome) => Ok(outcome.value),
        Err(Error::Panicked(panicked)) => Err(panicked.message().to_owned()),
        Err(other) => Err(format!("not a panic: {other:?}")),
    }
}

#[test]
fn async_a_call_from_inside_its_own_keys_work_panics() {
    let group = future::Group::<String, u64>::new();
    let out = on_a_thread({
        let group = group.clone();
        move || {
            let inner = group.clone();
            block_on_checked(group.call_checked("key", move || async move {
                inner.call("key", || async { 2 }).await.value
            }))
        }
    });
    match out {
        Err(message) => assert!(message.contains(REENTERED), "panicked with {message:?}"),
        Ok(value) => panic!("expected the re-entry panic, got the value {value}"),
    }
    assert!(group.is_empty());
    assert_eq!(
        futures::executor::block_on(group.call("key", || async { 3 })).value,
        3
    );
}

#[test]
fn async_a_call_from_inside_the_work_for_another_key_runs() {
    let group = future::Group::<String, u64>::new();
    let out = on_a_thread({
        let group = group.clone();
        move || {
            let inner = group.clone();
            block_on_checked(group.call_checked("outer", move || async move {
                inner.call("inner", || async { 2 }).await.value + 1
            }))
        }
    });
    assert_eq!(out, Ok(3));
    assert!(group.is_empty());
}
