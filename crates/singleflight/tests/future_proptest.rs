//! Random schedules of joins, polls, cancellations, completions, errors,
//! panics and forgets on the async group, driven by hand on one thread and
//! checked against a model of the flight engine: which flight is live per
//! key, who drives each flight's work, who waits on it, and whether it waits
//! for a follower to take its work over or to claim its retry.
//!
//! Two properties drive it: `call_checked_owned` on a group without policies
//! (values and panics), and `try_call_owned` (values, errors and panics),
//! mostly on a group with `ErrorPolicy::RetryOnce`. Checks, for every
//! schedule:
//! - a caller that finds a live flight joins it, one that does not starts
//!   one; work starts only then, or when a follower claims a retry;
//! - every poll completes exactly when the model says, and every caller gets
//!   the result of the execution the model says: its flight's last one; the
//!   driver of a failed execution that is not itself a retry and still has
//!   followers gets its own error, and its followers, with every caller that
//!   joins meanwhile, the result of the retry that the first of them to be
//!   polled runs, whatever it is (no second retry, no retry after a panic);
//! - every caller of one failed execution gets the same `Arc`; `shared` is
//!   set for every caller of a flight that ever had a follower;
//! - after every step, `contains`, `waiters` and `len` agree with the model,
//!   and every work that ended or was cancelled has been dropped, once;
//! - no wake-up is lost: once every gate is open, polling only the callers
//!   that were woken completes them all;
//! - every started work is dropped exactly once and the group ends empty.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Wake, Waker};

use futures::FutureExt as _;
use proptest::prelude::*;
use singleflight::future::Group;
use singleflight::policy::ErrorPolicy;
use singleflight::{Error, Outcome, Source};

const KEYS: u8 = 2;

/// What a gate lets its work do once opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Value,
    Error,
    Panic,
}

/// The error of execution `.0`.
#[derive(Debug)]
struct Failed(u64);

/// A gate, shared by the harness and the work it holds back.
type Gate = Arc<Mutex<GateState>>;

#[derive(Default)]
struct GateState {
    ending: Option<Ending>,
    waker: Option<Waker>,
}

/// The work of execution `id`: waits for its gate, then returns `id`, fails
/// with `Failed(id)` or panics with "exec {id}".
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
    type Output = Result<u64, Failed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut gate = self.gate.lock().unwrap();
        match gate.ending {
            Some(Ending::Value) => Poll::Ready(Ok(self.id)),
            Some(Ending::Error) => Poll::Ready(Err(Failed(self.id))),
            Some(Ending::Panic) => panic!("exec {}", self.id),
            None => {
                gate.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Silences the panics of the works ("exec N"), once for the whole binary:
/// swapping the hook per test case would race with the other property.
fn quiet_work_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if !message.is_some_and(|m| m.starts_with("exec ")) {
                default(info);
            }
        }));
    });
}

/// The message of a panic payload.
fn message_of(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "<not a string>".to_owned())
}

/// Records whether its task was woken.
#[derive(Default)]
struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How a call ended, whichever entry point made it.
#[derive(Debug)]
enum Got {
    Value(Outcome<u64>),
    Error(Arc<Failed>),
    Panic(String),
}

/// A call's future, its output shaped as `Got` (`Err`: an end no schedule
/// may produce, such as `call_checked` failing other than by a panic).
type CallFuture = Pin<Box<dyn Future<Output = Result<Got, String>>>>;

/// Which entry point and which group a schedule runs on.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `call_checked_owned` on a group without policies.
    Checked,
    /// `try_call_owned`, with `ErrorPolicy::RetryOnce` if `retry`.
    Fallible { retry: bool },
}

struct Caller {
    key: u8,
    call: CallFuture,
    flag: Arc<Flag>,
    /// The model's flight of this caller, from its first poll on.
    flight: Option<usize>,
}

/// The model of a flight: one slot of the group's table.
#[derive(Debug)]
struct Flight {
    key: u8,
    /// Its executions: the first, then the retry, if any.
    execs: Vec<u64>,
    /// The callers it still counts: its driver, if any, and the followers
    /// that neither left nor took its end yet.
    callers: BTreeSet<usize>,
    /// The caller that owns and polls the work.
    driver: Option<usize>,
    /// A follower ever joined: every caller gets `shared`.
    followed: bool,
    /// Its driver left with followers: the first of them polled drives.
    orphaned: bool,
    /// Its work failed with followers: the first of them polled retries.
    retry_open: bool,
    /// It is a retry already.
    retried: bool,
    end: Option<End>,
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// Its last execution ended so: every caller still waiting gets that.
    Ended(Ending, u64),
    /// Its last caller left: cancelled.
    Abandoned,
}

/// What the model expects a poll to complete with.
#[derive(Debug)]
struct Expect {
    ending: Ending,
    exec: u64,
    shared: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Call(u8),
    Poll(usize),
    Drop(usize),
    Open(usize, Ending),
    Forget(u8),
}

fn ending(mode: Mode) -> BoxedStrategy<Ending> {
    match mode {
        Mode::Checked => prop_oneof![Just(Ending::Value), Just(Ending::Panic)].boxed(),
        Mode::Fallible { .. } => prop_oneof![
            2 => Just(Ending::Value),
            3 => Just(Ending::Error),
            1 => Just(Ending::Panic),
        ]
        .boxed(),
    }
}

fn op(mode: Mode) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Call),
        4 => any::<usize>().prop_map(Op::Poll),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => (any::<usize>(), ending(mode)).prop_map(|(i, e)| Op::Open(i, e)),
        1 => (0..KEYS).prop_map(Op::Forget),
    ]
}

struct Harness {
    mode: Mode,
    group: Group<u8, u64>,
    callers: Vec<Option<Caller>>,
    /// Gates of every execution started, by id.
    gates: HashMap<u64, Gate>,
    endings: HashMap<u64, Ending>,
    next_exec: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
    /// Executions whose gates were created, to collect from `make` closures.
    started: Arc<Mutex<Vec<(u64, Gate)>>>,
    /// The model: every flight, by id.
    flights: Vec<Flight>,
    /// The model: the live (not forgotten, not ended, not abandoned) flight per key.
    live: HashMap<u8, usize>,
    /// The model: works that ended or were cancelled, hence dropped.
    dropped: usize,
    /// The error of each failed execution, as its first caller got it.
    errors: HashMap<u64, Arc<Failed>>,
}

impl Harness {
    fn new(mode: Mode) -> Self {
        let group = match mode {
            Mode::Fallible { retry: true } => Group::builder()
                .error_policy(ErrorPolicy::RetryOnce)
                .build(),
            Mode::Checked | Mode::Fallible { retry: false } => Group::new(),
        };
        Self {
            mode,
            group,
            callers: Vec::new(),
            gates: HashMap::new(),
            endings: HashMap::new(),
            next_exec: Arc::new(AtomicUsize::new(0)),
            drops: Arc::new(AtomicUsize::new(0)),
            started: Arc::new(Mutex::new(Vec::new())),
            flights: Vec::new(),
            live: HashMap::new(),
            dropped: 0,
            errors: HashMap::new(),
        }
    }

    fn retry(&self) -> bool {
        matches!(self.mode, Mode::Fallible { retry: true })
    }

    fn call(&mut self, key: u8) -> Result<(), TestCaseError> {
        let (next, drops, started) = (
            self.next_exec.clone(),
            self.drops.clone(),
            self.started.clone(),
        );
        let work = move || {
            let id = next.fetch_add(1, Ordering::SeqCst) as u64;
            let gate = Arc::new(Mutex::new(GateState::default()));
            started.lock().unwrap().push((id, gate.clone()));
            Work {
                id,
                gate,
                _dropped: DropCount(drops),
            }
        };
        let call: CallFuture = match self.mode {
            Mode::Checked => Box::pin(
                self.group
                    .call_checked_owned(key, move || {
                        work().map(|r| r.expect("no error ends a checked schedule"))
                    })
                    .map(|result| match result {
                        Ok(out) => Ok(Got::Value(out)),
                        Err(Error::Panicked(p)) => Ok(Got::Panic(p.message().to_owned())),
                        Err(other) => Err(format!("call_checked failed with {other}")),
                    }),
            ),
            Mode::Fallible { .. } => Box::pin(self.group.try_call_owned(key, work).map(|result| {
                Ok(match result {
                    Ok(out) => Got::Value(out),
                    Err(error) => Got::Error(error),
                })
            })),
        };
        let index = self.callers.len();
        self.callers.push(Some(Caller {
            key,
            call,
            flag: Arc::default(),
            flight: None,
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
        let key = caller.key;
        let polled = panic::catch_unwind(AssertUnwindSafe(|| {
            caller.call.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        let polled = match (polled, self.mode) {
            (Ok(Poll::Pending), _) => Poll::Pending,
            (Ok(Poll::Ready(Ok(got))), _) => Poll::Ready(got),
            (Ok(Poll::Ready(Err(unexpected))), _) => return Err(TestCaseError::fail(unexpected)),
            (Err(_), Mode::Checked) => {
                return Err(TestCaseError::fail("call_checked must not panic"));
            }
            // `try_call` re-raises the work's panic.
            (Err(payload), Mode::Fallible { .. }) => Poll::Ready(Got::Panic(message_of(&*payload))),
        };
        let mut new: Vec<u64> = Vec::new();
        for (id, gate) in self.started.lock().unwrap().drain(..) {
            self.gates.insert(id, gate);
            new.push(id);
        }
        // The model's turn: where the caller stands in its flight.
        let f = match self.callers[index].as_ref().unwrap().flight {
            Some(f) => f,
            None => {
                let f = match self.live.get(&key) {
                    Some(&f) => {
                        let flight = &mut self.flights[f];
                        flight.callers.insert(index);
                        flight.followed = true;
                        f
                    }
                    None => {
                        prop_assert_eq!(new.len(), 1, "a call with no live flight must start one");
                        let f = self.flights.len();
                        self.flights.push(Flight {
                            key,
                            execs: vec![new.remove(0)],
                            callers: BTreeSet::from([index]),
                            driver: Some(index),
                            followed: false,
                            orphaned: false,
                            retry_open: false,
                            retried: false,
                            end: None,
                        });
                        self.live.insert(key, f);
                        f
                    }
                };
                self.callers[index].as_mut().unwrap().flight = Some(f);
                f
            }
        };
        let retries = self.retry();
        let flight = &mut self.flights[f];
        if flight.end.is_none() && flight.driver != Some(index) {
            if flight.orphaned {
                // It takes the work over.
                flight.orphaned = false;
                flight.driver = Some(index);
            } else if flight.retry_open {
                prop_assert_eq!(
                    new.len(),
                    1,
                    "the follower that claims the retry must run its own work"
                );
                flight.execs.push(new.remove(0));
                flight.retry_open = false;
                flight.driver = Some(index);
            }
        }
        prop_assert!(new.is_empty(), "work {:?} started out of turn", new);
        let expect = if flight.driver == Some(index) {
            let exec = *flight.execs.last().unwrap();
            match self.endings.get(&exec) {
                None => None,
                Some(&ending) => {
                    // The work ended and was dropped.
                    self.dropped += 1;
                    flight.driver = None;
                    flight.callers.remove(&index);
                    let retry = retries
                        && ending == Ending::Error
                        && !flight.retried
                        && !flight.callers.is_empty();
                    if retry {
                        // The driver keeps its own failure; the flight keeps
                        // its slot for the retry.
                        flight.retried = true;
                        flight.retry_open = true;
                    } else {
                        flight.end = Some(End::Ended(ending, exec));
                        if self.live.get(&key) == Some(&f) {
                            self.live.remove(&key);
                        }
                    }
                    Some(Expect {
                        ending,
                        exec,
                        shared: flight.followed,
                    })
                }
            }
        } else if let Some(End::Ended(ending, exec)) = flight.end {
            flight.callers.remove(&index);
            Some(Expect {
                ending,
                exec,
                shared: true,
            })
        } else {
            None
        };
        match (expect, polled) {
            (None, Poll::Pending) => Ok(()),
            (Some(expect), Poll::Ready(got)) => {
                self.callers[index] = None;
                self.check(&expect, got)
            }
            (expect, polled) => Err(TestCaseError::fail(format!(
                "caller {index} (flight {:?}) expected {expect:?}, polled {polled:?}",
                self.flights[f]
            ))),
        }
    }

    fn check(&mut self, expect: &Expect, got: Got) -> Result<(), TestCaseError> {
        let exec = expect.exec;
        match (expect.ending, got) {
            (Ending::Value, Got::Value(out)) => {
                prop_assert_eq!(out.value, exec);
                prop_assert_eq!(out.shared, expect.shared, "shared flag of exec {}", exec);
                prop_assert_eq!(out.source, Source::Flight);
            }
            (Ending::Error, Got::Error(error)) => {
                prop_assert_eq!(error.0, exec);
                match self.errors.get(&exec) {
                    Some(first) => prop_assert!(
                        Arc::ptr_eq(first, &error),
                        "the callers of exec {} got different Arcs",
                        exec
                    ),
                    None => {
                        self.errors.insert(exec, error);
                    }
                }
            }
            (Ending::Panic, Got::Panic(message)) => {
                prop_assert_eq!(message, format!("exec {exec}"));
            }
            (_, got) => {
                return Err(TestCaseError::fail(format!(
                    "expected {expect:?}, got {got:?}"
                )));
            }
        }
        Ok(())
    }

    fn drop_caller(&mut self, index: usize) {
        let Some(caller) = self.callers.get_mut(index).and_then(Option::take) else {
            return;
        };
        let f = caller.flight.unwrap();
        drop(caller);
        let flight = &mut self.flights[f];
        flight.callers.remove(&index);
        if flight.end.is_some() {
            return;
        }
        let abandoned = if flight.driver == Some(index) {
            flight.driver = None;
            if flight.callers.is_empty() {
                // Cancelled: the work is dropped with its driver.
                self.dropped += 1;
                true
            } else {
                // The work waits for a follower to take it over.
                flight.orphaned = true;
                false
            }
        } else if flight.driver.is_none() && flight.callers.is_empty() {
            // The last follower of a flight whose work or retry waited for
            // one: the orphaned work is cancelled.
            if flight.orphaned {
                self.dropped += 1;
            }
            true
        } else {
            false
        };
        if abandoned {
            flight.end = Some(End::Abandoned);
            flight.orphaned = false;
            flight.retry_open = false;
            let key = flight.key;
            if self.live.get(&key) == Some(&f) {
                self.live.remove(&key);
            }
        }
    }

    fn open(&mut self, pick: usize, ending: Ending) {
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

    /// The group's table agrees with the model, and works were dropped
    /// exactly when they ended or were cancelled.
    fn agree(&self) -> Result<(), TestCaseError> {
        for key in 0..KEYS {
            let live = self.live.get(&key).map(|&f| &self.flights[f]);
            prop_assert_eq!(
                self.group.contains(&key),
                live.is_some(),
                "contains({})",
                key
            );
            let waiters = live.map_or(0, |f| f.callers.len().saturating_sub(1));
            prop_assert_eq!(self.group.waiters(&key), waiters, "waiters({})", key);
        }
        let flights = self.flights.iter().filter(|f| f.end.is_none()).count();
        prop_assert_eq!(self.group.len(), flights, "flights in the table");
        prop_assert_eq!(
            self.drops.load(Ordering::SeqCst),
            self.dropped,
            "works dropped"
        );
        Ok(())
    }

    /// Opens every gate, then polls only woken callers until none is woken.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        loop {
            let before = self.endings.len();
            for pick in 0..self.gates.len() {
                self.open(pick, Ending::Value);
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
        let stuck: Vec<_> = self
            .callers
            .iter()
            .flatten()
            .map(|c| c.flight.map(|f| &self.flights[f]))
            .collect();
        prop_assert!(
            stuck.is_empty(),
            "callers never woken: waiting on {:?}",
            stuck
        );
        Ok(())
    }

    fn run(&mut self, ops: Vec<Op>) -> Result<(), TestCaseError> {
        for op in ops {
            match op {
                Op::Call(key) => self.call(key)?,
                Op::Poll(pick) => {
                    if let Some(i) = self.live_index(pick) {
                        self.poll(i)?;
                    }
                }
                Op::Drop(pick) => {
                    if let Some(i) = self.live_index(pick) {
                        self.drop_caller(i);
                    }
                }
                Op::Open(pick, ending) => self.open(pick, ending),
                Op::Forget(key) => {
                    let forgotten = self.group.forget(&key);
                    prop_assert_eq!(forgotten, self.live.remove(&key).is_some());
                }
            }
            self.agree()?;
        }
        self.drain()?;
        self.agree()?;
        let started = self.next_exec.load(Ordering::SeqCst);
        prop_assert_eq!(
            self.drops.load(Ordering::SeqCst),
            started,
            "every work dropped once"
        );
        prop_assert!(
            self.group.is_empty(),
            "the group holds {} flights",
            self.group.len()
        );
        Ok(())
    }
}

fn run(mode: Mode, ops: Vec<Op>) -> Result<(), TestCaseError> {
    quiet_work_panics();
    Harness::new(mode).run(ops)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_caller_gets_the_result_of_the_execution_it_joined(
        ops in prop::collection::vec(op(Mode::Checked), 1..60),
    ) {
        run(Mode::Checked, ops)?;
    }

    #[test]
    fn a_failed_execution_hands_its_followers_to_one_retry(
        retry in prop::bool::weighted(0.75),
        ops in prop::collection::vec(op(Mode::Fallible { retry: true }), 1..60),
    ) {
        run(Mode::Fallible { retry }, ops)?;
    }
}
