//! Detached flights: with a spawner, a flight whose every caller was dropped
//! runs to completion, and new callers for its key still join it.
#![cfg(feature = "tokio")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use singleflight::future::{Detached, Group, TokioSpawner};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_flight_finishes_on_the_runtime_and_newcomers_join_it() {
    let group = Group::<String, u32>::builder()
        .detach(TokioSpawner::current())
        .build();
    let (open, gate) = oneshot::channel::<u32>();
    let (started_tx, started) = oneshot::channel::<()>();
    let (finished_tx, finished) = oneshot::channel::<u32>();
    let leader = {
        let group = group.clone();
        tokio::spawn(async move {
            group
                .call("key", move || async move {
                    started_tx.send(()).unwrap();
                    let value = gate.await.unwrap();
                    finished_tx.send(value).unwrap();
                    value
                })
                .await
        })
    };
    started.await.unwrap();
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert!(group.contains("key"), "the detached flight keeps its key");

    // A newcomer joins the detached flight instead of starting another. It
    // reports once its first poll (where it joins) has returned.
    let (joined_tx, joined) = oneshot::channel::<()>();
    let newcomer = {
        let group = group.clone();
        tokio::spawn(async move {
            let mut call = Box::pin(group.call("key", || async { 0 }));
            assert!(futures::FutureExt::now_or_never(call.as_mut()).is_none());
            joined_tx.send(()).unwrap();
            call.await
        })
    };
    joined.await.unwrap();
    open.send(5).unwrap();
    assert_eq!(finished.await.unwrap(), 5, "the work ran to its end");
    let out = newcomer.await.unwrap();
    assert_eq!((out.value, out.shared), (5, true));
    assert!(group.is_empty());
}

#[test]
fn any_executor_can_run_detached_flights_through_a_closure() {
    let spawned = Arc::new(AtomicUsize::new(0));
    let group = {
        let spawned = spawned.clone();
        Group::<String, u32>::builder()
            .detach(move |flight: Detached| {
                spawned.fetch_add(1, Ordering::SeqCst);
                smol::spawn(flight).detach();
            })
            .build()
    };
    smol::block_on(async {
        let (open, gate) = oneshot::channel::<u32>();
        let (done_tx, done) = oneshot::channel::<()>();
        let mut call = Box::pin(group.call("key", move || async move {
            let value = gate.await.unwrap();
            done_tx.send(()).unwrap();
            value
        }));
        // Poll once so the flight starts, then drop its only caller.
        assert!(futures::FutureExt::now_or_never(call.as_mut()).is_none());
        drop(call);
        assert_eq!(spawned.load(Ordering::SeqCst), 1);
        open.send(1).unwrap();
        done.await.unwrap();
    });
}
