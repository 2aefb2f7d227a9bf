//! The async group on tokio: a hundred tasks ask for the same key, the work
//! runs once and every task gets its value. The task that started the flight
//! is aborted midway: the flight belongs to all its callers, so the others
//! still get the value and the work is not restarted.
//!
//! `cargo run -p oneflight --example future_group`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use singleflight::future::Group;
use tokio::sync::watch;

const TASKS: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let group = Group::<String, String>::new();
    let executions = Arc::new(AtomicUsize::new(0));
    // The upstream answers when `answer` is sent: the run is the same every time.
    let (answer, upstream) = watch::channel(false);

    let call = |executions: Arc<AtomicUsize>, mut upstream: watch::Receiver<bool>| {
        group.call_owned("user:42".to_string(), move || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            upstream
                .wait_for(|sent| *sent)
                .await
                .expect("upstream gone");
            "Ada Lovelace".to_string()
        })
    };
    let first = tokio::spawn(call(executions.clone(), upstream.clone()));
    while !group.contains("user:42") {
        tokio::task::yield_now().await; // let the first task start the flight
    }
    let tasks: Vec<_> = (1..TASKS)
        .map(|_| tokio::spawn(call(executions.clone(), upstream.clone())))
        .collect();
    while group.waiters("user:42") < TASKS - 1 {
        tokio::task::yield_now().await; // let every task join (the driver is not counted)
    }

    first.abort(); // the caller that started the flight goes away
    assert!(first.await.expect_err("aborted").is_cancelled());
    answer.send(true).expect("the flight is still waiting");

    let mut shared = 0;
    for task in tasks {
        let out = task.await.expect("a task panicked");
        assert_eq!(out.value, "Ada Lovelace");
        shared += usize::from(out.shared);
    }
    let runs = executions.load(Ordering::SeqCst);
    println!(
        "{} tasks got the value ({shared} shared), {runs} execution",
        TASKS - 1
    );
    assert_eq!(runs, 1, "the work ran once and was not restarted");
    assert!(group.is_empty(), "nothing is left behind");
}
