//! The burst pattern the policies are for, side by side: 1,000 callers arriving evenly
//! over 100 ms on one key, 5 ms of work. How many times does the work run,
//! and how long do callers wait?
//!
//! - `singleflight` plain: Go's semantics, coalescing only overlapping calls;
//! - `singleflight` with `.memo_all(50 ms)`;
//! - moka's `get_with` with `time_to_live(50 ms)`;
//! - Go's `golang.org/x/sync/singleflight` (`go/burst`, built here in GOPATH
//!   mode from Debian's package; skipped if `go` is missing).
//!
//! `cargo bench -p singleflight-bench --bench policies`
//!
//! Each contender runs `RUNS` times on a 2-worker tokio runtime (real time);
//! the table shows medians.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const CALLERS: u32 = 1_000;
const SPREAD: Duration = Duration::from_millis(100);
const WORK: Duration = Duration::from_millis(5);
const TTL: Duration = Duration::from_millis(50);
const RUNS: usize = 5;

/// One run: executions, and the callers' wait at p50 and max.
#[derive(Clone, Copy, Debug)]
struct Run {
    executions: u64,
    p50: Duration,
    max: Duration,
}

/// Runs the burst against `call`, which must run `work` (or not) for "key".
async fn burst<C, Fut>(call: C) -> Run
where
    C: Fn(Arc<AtomicU64>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let executions = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (call, executions) = (call.clone(), executions.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start + SPREAD * i / CALLERS).await;
                let began = Instant::now();
                assert_eq!(call(executions).await, 42);
                began.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(tasks.len());
    for task in tasks {
        waits.push(task.await.expect("a caller panicked"));
    }
    waits.sort();
    Run {
        executions: executions.load(Ordering::SeqCst),
        p50: waits[waits.len() / 2],
        max: waits[waits.len() - 1],
    }
}

async fn work(executions: Arc<AtomicU64>) -> u64 {
    executions.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(WORK).await;
    42
}

async fn plain() -> Run {
    let group = singleflight::future::Group::<String, u64>::new();
    burst(move |executions| {
        let group = group.clone();
        async move { group.call("key", || work(executions)).await.value }
    })
    .await
}

async fn memo() -> Run {
    let group = singleflight::future::Group::<String, u64>::builder()
        .memo_all(TTL)
        .build();
    burst(move |executions| {
        let group = group.clone();
        async move { group.call("key", || work(executions)).await.value }
    })
    .await
}

async fn moka_get_with() -> Run {
    let cache = moka::future::Cache::<&'static str, u64>::builder()
        .time_to_live(TTL)
        .build();
    burst(move |executions| {
        let cache = cache.clone();
        async move { cache.get_with("key", work(executions)).await }
    })
    .await
}

/// Builds `go/burst` into the target directory; `None` without Go.
fn go_burst() -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target"));
    let out = target.join("go").join("burst");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(manifest.join("go/burst"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .status();
    match built {
        Ok(status) if status.success() => Some(out),
        Ok(status) => {
            eprintln!("go build of go/burst failed ({status}); Go skipped");
            None
        }
        Err(err) => {
            eprintln!("no go ({err}); Go skipped");
            None
        }
    }
}

fn go_run(binary: &PathBuf) -> Option<Run> {
    let output = Command::new(binary)
        .args([
            CALLERS.to_string(),
            SPREAD.as_millis().to_string(),
            WORK.as_millis().to_string(),
        ])
        .output()
        .ok()?;
    let line = String::from_utf8(output.stdout).ok()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match fields[..] {
        [executions, p50, max] => Some(Run {
            executions,
            p50: Duration::from_micros(p50),
            max: Duration::from_micros(max),
        }),
        _ => None,
    }
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort();
    values[values.len() / 2]
}

fn row(name: &str, runs: &[Run]) {
    let executions: Vec<u64> = runs.iter().map(|r| r.executions).collect();
    let (lo, hi) = (
        executions.iter().min().copied().unwrap_or(0),
        executions.iter().max().copied().unwrap_or(0),
    );
    println!(
        "| {name:<44} | {:>10} | {:>7} | {:>10.2} | {:>10.2} |",
        median(executions),
        format!("{lo}-{hi}"),
        median(runs.iter().map(|r| r.p50).collect()).as_secs_f64() * 1e3,
        median(runs.iter().map(|r| r.max).collect()).as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut results: Vec<(&str, Vec<Run>)> = vec![
        ("singleflight future::Group, plain", vec![]),
        ("singleflight future::Group, .memo_all(50 ms)", vec![]),
        ("moka future::Cache::get_with, ttl 50 ms", vec![]),
    ];
    let go = go_burst();
    let mut go_runs = Vec::new();
    // Interleaved, so a noisy moment hits every contender alike.
    for _ in 0..RUNS {
        results[0].1.push(runtime.block_on(plain()));
        results[1].1.push(runtime.block_on(memo()));
        results[2].1.push(runtime.block_on(moka_get_with()));
        if let Some(run) = go.as_ref().and_then(go_run) {
            go_runs.push(run);
        }
    }
    println!(
        "burst: {CALLERS} callers over {} ms on one key, {} ms of work; medians of {RUNS} runs\n",
        SPREAD.as_millis(),
        WORK.as_millis()
    );
    println!(
        "| {:<44} | {:>10} | {:>7} | {:>10} | {:>10} |",
        "contender", "executions", "range", "wait p50 ms", "wait max ms"
    );
    println!(
        "|{:-<46}|{:->12}|{:->9}|{:->13}|{:->13}|",
        "", "", "", "", ""
    );
    for (name, runs) in &results {
        row(name, runs);
    }
    if !go_runs.is_empty() {
        row("Go x/sync singleflight.Group.Do", &go_runs);
    }
}
