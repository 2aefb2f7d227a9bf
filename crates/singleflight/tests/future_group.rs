//! The async group's contract, run on three executors: tokio multi-thread,
//! tokio current-thread and smol. Nothing here depends on timing: the work
//! waits on gates the test opens once the callers are known to be waiting.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable};
use singleflight::future::Group;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How a scenario spawns tasks on the executor under test.
#[derive(Clone, Copy)]
struct Exec {
    spawn: fn(BoxFuture<()>) -> BoxFuture<()>,
}

impl Exec {
    /// Spawns `fut`; the returned future completes with its output.
    fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> BoxFuture<T> {
        let (tx, rx) = oneshot::channel();
        let task = (self.spawn)(Box::pin(async move {
            drop(tx.send(fut.await));
        }));
        Box::pin(async move {
            task.await;
            rx.await.expect("task panicked or was cancelled")
        })
    }

    /// Spawns `fut` so that it can be cancelled (dropped) with the handle.
    fn spawn_abortable<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> (AbortHandle, BoxFuture<Option<T>>) {
        let (handle, registration) = AbortHandle::new_pair();
        let task = self.spawn(Abortable::new(fut, registration));
        (handle, Box::pin(async move { task.await.ok() }))
    }
}

/// Resolves once polled for the first time, after polling `inner` once: lets
/// a test know that a call has joined its flight (or started it).
struct Joined<F> {
    inner: Pin<Box<F>>,
    joined: Option<mpsc::UnboundedSender<()>>,
}

fn joined<F: Future>(inner: F, tx: &mpsc::UnboundedSender<()>) -> Joined<F> {
    Joined {
        inner: Box::pin(inner),
        joined: Some(tx.clone()),
    }
}

impl<F: Future> Future for Joined<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.inner.as_mut().poll(cx);
        if let Some(tx) = self.joined.take() {
            drop(tx.unbounded_send(()));
        }
        polled
    }
}

/// Waits until `n` calls have reported that they joined.
async fn until_joined(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        rx.next().await.expect("a caller went away before joining");
    }
}

/// Work that waits for a gate and counts its runs and its drops.
#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

struct DropGuard(Arc<AtomicUsize>);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Probe {
    fn work<T: Clone + Send + Sync + 'static>(
        &self,
        gate: futures::future::Shared<oneshot::Receiver<T>>,
    ) -> impl Future<Output = T> + Send + 'static + use<T> {
        let (runs, guard) = (self.runs.clone(), DropGuard(self.drops.clone()));
        async move {
            let _guard = guard;
            runs.fetch_add(1, Ordering::SeqCst);
            gate.await.expect("gate dropped")
        }
    }
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }
}

fn gate<T: Clone>() -> (
    oneshot::Sender<T>,
    futures::future::Shared<oneshot::Receiver<T>>,
) {
    let (tx, rx) = oneshot::channel();
    (tx, rx.shared())
}

async fn herd_runs_the_work_once(exec: Exec, n: usize) {
    let group = Group::<String, u64>::new();
    let probe = Probe::default();
    let (open, gate) = gate();
    let (tx, mut rx) = mpsc::unbounded();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (group, probe, gate) = (group.clone(), probe.clone(), gate.clone());
            exec.spawn(joined(
                group.call_owned("key".into(), move || probe.work(gate)),
                &tx,
            ))
        })
        .collect();
    until_joined(&mut rx, n).await;
    open.send(7).unwrap();
    for task in tasks {
        let out = task.await;
        assert_eq!(out.value, 7);
        assert!(out.shared);
    }
    assert_eq!(probe.runs(), 1);
    assert!(group.is_empty());
}

async fn herd_of_10_000_tasks(exec: Exec) {
    herd_runs_the_work_once(exec, 10_000).await;
}

async fn leader_aborted_mid_flight_followers_get_the_value(exec: Exec) {
    const FOLLOWERS: usize = 50;
    let group = Group::<String, u64>::new();
    let probe = Probe::default();
    let (open, gate) = gate();
    let (tx, mut rx) = mpsc::unbounded();
    let (abort_leader, leader) = {
        let (group, probe, gate) = (group.clone(), probe.clone(), gate.clone());
        exec.spawn_abortable(joined(
            group.call_owned("key".into(), move || probe.work(gate)),
            &tx,
        ))
    };
    until_joined(&mut rx, 1).await;
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let group = group.clone();
            exec.spawn(joined(
                group.call_owned("key".into(), || async {
                    unreachable!("joined a running flight")
                }),
                &tx,
            ))
        })
        .collect();
    until_joined(&mut rx, FOLLOWERS).await;
    abort_leader.abort();
    assert!(leader.await.is_none(), "the leader was cancelled");
    assert_eq!(probe.drops(), 0, "the work survived its starter");
    assert!(group.contains("key"));
    open.send(11).unwrap();
    for follower in followers {
        let out = follower.await;
        assert_eq!(out.value, 11);
        assert!(out.shared);
    }
    assert_eq!(
        probe.runs(),
        1,
        "the work was neither restarted nor run twice"
    );
    assert_eq!(probe.drops(), 1);
    assert!(group.is_empty());
}

async fn every_caller_aborted_cancels_the_work_and_frees_the_key(exec: Exec) {
    const CALLERS: usize = 20;
    let group = Group::<String, u64>::new();
    let probe = Probe::default();
    let (_never_opened, gate) = gate();
    let (tx, mut rx) = mpsc::unbounded();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (group, probe, gate) = (group.clone(), probe.clone(), gate.clone());
            exec.spawn_abortable(joined(
                group.call_owned("key".into(), move || probe.work(gate)),
                &tx,
            ))
        })
        .collect();
    until_joined(&mut rx, CALLERS).await;
    for (abort, _) in &callers {
        abort.abort();
    }
    for (_, task) in callers {
        assert!(task.await.is_none());
    }
    assert_eq!(probe.runs(), 1);
    assert_eq!(probe.drops(), 1, "the work's destructors ran");
    assert!(group.is_empty(), "no entry is left for a doomed flight");

    // A new call runs afresh and never sees the abandoned flight's result.
    let out = group.call("key", || async { 99 }).await;
    assert_eq!((out.value, out.shared), (99, false));
}

async fn panic_with_followers_reaches_every_caller(exec: Exec) {
    const FOLLOWERS: usize = 10;
    let group = Group::<String, u64>::new();
    let (open, gate) = gate::<()>();
    let (tx, mut rx) = mpsc::unbounded();
    let leader = {
        let group = group.clone();
        exec.spawn(joined(
            AssertUnwindSafe(group.call_owned("key".into(), move || async move {
                gate.await.unwrap();
                panic!("upstream exploded")
            }))
            .catch_unwind(),
            &tx,
        ))
    };
    until_joined(&mut rx, 1).await;
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let group = group.clone();
            exec.spawn(joined(
                group.call_checked_owned("key".into(), || async { 0 }),
                &tx,
            ))
        })
        .collect();
    until_joined(&mut rx, FOLLOWERS).await;
    open.send(()).unwrap();
    let payload = leader.await.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"upstream exploded"));
    for follower in followers {
        match follower.await {
            Err(singleflight::Error::Panicked(err)) => {
                assert_eq!(err.message(), "upstream exploded")
            }
            other => panic!("a follower got {other:?}"),
        }
    }
    assert!(group.is_empty());
    assert_eq!(group.call("key", || async { 3 }).await.value, 3);
}

async fn thousand_cancelled_calls_leave_the_group_empty(exec: Exec) {
    const CALLS: usize = 1_000;
    let group = Group::<String, u64>::new();
    let probe = Probe::default();
    let (_never_opened, gate) = gate();
    let (tx, mut rx) = mpsc::unbounded();
    // Spread over 10 keys so that leaders, followers and orphaned work mix.
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (group, probe, gate) = (group.clone(), probe.clone(), gate.clone());
            exec.spawn_abortable(joined(
                group.call_owned(format!("key-{}", i % 10), move || probe.work(gate)),
                &tx,
            ))
        })
        .collect();
    until_joined(&mut rx, CALLS).await;
    assert_eq!(group.len(), 10);
    // Abort the first half (leaders among them), then the rest.
    for (abort, _) in &calls {
        abort.abort();
    }
    for (_, call) in calls {
        assert!(call.await.is_none());
    }
    assert!(group.is_empty());
    assert_eq!(
        probe.runs(),
        probe.drops(),
        "every started work was dropped"
    );
}

async fn forget_mid_flight_gives_waiters_the_old_value_and_newcomers_a_new_flight(exec: Exec) {
    let group = Group::<String, &'static str>::new();
    let (old_open, old_gate) = gate();
    let (new_open, new_gate) = gate();
    let (tx, mut rx) = mpsc::unbounded();
    let probe = Probe::default();
    let old_leader = {
        let (group, probe) = (group.clone(), probe.clone());
        exec.spawn(joined(
            group.call_owned("key".into(), move || probe.work(old_gate)),
            &tx,
        ))
    };
    let old_follower = exec.spawn(joined(
        group.call_owned("key".into(), || async { "never" }),
        &tx,
    ));
    until_joined(&mut rx, 2).await;
    assert!(group.forget("key"));
    let new_leader = {
        let (group, probe) = (group.clone(), probe.clone());
        exec.spawn(joined(
            group.call_owned("key".into(), move || probe.work(new_gate)),
            &tx,
        ))
    };
    until_joined(&mut rx, 1).await;
    assert_eq!(group.len(), 2);
    old_open.send("old").unwrap();
    assert_eq!(old_leader.await.value, "old");
    assert_eq!(old_follower.await.value, "old");
    assert!(
        group.contains("key"),
        "the old flight removed only its own entry"
    );
    let late = exec.spawn(joined(
        group.call_owned("key".into(), || async { "third" }),
        &tx,
    ));
    until_joined(&mut rx, 1).await;
    new_open.send("new").unwrap();
    assert_eq!(new_leader.await.value, "new");
    let late = late.await;
    assert_eq!((late.value, late.shared), ("new", true));
    assert_eq!(probe.runs(), 2);
    assert!(group.is_empty());
}

async fn different_keys_run_in_parallel_and_work_may_call_another_key(exec: Exec) {
    let group = Group::<String, u32>::new();
    // "a" waits for "b" to have started, and "b" for "a": serialised keys would hang.
    let (a_started, a_seen) = oneshot::channel::<()>();
    let (b_started, b_seen) = oneshot::channel::<()>();
    let a = exec.spawn(group.call_owned("a".into(), move || async move {
        a_started.send(()).unwrap();
        b_seen.await.unwrap();
        1
    }));
    let b = exec.spawn(group.call_owned("b".into(), move || async move {
        b_started.send(()).unwrap();
        a_seen.await.unwrap();
        2
    }));
    assert_eq!(a.await.value + b.await.value, 3);
    let inner = group.clone();
    let nested = group
        .call("outer", move || async move {
            inner.call("inner", || async { 40 }).await.value + 2
        })
        .await;
    assert_eq!(nested.value, 42);
    assert!(group.is_empty());
}

async fn the_leader_alone_is_not_shared_and_make_runs_only_for_the_leader(exec: Exec) {
    let group = Group::<String, u8>::new();
    let makes = Arc::new(AtomicUsize::new(0));
    let out = {
        let makes = makes.clone();
        exec.spawn(group.call_owned("k".into(), move || {
            makes.fetch_add(1, Ordering::SeqCst);
            async { 1 }
        }))
        .await
    };
    assert_eq!((out.value, out.shared), (1, false));
    assert_eq!(makes.load(Ordering::SeqCst), 1);
}

macro_rules! on_every_executor {
    ($($scenario:ident),* $(,)?) => {
        mod tokio_multi_thread {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
                    let exec = Exec { spawn: |f| Box::pin(tokio::spawn(f).map(|r| r.unwrap())) };
                    rt.block_on(super::$scenario(exec));
                }
            )*
        }
        mod tokio_current_thread {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    let exec = Exec { spawn: |f| Box::pin(tokio::spawn(f).map(|r| r.unwrap())) };
                    rt.block_on(super::$scenario(exec));
                }
            )*
        }
        mod smol_executor {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    let exec = Exec { spawn: |f| Box::pin(smol::spawn(f)) };
                    smol::block_on(super::$scenario(exec));
                }
            )*
        }
    };
}

on_every_executor!(
    herd_of_10_000_tasks,
    leader_aborted_mid_flight_followers_get_the_value,
    every_caller_aborted_cancels_the_work_and_frees_the_key,
    panic_with_followers_reaches_every_caller,
    thousand_cancelled_calls_leave_the_group_empty,
    forget_mid_flight_gives_waiters_the_old_value_and_newcomers_a_new_flight,
    different_keys_run_in_parallel_and_work_may_call_another_key,
    the_leader_alone_is_not_shared_and_make_runs_only_for_the_leader,
);
