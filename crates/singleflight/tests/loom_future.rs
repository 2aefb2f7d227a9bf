//! loom models of the async group's races: join against finish, the last
//! caller leaving against a new caller joining, and the driver leaving while
//! a follower waits.
//!
//! Run with `RUSTFLAGS="--cfg singleflight_loom" cargo test --release --test loom_future`.
#![cfg(singleflight_loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use singleflight::future::Group;

/// A gate the work waits on; opened by another loom thread.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

struct Wait(Arc<Gate>);

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Counts the work's starts and drops.
#[derive(Default)]
struct Counts {
    runs: AtomicUsize,
    drops: AtomicUsize,
}

struct OnDrop(Arc<Counts>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn gated_work(
    gate: Arc<Gate>,
    counts: Arc<Counts>,
    value: u8,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = u8> + Send>> {
    move || {
        counts.runs.fetch_add(1, Ordering::SeqCst);
        let guard = OnDrop(counts);
        Box::pin(async move {
            let _guard = guard;
            Wait(gate).await;
            value
        })
    }
}

#[test]
fn join_races_finish() {
    loom::model(|| {
        let group = Group::<u8, u8>::new();
        let counts = Arc::new(Counts::default());
        let other = {
            let (group, counts) = (group.clone(), counts.clone());
            thread::spawn(move || {
                loom::future::block_on(group.call(&1, move || {
                    counts.runs.fetch_add(1, Ordering::SeqCst);
                    async { 3 }
                }))
            })
        };
        let mine = loom::future::block_on(group.call(&1, {
            let counts = counts.clone();
            move || {
                counts.runs.fetch_add(1, Ordering::SeqCst);
                async { 3 }
            }
        }));
        let theirs = other.join().unwrap();
        let runs = counts.runs.load(Ordering::SeqCst);
        assert!(runs == 1 || runs == 2);
        assert_eq!((mine.value, theirs.value), (3, 3));
        assert_eq!(mine.shared, runs == 1);
        assert!(group.is_empty());
    });
}

#[test]
fn driver_leaves_while_a_follower_waits() {
    loom::model(|| {
        let group = Group::<u8, u8>::new();
        let gate = Arc::new(Gate::default());
        let counts = Arc::new(Counts::default());

        // The first caller polls once (starting or joining the flight), then
        // is dropped, as a cancelled task would be.
        let leaver = {
            let (group, gate, counts) = (group.clone(), gate.clone(), counts.clone());
            thread::spawn(move || {
                let mut call = Box::pin(group.call(&1, gated_work(gate, counts, 9)));
                let mut cx = Context::from_waker(Waker::noop());
                let polled = call.as_mut().poll(&mut cx);
                drop(call);
                polled.map(|o| o.value)
            })
        };
        let stayer = {
            let (group, gate, counts) = (group.clone(), gate.clone(), counts.clone());
            thread::spawn(move || {
                loom::future::block_on(group.call(&1, gated_work(gate, counts, 9)))
            })
        };
        gate.open();
        let left = leaver.join().unwrap();
        let stayed = stayer.join().unwrap();
        assert!(matches!(left, Poll::Pending | Poll::Ready(9)));
        assert_eq!(stayed.value, 9);
        let runs = counts.runs.load(Ordering::SeqCst);
        assert!(runs == 1 || runs == 2, "runs: {runs}");
        assert_eq!(
            counts.drops.load(Ordering::SeqCst),
            runs,
            "every work dropped"
        );
        assert!(group.is_empty());
    });
}

#[test]
fn last_caller_leaves_while_a_new_caller_joins() {
    loom::model(|| {
        let group = Group::<u8, u8>::new();
        let gate = Arc::new(Gate::default());
        let counts = Arc::new(Counts::default());
        // A pending flight with one caller, dropped on another thread while a
        // new caller arrives here and a third thread opens the gate.
        let mut first = Box::pin(group.call_owned(1, gated_work(gate.clone(), counts.clone(), 8)));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let dropper = thread::spawn(move || drop(first));
        let opener = {
            let gate = gate.clone();
            thread::spawn(move || gate.open())
        };
        let second = loom::future::block_on(group.call(&1, gated_work(gate, counts.clone(), 4)));
        dropper.join().unwrap();
        opener.join().unwrap();
        let runs = counts.runs.load(Ordering::SeqCst);
        match second.value {
            // Joined the flight before its last caller left, and carried its
            // work on: it ran once.
            8 => assert_eq!(runs, 1),
            // Arrived after the flight was abandoned and its key freed: a
            // fresh flight, never the abandoned one's result.
            4 => assert_eq!(runs, 2),
            other => panic!("unexpected value {other}"),
        }
        assert_eq!(
            counts.drops.load(Ordering::SeqCst),
            runs,
            "every work dropped"
        );
        assert!(group.is_empty());
    });
}
