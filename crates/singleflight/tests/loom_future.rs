//! loom models of the async group's races: join against finish, the last
//! caller leaving against a new caller joining, the driver leaving while a
//! follower waits, a failed driver opening its retry (`ErrorPolicy::RetryOnce`)
//! against a polled follower and against one dropped before it claims, and
//! the error of fallible work reaching two callers behind one `Arc`.
//!
//! Run with `RUSTFLAGS="--cfg singleflight_loom" cargo test --release --test loom_future`.
#![cfg(singleflight_loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use singleflight::future::Group;
use singleflight::policy::ErrorPolicy;

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

/// Explores `f` with at most 5 preemptions (fewer if `LOOM_MAX_PREEMPTIONS`
/// says so): about a second for a model of three parties, which unbounded
/// takes ten minutes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(5, |n| n.min(5)));
    builder.check(f);
}

/// The error of the failing work; not `Clone`, which `try_call` allows.
#[derive(Debug, PartialEq)]
struct Down(u8);

/// How often a work was made and dropped, counted out of loom's sight: the
/// library marks a flight's work as running in a std thread-local, and loom
/// runs every model thread on one OS thread, so a work that yielded to loom
/// while it runs (a loom atomic or lock) would make another model thread's
/// call look re-entrant (`driver_leaves_while_a_follower_waits` trips on
/// that). These works do nothing loom sees.
#[derive(Default)]
struct Tally {
    made: std::sync::atomic::AtomicUsize,
    dropped: std::sync::atomic::AtomicUsize,
}

impl Tally {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A fallible work: pending on its first poll if `stalls` (it asks for no
/// wake-up: the model polls it again by hand), then done with `result`.
struct Stalls {
    result: Option<Result<u8, Down>>,
    stalls: bool,
    tally: std::sync::Arc<Tally>,
}

impl Future for Stalls {
    type Output = Result<u8, Down>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::take(&mut self.stalls) {
            return Poll::Pending;
        }
        Poll::Ready(self.result.take().expect("polled after it ended"))
    }
}

impl Drop for Stalls {
    fn drop(&mut self) {
        self.tally.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn work(
    tally: &std::sync::Arc<Tally>,
    result: Result<u8, Down>,
    stalls: bool,
) -> impl FnOnce() -> Stalls + Send + 'static {
    let tally = tally.clone();
    move || {
        tally.made.fetch_add(1, Ordering::SeqCst);
        Stalls {
            result: Some(result),
            stalls,
            tally,
        }
    }
}

fn poll_once<F: Future + Unpin>(call: &mut F) -> Poll<F::Output> {
    Pin::new(call).poll(&mut Context::from_waker(Waker::noop()))
}

fn retry_once() -> Group<u8, u8> {
    Group::builder()
        .error_policy(ErrorPolicy::RetryOnce)
        .build()
}

#[test]
fn retry_once_a_failed_driver_races_a_polled_follower() {
    model(|| {
        let group = retry_once();
        let (failing, retrying) = (Tally::new(), Tally::new());
        // The driver leads: its work stalls once, then fails.
        let mut driver = group.try_call_owned(1, work(&failing, Err(Down(9)), true));
        assert!(poll_once(&mut driver).is_pending());
        let follower = {
            let (group, retrying) = (group.clone(), retrying.clone());
            thread::spawn(move || {
                loom::future::block_on(group.try_call(&1, work(&retrying, Ok(2), false)))
                    .map(|o| o.value)
                    .map_err(|e| e.0)
            })
        };
        let mine = loom::future::block_on(driver);
        let theirs = follower.join().unwrap();
        // The driver keeps its own failure. The follower never gets it: it
        // joined and was woken to claim the retry, or came after the flight
        // ended and ran alone; either way its own work ran, once.
        assert_eq!(*mine.unwrap_err(), Down(9));
        assert_eq!(theirs, Ok(2));
        assert_eq!((failing.made(), failing.dropped()), (1, 1));
        assert_eq!((retrying.made(), retrying.dropped()), (1, 1));
        assert!(group.is_empty());
    });
}

#[test]
fn retry_once_a_failed_driver_races_a_follower_dropped_before_it_claims() {
    model(|| {
        let group = retry_once();
        let failing = Tally::new();
        let (leaving, waiting) = (Tally::new(), Tally::new());
        let mut driver = group.try_call_owned(1, work(&failing, Err(Down(9)), true));
        assert!(poll_once(&mut driver).is_pending());
        // Polled once (it joins, or claims the retry, or runs alone), then
        // dropped, as a cancelled task would be: it may be the one woken to
        // claim the retry, and must pass that turn on.
        let leaver = {
            let (group, leaving) = (group.clone(), leaving.clone());
            thread::spawn(move || {
                let mut call = group.try_call_owned(1, work(&leaving, Ok(3), false));
                let polled = poll_once(&mut call);
                drop(call);
                polled.map(|r| r.map(|o| o.value).map_err(|e| e.0))
            })
        };
        let waiter = {
            let (group, waiting) = (group.clone(), waiting.clone());
            thread::spawn(move || {
                loom::future::block_on(group.try_call(&1, work(&waiting, Ok(2), false)))
                    .map(|o| o.value)
                    .map_err(|e| e.0)
            })
        };
        let mine = loom::future::block_on(driver);
        let left = leaver.join().unwrap();
        let waited = waiter.join().unwrap();
        assert_eq!(*mine.unwrap_err(), Down(9));
        match left {
            // Joined and left: its work was never made.
            Poll::Pending => assert_eq!(leaving.made(), 0),
            // Claimed the retry, or came after the flight, and its own work
            // ran at once.
            Poll::Ready(Ok(3)) => assert_eq!(leaving.made(), 1),
            // Joined the retry the waiter claimed, which ended at once.
            Poll::Ready(Ok(2)) => assert_eq!((leaving.made(), waiting.made()), (0, 1)),
            other => panic!("unexpected outcome of the dropped caller {other:?}"),
        }
        match waited {
            // The waiter joined the retry the dropped caller ran.
            Ok(3) => assert_eq!((leaving.made(), waiting.made()), (1, 0)),
            // It claimed the retry, or ran alone.
            Ok(2) => assert_eq!(waiting.made(), 1),
            other => panic!("the waiter got {other:?}"),
        }
        for tally in [&failing, &leaving, &waiting] {
            assert_eq!(tally.dropped(), tally.made(), "every work dropped");
        }
        assert!(group.is_empty(), "the flight outlived its callers");
    });
}

#[test]
fn a_failed_flight_hands_both_callers_one_arc() {
    model(|| {
        let group = Group::<u8, u8>::new();
        let (failing, unused) = (Tally::new(), Tally::new());
        let mut driver = group.try_call_owned(1, work(&failing, Err(Down(9)), true));
        assert!(poll_once(&mut driver).is_pending());
        // The follower joins while the driver's work stalls, then tells the
        // driver to go on, and waits.
        let joined = Arc::new((Mutex::new(false), Condvar::new()));
        let follower = {
            let (group, unused, joined) = (group.clone(), unused.clone(), joined.clone());
            thread::spawn(move || {
                let mut call = group.try_call_owned(1, work(&unused, Ok(2), false));
                assert!(
                    poll_once(&mut call).is_pending(),
                    "the flight runs: it joins"
                );
                *joined.0.lock().unwrap() = true;
                joined.1.notify_one();
                loom::future::block_on(call)
            })
        };
        let mut ready = joined.0.lock().unwrap();
        while !*ready {
            ready = joined.1.wait(ready).unwrap();
        }
        drop(ready);
        let mine = loom::future::block_on(driver).unwrap_err();
        let theirs = follower.join().unwrap().unwrap_err();
        assert!(std::sync::Arc::ptr_eq(&mine, &theirs), "one error, one Arc");
        assert_eq!(*mine, Down(9));
        assert_eq!((failing.made(), failing.dropped()), (1, 1));
        assert_eq!(unused.made(), 0, "the follower's work was never made");
        assert!(group.is_empty());
    });
}
