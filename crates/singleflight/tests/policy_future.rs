//! The async group's policies on tokio's paused clock: memo and negative TTL,
//! stale-while-revalidate, generation-safe invalidate, RetryOnce, deadlines,
//! the waiter cap and the counters.
//!
//! Every test runs on a current-thread runtime with time paused (the memo
//! reads it through `TokioClock`), so the
//! order of events is fixed: `settle` lets every ready task run until all
//! wait, and time moves only by `advance` or, when every task sleeps, to the
//! next timer.
#![cfg(feature = "tokio")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use singleflight::future::{Detached, Group, TokioSpawner};
use singleflight::policy::{ErrorPolicy, Overflow, Stats, TokioClock};
use singleflight::{Error, Source};
use tokio::sync::Semaphore;
use tokio::time::advance;

const TTL: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(5);

/// Lets every task that can run, run, until all of them wait.
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// A gate the work waits on, opened by the test.
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

impl Gate {
    fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }
    fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }
    async fn wait(&self) {
        drop(self.0.acquire().await.expect("never closed"));
    }
}

fn stats<K, T, S>(group: &Group<K, T, S>) -> Stats {
    group.stats().expect("metrics on")
}

#[tokio::test(start_paused = true)]
async fn memo_hit_before_the_ttl_and_miss_after() {
    let group = Group::<String, u32>::builder()
        .memo_all(TTL)
        .clock(TokioClock)
        .build();
    let first = group.call("k", || async { 1 }).await;
    assert_eq!((first.value, first.source), (1, Source::Flight));

    advance(TTL - Duration::from_millis(1)).await;
    let hit = group.call("k", || async { 2 }).await;
    assert_eq!((hit.value, hit.source, hit.shared), (1, Source::Memo, true));

    advance(Duration::from_millis(1)).await;
    let miss = group.call("k", || async { 3 }).await;
    assert_eq!((miss.value, miss.source), (3, Source::Flight));
}

#[tokio::test(start_paused = true)]
async fn failures_are_kept_for_the_negative_ttl_only() {
    let negative = Duration::from_secs(1);
    let group = Group::<String, Result<u32, String>>::builder()
        .memo(TTL)
        .clock(TokioClock)
        .negative_ttl(negative)
        .build();
    assert!(
        group
            .call("k", || async { Err("down".into()) })
            .await
            .value
            .is_err()
    );
    advance(negative - Duration::from_millis(1)).await;
    let kept = group.call("k", || async { Ok(1) }).await;
    assert_eq!(
        (kept.value, kept.source),
        (Err("down".into()), Source::Memo)
    );
    advance(Duration::from_millis(1)).await;
    let fresh = group.call("k", || async { Ok(2) }).await;
    assert_eq!((fresh.value, fresh.source), (Ok(2), Source::Flight));
}

fn swr_group() -> Group<String, Result<u32, String>> {
    Group::builder()
        .memo(TTL)
        .clock(TokioClock)
        .failure_if(Result::is_err)
        .negative_ttl(Duration::from_secs(1))
        .stale_while_revalidate(GRACE)
        .detach(TokioSpawner::current())
        .metrics("swr")
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_stale_value_is_served_while_exactly_one_refresh_runs() {
    let group = swr_group();
    group.call("k", || async { Ok(1) }).await;
    advance(TTL).await;

    let refreshes = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let refresh = |value| {
        let (refreshes, gate) = (refreshes.clone(), gate.clone());
        move || {
            refreshes.fetch_add(1, Ordering::SeqCst);
            async move {
                gate.wait().await;
                Ok(value)
            }
        }
    };
    for _ in 0..5 {
        let stale = group.call("k", refresh(2)).await;
        assert_eq!((stale.value, stale.source), (Ok(1), Source::Stale));
        settle().await;
    }
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert!(group.contains("k"), "the refresh is in flight");

    gate.open();
    settle().await;
    let refreshed = group.call("k", refresh(3)).await;
    assert_eq!((refreshed.value, refreshed.source), (Ok(2), Source::Memo));
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(stats(&group).stale_hits, 5);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_stale_value_until_grace_ends() {
    let group = swr_group();
    group.call("k", || async { Ok(1) }).await;
    advance(TTL).await;

    let stale = group
        .call("k", || async { Err("refresh failed".into()) })
        .await;
    assert_eq!((stale.value, stale.source), (Ok(1), Source::Stale));
    settle().await;
    assert!(group.is_empty(), "the refresh ended");
    // Its failure did not replace the stale value.
    let still = group.call("k", || async { Err("again".into()) }).await;
    assert_eq!((still.value, still.source), (Ok(1), Source::Stale));
    settle().await;
    assert_eq!(stats(&group).executions, 3);

    advance(GRACE).await;
    let after = group.call("k", || async { Ok(9) }).await;
    assert_eq!((after.value, after.source), (Ok(9), Source::Flight));
}

#[tokio::test(start_paused = true)]
async fn a_flight_started_before_invalidate_does_not_write_the_memo() {
    let group = Group::<String, u32>::builder()
        .memo_all(TTL)
        .clock(TokioClock)
        .build();
    let gate = Gate::new();
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
    settle().await;
    let follower = tokio::spawn({
        let group = group.clone();
        async move { group.call("k", || async { 99 }).await }
    });
    settle().await;
    assert!(group.invalidate("k"));
    gate.open();
    assert_eq!(leader.await.unwrap().value, 1);
    assert_eq!(follower.await.unwrap().value, 1);
    let next = group.call("k", || async { 2 }).await;
    assert_eq!((next.value, next.source), (2, Source::Flight));
    assert_eq!(group.call("k", || async { 3 }).await.source, Source::Memo);
}

#[tokio::test(start_paused = true)]
async fn retry_once_runs_exactly_two_executions_none_serialised() {
    const N: u64 = 8;
    let group = Group::<String, Result<u32, String>>::builder()
        .failure_if(Result::is_err)
        .error_policy(ErrorPolicy::RetryOnce)
        .metrics("retry")
        .build();
    let executions = Arc::new(AtomicUsize::new(0));
    let waiting_on_retry = Arc::new(AtomicU64::new(u64::MAX));
    let gate = Gate::new();

    let leader = tokio::spawn({
        let (group, gate, executions) = (group.clone(), gate.clone(), executions.clone());
        async move {
            group
                .call("k", move || {
                    executions.fetch_add(1, Ordering::SeqCst);
                    async move {
                        gate.wait().await;
                        Err("first attempt failed".to_string())
                    }
                })
                .await
        }
    });
    settle().await;
    let followers: Vec<_> = (0..N)
        .map(|_| {
            let (group, executions, seen) =
                (group.clone(), executions.clone(), waiting_on_retry.clone());
            tokio::spawn(async move {
                let inner = group.clone();
                group
                    .call("k", move || {
                        executions.fetch_add(1, Ordering::SeqCst);
                        async move {
                            settle().await;
                            // The others wait on this one retry, all at once.
                            seen.store(stats(&inner).waiters, Ordering::SeqCst);
                            Ok(7)
                        }
                    })
                    .await
            })
        })
        .collect();
    settle().await;
    assert_eq!(stats(&group).waiters, N);
    gate.open();

    assert_eq!(
        leader.await.unwrap().value,
        Err("first attempt failed".to_string())
    );
    for follower in followers {
        let out = follower.await.unwrap();
        assert_eq!((out.value, out.shared), (Ok(7), true));
    }
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    assert_eq!(waiting_on_retry.load(Ordering::SeqCst), N - 1);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_caller_past_its_deadline_leaves_and_the_flight_goes_on() {
    let group = Group::<String, u32>::builder().metrics("deadline").build();
    let gate = Gate::new();
    let executions = Arc::new(AtomicUsize::new(0));
    let leader = tokio::spawn({
        let (group, gate, executions) = (group.clone(), gate.clone(), executions.clone());
        async move {
            group
                .call("k", move || {
                    executions.fetch_add(1, Ordering::SeqCst);
                    async move {
                        gate.wait().await;
                        5
                    }
                })
                .await
        }
    });
    settle().await;
    let patient = tokio::spawn({
        let group = group.clone();
        async move { group.call("k", || async { 0 }).await }
    });
    settle().await;
    // Every task waits, so the paused clock jumps to this deadline.
    let hasty = group
        .call_with_timeout("k", Duration::from_secs(1), || async { 0 })
        .await;
    assert!(matches!(hasty, Err(Error::Timeout)));
    assert!(group.contains("k"), "the flight goes on");
    gate.open();
    assert_eq!(leader.await.unwrap().value, 5);
    assert_eq!(patient.await.unwrap().value, 5);
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    let end = stats(&group);
    assert_eq!((end.timeouts, end.cancellations), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_lone_caller_past_its_deadline_cancels_the_flight() {
    let group = Group::<String, u32>::builder().metrics("alone").build();
    let out = group
        .call_with_timeout("k", Duration::from_secs(1), std::future::pending)
        .await;
    assert!(matches!(out, Err(Error::Timeout)));
    assert!(group.is_empty());
    let end = stats(&group);
    assert_eq!((end.timeouts, end.cancellations, end.flights), (1, 1, 0));
}

async fn capped(
    overflow: Overflow,
) -> (
    Group<String, u32>,
    Gate,
    tokio::task::JoinHandle<u32>,
    tokio::task::JoinHandle<u32>,
) {
    let group = Group::<String, u32>::builder()
        .max_waiters(1, overflow)
        .metrics("cap")
        .build();
    let gate = Gate::new();
    let leader = tokio::spawn({
        let (group, gate) = (group.clone(), gate.clone());
        async move {
            group
                .call("k", || async move {
                    gate.wait().await;
                    1
                })
                .await
                .value
        }
    });
    settle().await;
    let follower = tokio::spawn({
        let group = group.clone();
        async move { group.call("k", || async { 0 }).await.value }
    });
    settle().await;
    (group, gate, leader, follower)
}

#[tokio::test(start_paused = true)]
async fn past_the_waiter_cap_a_caller_is_refused() {
    let (group, gate, leader, follower) = capped(Overflow::Refuse).await;
    let refused = group.call_checked("k", || async { 2 }).await;
    assert!(matches!(refused, Err(Error::TooManyWaiters)));
    gate.open();
    assert_eq!((leader.await.unwrap(), follower.await.unwrap()), (1, 1));
    assert_eq!(
        group.call_checked("k", || async { 3 }).await.unwrap().value,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_waiter_cap_a_caller_runs_its_own_work() {
    let (group, gate, leader, follower) = capped(Overflow::RunOwn).await;
    let own = group.call("k", || async { 2 }).await;
    assert_eq!(
        (own.value, own.shared, own.source),
        (2, false, Source::Bypass)
    );
    assert!(group.contains("k"), "the capped flight is untouched");
    gate.open();
    assert_eq!((leader.await.unwrap(), follower.await.unwrap()), (1, 1));
    assert_eq!(stats(&group).executions, 2);
}

#[tokio::test(start_paused = true)]
async fn every_counter_after_a_scripted_scenario() {
    // Detached flights run as tasks the test can abort (a runtime shutting
    // down does the same to them).
    let detached = Arc::new(std::sync::Mutex::new(Vec::new()));
    let group = Group::<String, u32>::builder()
        .memo_all(TTL)
        .clock(TokioClock)
        .stale_while_revalidate(GRACE)
        .detach({
            let detached = detached.clone();
            move |flight: Detached| detached.lock().unwrap().push(tokio::spawn(flight))
        })
        .metrics("scripted")
        .build();
    // A lone flight, a memo hit, then a stale hit and its refresh.
    group.call("a", || async { 1 }).await;
    group.call("a", || async { 0 }).await;
    advance(TTL).await;
    assert_eq!(group.call("a", || async { 2 }).await.source, Source::Stale);
    settle().await;

    // A flight with a follower, and a third caller timing out on it.
    let gate = Gate::new();
    let leader = tokio::spawn({
        let (group, gate) = (group.clone(), gate.clone());
        async move {
            group
                .call("b", || async move {
                    gate.wait().await;
                    3
                })
                .await
        }
    });
    settle().await;
    let follower = tokio::spawn({
        let group = group.clone();
        async move { group.call("b", || async { 0 }).await }
    });
    settle().await;
    let during = stats(&group);
    assert_eq!((during.flights, during.waiters), (1, 1));
    let timed_out = group
        .call_with_timeout("b", Duration::from_secs(1), || async { 0 })
        .await;
    assert!(matches!(timed_out, Err(Error::Timeout)));
    gate.open();
    leader.await.unwrap();
    follower.await.unwrap();

    // A panic, and a lone caller whose deadline leaves its flight to the
    // spawner, where it is cancelled.
    assert!(
        group
            .call_checked("c", || async { panic!("boom") })
            .await
            .is_err()
    );
    let lone = group
        .call_with_timeout("d", Duration::from_secs(1), std::future::pending)
        .await;
    assert!(matches!(lone, Err(Error::Timeout)));
    assert!(group.contains("d"), "detached, it goes on");
    for task in detached.lock().unwrap().drain(..) {
        task.abort();
    }
    settle().await;

    let end = stats(&group);
    assert_eq!(
        (end.calls, end.executions, end.shared, end.memo_hits),
        (8, 5, 2, 1)
    );
    assert_eq!(
        (end.stale_hits, end.timeouts, end.cancellations, end.panics),
        (1, 2, 1, 1)
    );
    assert_eq!((end.flights, end.waiters), (0, 0));
    assert!(group.is_empty());
}
