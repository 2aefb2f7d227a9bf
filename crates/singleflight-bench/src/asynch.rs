//! The async contenders and the task scenarios of the async group, on one tokio
//! multi-thread runtime with as many workers as cores.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::{Notify, watch};

/// An async group under test.
pub trait Coalescer: Clone + Send + Sync + 'static {
    /// Name in the tables.
    const NAME: &'static str;
    /// An empty group.
    fn create() -> Self;
    /// One call: runs `work()` for `key` unless a call for it is in flight.
    fn call<W, Fut>(&self, key: String, work: W) -> impl Future<Output = u64> + Send + 'static
    where
        W: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = u64> + Send + 'static;
    /// Called between herd rounds (moka forgets the cached value).
    fn reset(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Our `singleflight::future::Group`.
#[derive(Debug, Clone, Default)]
pub struct Ours(singleflight::future::Group<String, u64>);

impl Coalescer for Ours {
    const NAME: &'static str = "singleflight (ours)";
    fn create() -> Self {
        Self::default()
    }
    fn call<W, Fut>(&self, key: String, work: W) -> impl Future<Output = u64> + Send + 'static
    where
        W: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = u64> + Send + 'static,
    {
        let call = self.0.call_owned(key, work);
        async move { call.await.value }
    }
}

/// async_singleflight 0.6 (`UnaryGroup::work(&key, future)`).
#[derive(Clone, Default)]
pub struct AsyncSingleflight(Arc<async_singleflight::UnaryGroup<String, u64>>);

impl std::fmt::Debug for AsyncSingleflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncSingleflight")
    }
}

impl Coalescer for AsyncSingleflight {
    const NAME: &'static str = "async_singleflight 0.6";
    fn create() -> Self {
        Self::default()
    }
    fn call<W, Fut>(&self, key: String, work: W) -> impl Future<Output = u64> + Send + 'static
    where
        W: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = u64> + Send + 'static,
    {
        let group = self.0.clone();
        async move { group.work(key.as_str(), work()).await }
    }
}

/// singleflight-async 0.2 (`SingleFlight::work(key, || future)`).
#[derive(Clone, Default)]
pub struct SingleflightAsync(Arc<singleflight_async::SingleFlight<String, u64>>);

impl std::fmt::Debug for SingleflightAsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SingleflightAsync")
    }
}

impl Coalescer for SingleflightAsync {
    const NAME: &'static str = "singleflight-async 0.2";
    fn create() -> Self {
        Self::default()
    }
    fn call<W, Fut>(&self, key: String, work: W) -> impl Future<Output = u64> + Send + 'static
    where
        W: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = u64> + Send + 'static,
    {
        // `work` registers the call at once; defer it to the first poll like
        // the others, so the harness times it after the release.
        let group = self.0.clone();
        async move { group.work(key, work).await }
    }
}

/// moka 0.12 `future::Cache::get_with`, invalidated between herd rounds.
#[derive(Clone, Debug)]
pub struct Moka(moka::future::Cache<String, u64>);

impl Coalescer for Moka {
    const NAME: &'static str = "moka 0.12 get_with";
    fn create() -> Self {
        Self(moka::future::Cache::new(10_000))
    }
    fn call<W, Fut>(&self, key: String, work: W) -> impl Future<Output = u64> + Send + 'static
    where
        W: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = u64> + Send + 'static,
    {
        let cache = self.0.clone();
        async move { cache.get_with(key, work()).await }
    }
    fn reset(&self) -> impl Future<Output = ()> + Send {
        let cache = self.0.clone();
        async move { cache.invalidate_all() }
    }
}

/// The floor's name in the tables.
pub const FLOOR: &str = "floor (watch)";

/// The runtime every async scenario runs on: multi-thread, one worker per
/// core, timers on.
///
/// # Panics
///
/// If the runtime cannot be built.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .expect("build the tokio runtime")
}

/// The spawn-and-release harness: spawns `tasks` tasks that each wait for
/// the release, then run `task(index)`; releases them together once all are
/// parked; returns ns from the release to the latest task's end.
async fn herd_round<F, Fut>(tasks: usize, task: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let origin = Instant::now();
    let (release, wait) = watch::channel(false);
    let parked = Arc::new(AtomicUsize::new(0));
    let all_parked = Arc::new(Notify::new());
    let last = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let fut = task(i);
        let (mut wait, parked, all_parked, last) = (
            wait.clone(),
            parked.clone(),
            all_parked.clone(),
            last.clone(),
        );
        handles.push(tokio::spawn(async move {
            if parked.fetch_add(1, Ordering::AcqRel) + 1 == tasks {
                all_parked.notify_one();
            }
            // The sender lives until every task is joined.
            let _ = wait.wait_for(|go| *go).await;
            let v = fut.await;
            last.fetch_max(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            v
        }));
    }
    all_parked.notified().await;
    let released = origin.elapsed().as_nanos() as u64;
    release.send_replace(true);
    for h in handles {
        assert_eq!(h.await.expect("a herd task panicked"), 42);
    }
    (last.load(Ordering::Relaxed) - released) as f64
}

/// Herd: `tasks` tasks on one key whose work sleeps `work`, `rounds` rounds;
/// ns per round. Also returns the executions.
pub fn herd<C: Coalescer>(
    rt: &Runtime,
    tasks: usize,
    work: Duration,
    rounds: usize,
) -> (Vec<f64>, usize) {
    let group = C::create();
    let executions = Arc::new(AtomicUsize::new(0));
    let out = rt.block_on(async {
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let round = herd_round(tasks, |_| {
                let executions = executions.clone();
                group.call("herd".to_string(), move || async move {
                    executions.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(work).await;
                    42
                })
            })
            .await;
            out.push(round);
            group.reset().await;
        }
        out
    });
    (out, executions.load(Ordering::Relaxed))
}

/// Not a contender: the harness alone, each released task returning at once
/// without a call or work; ns per round. The part of every herd round that
/// no group can remove.
pub fn herd_release_only(rt: &Runtime, tasks: usize, rounds: usize) -> Vec<f64> {
    rt.block_on(async {
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            out.push(herd_round(tasks, |_| async { 42 }).await);
        }
        out
    })
}

/// The floor of the herd: the same harness, task 0 does the work and sends
/// the value on a `watch` channel, every other task waits for it.
pub fn herd_floor(rt: &Runtime, tasks: usize, work: Duration, rounds: usize) -> Vec<f64> {
    rt.block_on(async {
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let (tx, rx) = watch::channel(None::<u64>);
            let tx = Arc::new(tx);
            let round = herd_round(tasks, |i| {
                let (tx, mut rx) = (tx.clone(), rx.clone());
                async move {
                    if i == 0 {
                        tokio::time::sleep(work).await;
                        tx.send_replace(Some(42));
                        42
                    } else {
                        let v = *rx.wait_for(Option::is_some).await.expect("sender alive");
                        v.unwrap_or_default()
                    }
                }
            })
            .await;
            out.push(round);
        }
        out
    })
}

/// Distinct keys: `tasks` tasks each make `n` calls with a fresh key and
/// work that returns at once; ns per call as each task sees it.
pub fn distinct<C: Coalescer>(rt: &Runtime, tasks: usize, n: usize) -> f64 {
    let group = C::create();
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let group = group.clone();
                tokio::spawn(async move {
                    for i in t * n..(t + 1) * n {
                        let v = group.call(crate::key(i), || async { 42 }).await;
                        assert_eq!(black_box(v), 42);
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("a distinct-keys task panicked");
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}
