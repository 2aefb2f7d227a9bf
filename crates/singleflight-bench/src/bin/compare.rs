//! `sf-compare`: times every contender of each scenario side by side in one
//! run and prints one markdown table per scenario, then the targets
//! each group is held to (ratios against its peers).
//!
//! ```text
//! sf-compare [sync|async|all] [--quick] [--reps N] [--go PATH]
//! ```
//!
//! Contenders are interleaved: each repetition runs every contender once, in
//! an order rotated from one repetition to the next, so a burst of load from
//! elsewhere on the machine spreads over all of them. Tables quote medians.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use singleflight_bench::asynch::{
    self, AsyncSingleflight, Coalescer, FLOOR, Moka, SingleflightAsync,
};
use singleflight_bench::blocking::{self, Blocking, Crate03, Floor, Ours, ReleaseOnly};
use singleflight_bench::go::GoPeer;
use singleflight_bench::report::{Table, Target, targets_markdown};

const GO: &str = "Go x/sync/singleflight";
const RUST_KEY: &str = "Rust format! key alone";
const GO_KEY: &str = "Go key alone";

struct Options {
    which: String,
    quick: bool,
    reps: usize,
    go: Option<GoPeer>,
}

fn parse() -> Result<Options, String> {
    let mut opts = Options {
        which: "all".into(),
        quick: false,
        reps: 0,
        go: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "sync" | "async" | "all" => opts.which = arg,
            "--quick" => opts.quick = true,
            "--reps" => {
                opts.reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--reps needs a number")?;
            }
            "--go" => {
                let binary = PathBuf::from(args.next().ok_or("--go needs a path")?);
                opts.go = Some(GoPeer { binary });
            }
            "-h" | "--help" => {
                return Err(
                    "usage: sf-compare [sync|async|all] [--quick] [--reps N] [--go PATH]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if opts.reps == 0 {
        opts.reps = if opts.quick { 3 } else { 15 };
    }
    Ok(opts)
}

/// `items` rotated left by `by`, so each repetition starts with another contender.
fn rotated<T: Copy>(items: &[T], by: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = by % v.len();
        v.rotate_left(k);
    }
    v
}

/// Executions counted per contender over a herd's rounds, printed under
/// its table: more than one per round means late callers missed the flight.
#[derive(Default)]
struct Executions(Vec<(&'static str, usize, usize)>);

impl Executions {
    fn add(&mut self, name: &'static str, executions: usize, rounds: usize) {
        match self.0.iter_mut().find(|(n, _, _)| *n == name) {
            Some(row) => {
                row.1 += executions;
                row.2 += rounds;
            }
            None => self.0.push((name, executions, rounds)),
        }
    }

    fn markdown(&self) -> String {
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(n, e, r)| format!("{n} {e} in {r} rounds"))
            .collect();
        format!("Executions: {}.\n", list.join("; "))
    }
}

fn go_sample(go: &GoPeer, args: &[&str]) -> Result<Vec<f64>, String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    go.run(&args)
}

#[derive(Clone, Copy, PartialEq)]
enum SyncC {
    Ours,
    Crate03,
    Floor,
    Go,
}

impl SyncC {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => Ours::NAME,
            Self::Crate03 => Crate03::NAME,
            Self::Floor => Floor::NAME,
            Self::Go => GO,
        }
    }
}

fn run_sync(opts: &Options) -> Result<String, String> {
    let mut contenders = vec![SyncC::Ours, SyncC::Crate03, SyncC::Floor];
    if opts.go.is_some() {
        contenders.push(SyncC::Go);
    }
    let names: Vec<&str> = contenders.iter().map(|c| c.name()).collect();
    let n = if opts.quick { 200_000 } else { 1_000_000 };
    let hot_n = if opts.quick { 5_000 } else { 20_000 };
    let (herd_threads, herd_block) = (1000, 5);
    let blocks = if opts.quick { 1 } else { 4 };
    let herd_rounds = blocks * herd_block;
    let work = Duration::from_millis(10);

    let mut keys = Table::new(
        "the key alone (in every distinct-keys figure)",
        "ns/op",
        &[RUST_KEY, GO_KEY],
    );
    let mut d1 = Table::new("distinct keys, 1 thread", "ns/op", &names);
    let mut d2 = Table::new(
        "distinct keys, 2 threads (per call, as each thread sees it)",
        "ns/op",
        &names,
    );
    let mut hot = Table::new(
        "one hot key, 64 threads, work returns at once (wall / all calls)",
        "ns/op",
        &names,
    );
    let mut herd_names = names.clone();
    herd_names.push(ReleaseOnly::NAME);
    let mut herd = Table::new(
        format!(
            "herd: {herd_threads} threads on one key, 10 ms of work, {herd_rounds} rounds (floor: no coalescing, every thread sleeps)"
        ),
        "ms/round",
        &herd_names,
    );
    herd.minus = 10.0;

    for rep in 0..opts.reps {
        eprintln!("sync: repetition {}/{}", rep + 1, opts.reps);
        keys.push(RUST_KEY, blocking::key_only(n));
        if let Some(go) = &opts.go {
            keys.push(GO_KEY, go_sample(go, &["key", &n.to_string()])?[0]);
        }
        for c in rotated(&contenders, rep) {
            let (one, two) = match c {
                SyncC::Ours => (
                    blocking::distinct::<Ours>(1, n),
                    blocking::distinct::<Ours>(2, n),
                ),
                SyncC::Crate03 => (
                    blocking::distinct::<Crate03>(1, n),
                    blocking::distinct::<Crate03>(2, n),
                ),
                SyncC::Floor => (
                    blocking::distinct::<Floor>(1, n),
                    blocking::distinct::<Floor>(2, n),
                ),
                SyncC::Go => {
                    let go = opts.go.as_ref().ok_or("no Go peer")?;
                    (
                        go_sample(go, &["distinct", "1", &n.to_string()])?[0],
                        go_sample(go, &["distinct", "2", &n.to_string()])?[0],
                    )
                }
            };
            d1.push(c.name(), one);
            d2.push(c.name(), two);
        }
        for c in rotated(&contenders, rep) {
            let v = match c {
                SyncC::Ours => blocking::hot::<Ours>(64, hot_n),
                SyncC::Crate03 => blocking::hot::<Crate03>(64, hot_n),
                SyncC::Floor => blocking::hot::<Floor>(64, hot_n),
                SyncC::Go => go_sample(
                    opts.go.as_ref().ok_or("no Go peer")?,
                    &["hot", "64", &hot_n.to_string()],
                )?[0],
            };
            hot.push(c.name(), v);
        }
    }
    // The herd in blocks of rounds, contenders interleaved block by block.
    let mut herd_execs = Executions::default();
    for b in 0..blocks {
        eprintln!("sync: herd block {}/{blocks}", b + 1);
        for c in rotated(&contenders, b) {
            let (rounds, execs) = match c {
                SyncC::Ours => blocking::herd::<Ours>(herd_threads, work, herd_block),
                SyncC::Crate03 => blocking::herd::<Crate03>(herd_threads, work, herd_block),
                SyncC::Floor => blocking::herd::<Floor>(herd_threads, work, herd_block),
                SyncC::Go => {
                    let go = opts.go.as_ref().ok_or("no Go peer")?;
                    (
                        go_sample(
                            go,
                            &[
                                "herd",
                                &herd_threads.to_string(),
                                "10",
                                &herd_block.to_string(),
                            ],
                        )?,
                        0,
                    )
                }
            };
            if c != SyncC::Go {
                eprintln!("  {}: {execs} executions in {herd_block} rounds", c.name());
                herd_execs.add(c.name(), execs, herd_block);
            }
            for r in rounds {
                herd.push(c.name(), r / 1e6);
            }
        }
        // The harness alone has no work: add back the 10 ms the table takes off.
        let (rounds, _) = blocking::herd::<ReleaseOnly>(herd_threads, work, herd_block);
        for r in rounds {
            herd.push(ReleaseOnly::NAME, r / 1e6 + 10.0);
        }
    }

    let mut out = String::from("## The blocking group\n\n");
    out += &keys.markdown(RUST_KEY);
    out += "\n";
    out += &d1.markdown(Ours::NAME);
    out += "\n";
    out += &d2.markdown(Ours::NAME);
    out += "\n";
    out += &hot.markdown(Ours::NAME);
    out += "\n";
    out += &herd.markdown(Ours::NAME);
    out += "\n";
    out += &herd_execs.markdown();
    out += "\n";
    let ours1 = d1.median(Ours::NAME);
    let mut targets = vec![];
    if opts.go.is_some() {
        targets.push(Target::ratio(
            "distinct keys, 1 thread: <= 0.8x Go",
            ours1,
            d1.median(GO),
            0.8,
            "ns/op",
        ));
    }
    targets.push(Target::ratio(
        "distinct keys, 1 thread: <= 1.2x the floor",
        ours1,
        d1.median(Floor::NAME),
        1.2,
        "ns/op",
    ));
    targets.push(Target::ratio(
        "distinct keys, 2 threads: <= 1.3x our 1-thread figure",
        d2.median(Ours::NAME),
        ours1,
        1.3,
        "ns/op",
    ));
    // Context, not a target: how two threads scale on this machine at all.
    targets.push(Target::ratio(
        "(context, not a target) the floor's 2-thread / 1-thread ratio",
        d2.median(Floor::NAME),
        d1.median(Floor::NAME),
        1.3,
        "ns/op",
    ));
    if opts.go.is_some() {
        targets.push(Target::ratio(
            "(context, not a target) Go's 2-thread / 1-thread ratio",
            d2.median(GO),
            d1.median(GO),
            1.3,
            "ns/op",
        ));
        targets.push(Target::ratio(
            "herd: round minus 10 ms <= Go's",
            herd.median(Ours::NAME),
            herd.median(GO),
            1.0,
            "ms",
        ));
    }
    out += &targets_markdown(
        "The blocking group's targets (timing; memory: see sf-memory)",
        &targets,
    );
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum AsyncC {
    Ours,
    AsyncSf,
    SfAsync,
    Moka,
    Floor,
    /// The harness alone, plus the work's duration so it reads like a round.
    Harness,
}

impl AsyncC {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => asynch::Ours::NAME,
            Self::AsyncSf => AsyncSingleflight::NAME,
            Self::SfAsync => SingleflightAsync::NAME,
            Self::Moka => Moka::NAME,
            Self::Floor => FLOOR,
            Self::Harness => "harness alone + the work's time (release, no call)",
        }
    }

    fn herd(
        self,
        rt: &tokio::runtime::Runtime,
        tasks: usize,
        work: Duration,
        rounds: usize,
    ) -> (Vec<f64>, usize) {
        match self {
            Self::Ours => asynch::herd::<asynch::Ours>(rt, tasks, work, rounds),
            Self::AsyncSf => asynch::herd::<AsyncSingleflight>(rt, tasks, work, rounds),
            Self::SfAsync => asynch::herd::<SingleflightAsync>(rt, tasks, work, rounds),
            Self::Moka => asynch::herd::<Moka>(rt, tasks, work, rounds),
            Self::Floor => (asynch::herd_floor(rt, tasks, work, rounds), rounds),
            Self::Harness => {
                let rounds = asynch::herd_release_only(rt, tasks, rounds);
                let work = work.as_nanos() as f64;
                (rounds.into_iter().map(|r| r + work).collect(), 0)
            }
        }
    }

    fn distinct(self, rt: &tokio::runtime::Runtime, tasks: usize, n: usize) -> f64 {
        match self {
            Self::Ours => asynch::distinct::<asynch::Ours>(rt, tasks, n),
            Self::AsyncSf => asynch::distinct::<AsyncSingleflight>(rt, tasks, n),
            Self::SfAsync => asynch::distinct::<SingleflightAsync>(rt, tasks, n),
            Self::Moka => asynch::distinct::<Moka>(rt, tasks, n),
            Self::Floor | Self::Harness => f64::NAN,
        }
    }
}

fn run_async(opts: &Options) -> Result<String, String> {
    let rt = asynch::runtime();
    let herd_c = [
        AsyncC::Ours,
        AsyncC::AsyncSf,
        AsyncC::SfAsync,
        AsyncC::Moka,
        AsyncC::Floor,
        AsyncC::Harness,
    ];
    let peers = [AsyncC::AsyncSf, AsyncC::SfAsync, AsyncC::Moka];
    // moka keeps every key it is given: a distinct-keys run measures its
    // cache inserts, not coalescing, so it sits that scenario out.
    let distinct_c = [AsyncC::Ours, AsyncC::AsyncSf, AsyncC::SfAsync];
    let herd_names: Vec<&str> = herd_c.iter().map(|c| c.name()).collect();
    let distinct_names: Vec<&str> = distinct_c.iter().map(|c| c.name()).collect();
    let n = if opts.quick { 100_000 } else { 500_000 };
    let (big_rounds, big_block) = if opts.quick { (4, 2) } else { (10, 2) };
    let (small_rounds, small_block) = if opts.quick { (60, 20) } else { (200, 20) };

    let mut big = Table::new(
        format!("herd: 10,000 tasks on one key, 10 ms of work, {big_rounds} rounds"),
        "ms/round",
        &herd_names,
    );
    let mut small = Table::new(
        format!("herd: 100 tasks on one key, 1 ms of work, {small_rounds} rounds"),
        "ms/round",
        &herd_names,
    );
    let mut d1 = Table::new("distinct keys, 1 task", "ns/op", &distinct_names);
    let mut d2 = Table::new(
        "distinct keys, 2 tasks (per call, as each task sees it)",
        "ns/op",
        &distinct_names,
    );

    for rep in 0..opts.reps {
        eprintln!("async: distinct keys, repetition {}/{}", rep + 1, opts.reps);
        for c in rotated(&distinct_c, rep) {
            d1.push(c.name(), c.distinct(&rt, 1, n));
            d2.push(c.name(), c.distinct(&rt, 2, n));
        }
    }
    let mut big_execs = Executions::default();
    let mut small_execs = Executions::default();
    for b in 0..big_rounds / big_block {
        eprintln!(
            "async: herd 10,000, block {}/{}",
            b + 1,
            big_rounds / big_block
        );
        for c in rotated(&herd_c, b) {
            let (rounds, execs) = c.herd(&rt, 10_000, Duration::from_millis(10), big_block);
            eprintln!("  {}: {execs} executions in {big_block} rounds", c.name());
            if c != AsyncC::Harness {
                big_execs.add(c.name(), execs, big_block);
            }
            for r in rounds {
                big.push(c.name(), r / 1e6);
            }
        }
    }
    for b in 0..small_rounds / small_block {
        eprintln!(
            "async: herd 100, block {}/{}",
            b + 1,
            small_rounds / small_block
        );
        for c in rotated(&herd_c, b) {
            let (rounds, execs) = c.herd(&rt, 100, Duration::from_millis(1), small_block);
            if c != AsyncC::Harness {
                small_execs.add(c.name(), execs, small_block);
            }
            for r in rounds {
                small.push(c.name(), r / 1e6);
            }
        }
    }

    let ours = asynch::Ours::NAME;
    let best = |t: &Table, cs: &[AsyncC]| {
        cs.iter()
            .map(|c| (t.median(c.name()), c.name()))
            .filter(|(m, _)| m.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::NAN, "none"))
    };
    let mut out = String::from("## The async group\n\n");
    for (t, execs) in [(&big, &big_execs), (&small, &small_execs)] {
        out += &t.markdown(FLOOR);
        out += "\n";
        out += &execs.markdown();
        out += "\n";
    }
    for t in [&d1, &d2] {
        out += &t.markdown(ours);
        out += "\n";
    }
    let (big_peer, big_peer_name) = best(&big, &peers);
    let (d1_peer, d1_name) = best(&d1, &peers);
    let (d2_peer, d2_name) = best(&d2, &peers);
    let targets = vec![
        Target::ratio(
            "herd 10,000 x 10 ms: <= 1.1x the floor",
            big.median(ours),
            big.median(FLOOR),
            1.1,
            "ms",
        ),
        Target::ratio(
            &format!("herd 10,000 x 10 ms: <= 0.8x the best peer ({big_peer_name})"),
            big.median(ours),
            big_peer,
            0.8,
            "ms",
        ),
        Target::ratio(
            "herd 100 x 1 ms: <= 1.05x the floor",
            small.median(ours),
            small.median(FLOOR),
            1.05,
            "ms",
        ),
        Target::ratio(
            &format!("distinct keys, 1 task: <= 0.5x the best peer ({d1_name})"),
            d1.median(ours),
            d1_peer,
            0.5,
            "ns/op",
        ),
        Target::ratio(
            &format!("distinct keys, 2 tasks: <= 0.5x the best peer ({d2_name})"),
            d2.median(ours),
            d2_peer,
            0.5,
            "ns/op",
        ),
    ];
    out += &targets_markdown(
        "The async group's targets (timing; memory: see sf-memory)",
        &targets,
    );
    Ok(out)
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut out = String::new();
    let run = || -> Result<(), String> {
        if opts.which != "async" {
            out += &run_sync(&opts)?;
            out += "\n";
        }
        if opts.which != "sync" {
            out += &run_async(&opts)?;
        }
        Ok(())
    };
    let mut run = run;
    match run() {
        Ok(()) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sf-compare: {e}");
            ExitCode::FAILURE
        }
    }
}
