//! Random schedules of joins, polls, cancellations, panics, completions and
//! forgets, driven by hand on one thread. Checks, for every schedule:
//! - a caller that finds a live flight joins it, one that does not starts one;
//! - every caller that completes got the result of exactly the execution that
//!   was live when it joined (or that it started);
//! - no wake-up is lost: once every gate is open, polling only the callers
//!   that were woken completes them all;
//! - every started work is dropped exactly once and the group ends empty.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use proptest::prelude::*;
use singleflight::future::{Checked, Group};
use singleflight::{Error, Outcome};

const KEYS: u8 = 2;

/// What a gate lets its work do once opened.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Value,
    Panic,
}

/// A gate, shared by the harness and the work it holds back.
type Gate = Arc<Mutex<GateState>>;

/// What a call runs when it starts a flight.
type Make = Box<dyn FnOnce() -> Work + Send>;

#[derive(Default)]
struct GateState {
    ending: Option<Ending>,
    waker: Option<Waker>,
}

/// The work of execution `id`: waits for its gate, then returns `id` or panics.
struct Work {
    id: u64,
    gate: Gate,
    _dropped: DropCount,
}

struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Future for Work {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut gate = self.gate.lock().unwrap();
        match gate.ending {
            Some(Ending::Value) => Poll::Ready(self.id),
            Some(Ending::Panic) => panic!("exec {}", self.id),
            None => {
                gate.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Records whether its task was woken.
#[derive(Default)]
struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Call = Checked<'static, u8, u8, u64, std::collections::hash_map::RandomState, Make>;

struct Caller {
    key: u8,
    call: Pin<Box<Call>>,
    flag: Arc<Flag>,
    /// The execution this caller must get its result from.
    expected: Option<u64>,
}

#[derive(Debug, Clone)]
enum Op {
    Call(u8),
    Poll(usize),
    Drop(usize),
    Open(usize, bool),
    Forget(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Call),
        4 => any::<usize>().prop_map(Op::Poll),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, p)| Op::Open(i, p)),
        1 => (0..KEYS).prop_map(Op::Forget),
    ]
}

struct Harness {
    group: Group<u8, u64>,
    callers: Vec<Option<Caller>>,
    /// Gates of every execution started, by id.
    gates: HashMap<u64, Gate>,
    endings: HashMap<u64, Ending>,
    next_exec: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
    /// The model: the live (not forgotten, not ended, not abandoned) execution per key.
    live: HashMap<u8, u64>,
    /// The model: how many callers each execution still has.
    callers_of: HashMap<u64, usize>,
    /// Executions whose gates were created, to collect from `make` closures.
    started: Arc<Mutex<Vec<(u64, Gate)>>>,
}

impl Harness {
    fn new() -> Self {
        Self {
            group: Group::new(),
            callers: Vec::new(),
            gates: HashMap::new(),
            endings: HashMap::new(),
            next_exec: Arc::new(AtomicUsize::new(0)),
            drops: Arc::new(AtomicUsize::new(0)),
            live: HashMap::new(),
            callers_of: HashMap::new(),
            started: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn call(&mut self, key: u8) -> Result<(), TestCaseError> {
        let (next, drops, started) = (
            self.next_exec.clone(),
            self.drops.clone(),
            self.started.clone(),
        );
        let make: Make = Box::new(move || {
            let id = next.fetch_add(1, Ordering::SeqCst) as u64;
            let gate = Arc::new(Mutex::new(GateState::default()));
            started.lock().unwrap().push((id, gate.clone()));
            Work {
                id,
                gate,
                _dropped: DropCount(drops),
            }
        });
        let call = Box::pin(self.group.call_checked_owned(key, make));
        let index = self.callers.len();
        self.callers.push(Some(Caller {
            key,
            call,
            flag: Arc::default(),
            expected: None,
        }));
        // The first poll is where a call joins or starts its flight.
        self.poll(index)
    }

    fn poll(&mut self, index: usize) -> Result<(), TestCaseError> {
        let Some(caller) = self.callers.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        caller.flag.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(caller.flag.clone());
        let first = caller.expected.is_none();
        let key = caller.key;
        let polled = panic::catch_unwind(AssertUnwindSafe(|| {
            caller.call.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        let polled = match polled {
            Ok(polled) => polled,
            Err(_) => return Err(TestCaseError::fail("call_checked must not panic")),
        };
        let new: Vec<_> = self.started.lock().unwrap().drain(..).collect();
        if first {
            let expected = match self.live.get(&key) {
                Some(&live) => {
                    prop_assert!(
                        new.is_empty(),
                        "a call joined a live flight yet started work"
                    );
                    live
                }
                None => {
                    prop_assert_eq!(new.len(), 1, "a call with no live flight must start one");
                    let id = new[0].0;
                    self.live.insert(key, id);
                    id
                }
            };
            *self.callers_of.entry(expected).or_default() += 1;
            self.callers[index].as_mut().unwrap().expected = Some(expected);
        } else {
            prop_assert!(new.is_empty(), "work started by a call already under way");
        }
        for (id, gate) in new {
            self.gates.insert(id, gate);
        }
        if let Poll::Ready(result) = polled {
            let caller = self.callers[index].take().unwrap();
            self.check(caller, result)?;
        }
        Ok(())
    }

    fn check(
        &mut self,
        caller: Caller,
        result: Result<Outcome<u64>, Error>,
    ) -> Result<(), TestCaseError> {
        let expected = caller.expected.unwrap();
        // The flight has ended: nobody joins it any more.
        if self.live.get(&caller.key) == Some(&expected) {
            self.live.remove(&caller.key);
        }
        *self.callers_of.get_mut(&expected).unwrap() -= 1;
        match (self.endings.get(&expected), result) {
            (Some(Ending::Value), Ok(out)) => prop_assert_eq!(out.value, expected),
            (Some(Ending::Panic), Err(Error::Panicked(err))) => {
                prop_assert_eq!(err.message(), format!("exec {expected}"))
            }
            (ending, result) => {
                return Err(TestCaseError::fail(format!(
                    "execution {expected} ended {ending:?} but its caller got {:?}",
                    result.map(|o| o.value).map_err(|e| e.to_string())
                )));
            }
        }
        Ok(())
    }

    fn drop_caller(&mut self, index: usize) {
        let Some(caller) = self.callers.get_mut(index).and_then(Option::take) else {
            return;
        };
        let (key, expected) = (caller.key, caller.expected.unwrap());
        drop(caller);
        let left = self.callers_of.get_mut(&expected).unwrap();
        *left -= 1;
        if *left == 0 && self.live.get(&key) == Some(&expected) {
            // Its last caller left: the flight is abandoned and its key freed.
            self.live.remove(&key);
        }
    }

    fn open(&mut self, pick: usize, panic: bool) {
        let mut closed: Vec<_> = self
            .gates
            .iter()
            .filter(|(id, _)| !self.endings.contains_key(id))
            .map(|(id, gate)| (*id, gate.clone()))
            .collect();
        if closed.is_empty() {
            return;
        }
        closed.sort_by_key(|(id, _)| *id);
        let (id, gate) = closed.swap_remove(pick % closed.len());
        let ending = if panic { Ending::Panic } else { Ending::Value };
        self.endings.insert(id, ending);
        let waker = {
            let mut gate = gate.lock().unwrap();
            gate.ending = Some(ending);
            gate.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn live_index(&self, pick: usize) -> Option<usize> {
        let live: Vec<_> = (0..self.callers.len())
            .filter(|&i| self.callers[i].is_some())
            .collect();
        (!live.is_empty()).then(|| live[pick % live.len()])
    }

    /// Opens every gate, then polls only woken callers until none is woken.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        loop {
            let before = self.endings.len();
            for pick in 0..self.gates.len() {
                self.open(pick, false);
            }
            let woken: Vec<_> = (0..self.callers.len())
                .filter(|&i| {
                    self.callers[i]
                        .as_ref()
                        .is_some_and(|c| c.flag.0.load(Ordering::SeqCst))
                })
                .collect();
            if woken.is_empty() && self.endings.len() == before {
                break;
            }
            for index in woken {
                self.poll(index)?;
            }
        }
        let stuck: Vec<_> = self.callers.iter().flatten().map(|c| c.expected).collect();
        prop_assert!(
            stuck.is_empty(),
            "callers never woken: waiting on {:?}",
            stuck
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_caller_gets_the_result_of_the_execution_it_joined(ops in prop::collection::vec(op(), 1..60)) {
        let quiet = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let mut h = Harness::new();
        let result = (|| {
            for op in ops {
                match op {
                    Op::Call(key) => h.call(key)?,
                    Op::Poll(pick) => if let Some(i) = h.live_index(pick) { h.poll(i)? },
                    Op::Drop(pick) => if let Some(i) = h.live_index(pick) { h.drop_caller(i) },
                    Op::Open(pick, panic) => h.open(pick, panic),
                    Op::Forget(key) => {
                        let forgotten = h.group.forget(&key);
                        prop_assert_eq!(forgotten, h.live.remove(&key).is_some());
                    }
                }
            }
            h.drain()?;
            let started = h.next_exec.load(Ordering::SeqCst);
            prop_assert_eq!(h.drops.load(Ordering::SeqCst), started, "every work dropped once");
            prop_assert!(h.group.is_empty(), "the group holds {} flights", h.group.len());
            Ok(())
        })();
        panic::set_hook(quiet);
        result?;
    }
}
