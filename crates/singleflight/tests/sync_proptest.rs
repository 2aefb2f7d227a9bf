//! Random rounds on the blocking group, with real threads. Each round runs
//! one flight on one key: a leader whose work waits on a gate, 0 to 5
//! followers that join it (the test waits until `waiters` counts them all
//! before it opens the gate, so the schedule is deterministic), then the
//! leader's work ends with a value, an error (`try_call`) or a panic, on a
//! group with or without `ErrorPolicy::RetryOnce`. When a retry is due, one
//! follower's own work runs it, on a second gate, and 0 to 2 late callers
//! join it before that gate opens with a value, an error or a panic too.
//! Checks, for every round:
//! - how many works ran, and whose: the leader's, then, only after an error
//!   with followers under `RetryOnce`, one follower's;
//! - every caller's result: the value, the error (the same `Arc` for every
//!   caller of one failed execution) or the panic's message of the
//!   execution it must get: the leader its own, every other caller the
//!   retry's if there was one, else the leader's; no retry after a panic;
//! - `shared`: for every caller, unless the leader was alone;
//! - the group holds nothing for the key once the round is over.

use std::any::Any;
use std::collections::HashMap;
use std::panic;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use singleflight::policy::ErrorPolicy;
use singleflight::sync::Group;
use singleflight::{Outcome, Source};

/// How long a round may wait for a thread to reach a point or to end: a
/// bound on a hang, not a timing of the code.
const LIMIT: Duration = Duration::from_secs(10);

/// How a work ends once its gate opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Value,
    Error,
    Panic,
}

/// The error of the work of caller `.0`.
#[derive(Debug)]
struct Failed(u64);

#[derive(Clone, Debug)]
struct Round {
    key: u8,
    /// The round runs on the group with `ErrorPolicy::RetryOnce`.
    retry: bool,
    followers: u64,
    leader: Ending,
    /// How the retry's work ends, if one runs.
    retry_ending: Ending,
    /// Callers that join while the retry runs, if one does.
    late: u64,
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        2 => Just(Ending::Value),
        3 => Just(Ending::Error),
        1 => Just(Ending::Panic),
    ]
}

fn round() -> impl Strategy<Value = Round> {
    (0..3u8, any::<bool>(), 0..6u64, ending(), ending(), 0..3u64).prop_map(
        |(key, retry, followers, leader, retry_ending, late)| Round {
            key,
            retry,
            followers,
            leader,
            retry_ending,
            late,
        },
    )
}

/// Where works wait until the test lets them end.
#[derive(Default)]
struct Gate {
    ending: Mutex<Option<Ending>>,
    opened: Condvar,
}

impl Gate {
    fn open(&self, ending: Ending) {
        self.ending.lock().unwrap().get_or_insert(ending);
        self.opened.notify_all();
    }

    fn wait(&self) -> Ending {
        let mut ending = self.ending.lock().unwrap();
        loop {
            if let Some(ending) = *ending {
                return ending;
            }
            ending = self.opened.wait(ending).unwrap();
        }
    }
}

/// Opens its gates when dropped, so that a round that fails early leaves no
/// thread waiting on them.
struct OpenOnDrop(Vec<Arc<Gate>>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        for gate in &self.0 {
            gate.open(Ending::Value);
        }
    }
}

/// Silences the panics of the works ("exec N"), once for the whole binary.
fn quiet_work_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !message_of(info.payload()).starts_with("exec ") {
                default(info);
            }
        }));
    });
}

fn message_of(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "<not a string>".to_owned())
}

/// What a caller's thread ended with.
type Got = thread::Result<Result<Outcome<u64>, Arc<Failed>>>;

/// Starts caller `id` on `key`: its work records that it ran, waits for
/// `gate`, and ends as the gate says, with `id` for its value, its error or
/// its panic's message.
fn spawn_call(
    group: &Arc<Group<u8, u64>>,
    key: u8,
    id: u64,
    gate: &Arc<Gate>,
    ran: &Arc<Mutex<Vec<u64>>>,
) -> JoinHandle<Result<Outcome<u64>, Arc<Failed>>> {
    let (group, gate, ran) = (group.clone(), gate.clone(), ran.clone());
    thread::spawn(move || {
        group.try_call(&key, || {
            ran.lock().unwrap().push(id);
            match gate.wait() {
                Ending::Value => Ok(id),
                Ending::Error => Err(Failed(id)),
                Ending::Panic => panic!("exec {id}"),
            }
        })
    })
}

/// Waits until `done`, polling, for at most `LIMIT`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), TestCaseError> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > LIMIT {
            return Err(TestCaseError::fail(format!("not within {LIMIT:?}: {what}")));
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Joins `caller`, failing if it does not end within `LIMIT`.
fn join(caller: JoinHandle<Result<Outcome<u64>, Arc<Failed>>>) -> Result<Got, TestCaseError> {
    wait_until("a caller returns", || caller.is_finished())?;
    Ok(caller.join())
}

/// The errors each failed execution reached its callers with.
type Errors = HashMap<u64, Arc<Failed>>;

/// Checks that `got` is the end of execution `exec`, which ended so.
fn check(
    who: &str,
    got: Got,
    ending: Ending,
    exec: u64,
    shared: bool,
    errors: &mut Errors,
) -> Result<(), TestCaseError> {
    match (ending, got) {
        (Ending::Value, Ok(Ok(out))) => {
            prop_assert_eq!(out.value, exec, "{}'s value", who);
            prop_assert_eq!(out.shared, shared, "{}'s shared flag", who);
            prop_assert_eq!(out.source, Source::Flight, "{}'s source", who);
        }
        (Ending::Error, Ok(Err(error))) => {
            prop_assert_eq!(error.0, exec, "{}'s error", who);
            let first = errors.entry(exec).or_insert_with(|| error.clone());
            prop_assert!(
                Arc::ptr_eq(first, &error),
                "{} got another Arc than the other callers of exec {}",
                who,
                exec
            );
        }
        (Ending::Panic, Err(payload)) => {
            prop_assert_eq!(
                message_of(&*payload),
                format!("exec {exec}"),
                "{}'s panic",
                who
            );
        }
        (ending, got) => {
            let got = match got {
                Ok(Ok(out)) => format!("value {}", out.value),
                Ok(Err(error)) => format!("error {}", error.0),
                Err(payload) => format!("panic {:?}", message_of(&*payload)),
            };
            return Err(TestCaseError::fail(format!(
                "{who} expected {ending:?} of exec {exec}, got {got}"
            )));
        }
    }
    Ok(())
}

/// Plays `round` on `group` and checks it.
fn play(group: &Arc<Group<u8, u64>>, round: &Round) -> Result<(), TestCaseError> {
    let Round { key, followers, .. } = *round;
    let gate = Arc::new(Gate::default());
    let retry_gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(vec![gate.clone(), retry_gate.clone()]);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let count = || ran.lock().unwrap().len();

    let leader = spawn_call(group, key, 0, &gate, &ran);
    wait_until("the leader's work starts", || count() == 1)?;
    let mut callers: Vec<_> = (1..=followers)
        .map(|id| spawn_call(group, key, id, &retry_gate, &ran))
        .collect();
    wait_until("every follower joins", || {
        group.waiters(&key) == followers as usize
    })?;
    gate.open(round.leader);

    let retried = round.retry && round.leader == Ending::Error && followers > 0;
    if retried {
        wait_until("a follower runs the retry", || count() == 2)?;
        let late = followers + 1..=followers + round.late;
        callers.extend(late.map(|id| spawn_call(group, key, id, &retry_gate, &ran)));
        // The retry's driver is no waiter.
        let waiting = (followers - 1 + round.late) as usize;
        wait_until("every late caller joins the retry", || {
            group.waiters(&key) == waiting
        })?;
    }
    retry_gate.open(round.retry_ending);

    let leader = join(leader)?;
    let mut got = Vec::new();
    for caller in callers {
        got.push(join(caller)?);
    }
    let ran = ran.lock().unwrap().clone();
    let mut errors = Errors::new();
    if retried {
        prop_assert_eq!(ran.len(), 2, "works that ran: {:?}", ran);
        let retry = ran[1];
        prop_assert!(
            (1..=followers).contains(&retry),
            "the retry ran the work of {}",
            retry
        );
        check("the leader", leader, Ending::Error, 0, false, &mut errors)?;
        for (i, got) in got.into_iter().enumerate() {
            let who = format!("caller {}", i + 1);
            check(&who, got, round.retry_ending, retry, true, &mut errors)?;
        }
    } else {
        prop_assert_eq!(&ran, &[0], "works that ran");
        check(
            "the leader",
            leader,
            round.leader,
            0,
            followers > 0,
            &mut errors,
        )?;
        for (i, got) in got.into_iter().enumerate() {
            let who = format!("follower {}", i + 1);
            check(&who, got, round.leader, 0, true, &mut errors)?;
        }
    }
    prop_assert!(!group.contains(&key), "the round's flight is over");
    prop_assert_eq!(group.waiters(&key), 0);
    prop_assert!(group.is_empty(), "the group holds {} flights", group.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_caller_gets_the_end_of_its_flight_or_of_its_retry(
        rounds in prop::collection::vec(round(), 1..8),
    ) {
        quiet_work_panics();
        let plain = Arc::new(Group::new());
        let retrying = Arc::new(
            Group::builder()
                .error_policy(ErrorPolicy::RetryOnce)
                .build(),
        );
        for round in &rounds {
            play(if round.retry { &retrying } else { &plain }, round)?;
        }
        prop_assert!(plain.is_empty() && retrying.is_empty());
    }
}
