// A group that coalesces within its process first (the core async group:
// at most one caller per process and key talks to Redis), then across
// processes through Redis (see `protocol.rs` for the lease and the
// stream).
//
// Invariants:
// - The work runs at most once per call of `distributed`: it is taken out
//   of its `Option` when this flight leads, falls back, or must run it
//   itself after a wait (an oversize result, a deadline).
// - A leader's renewal task and lease never outlive its flight: the
//   `Leading` guard aborts the renewal and releases the lease when the
//   flight ends, is cancelled, or panics.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::RedisError;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::codec::{Codec, Json};
use crate::error::Error;
use crate::keys::Keys;
use crate::protocol::{Acquired, Protocol, Published};

/// What a call does when Redis cannot be reached or fails.
///
/// # Examples
///
/// ```
/// let on_error = singleflight_redis::OnRedisError::RunLocally;
/// assert_eq!(on_error, singleflight_redis::OnRedisError::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnRedisError {
    /// Coalesce within this process only, and run the work (the default).
    /// One warning is logged when Redis goes away and one line when it is
    /// back; `Stats::fallbacks` counts the calls.
    #[default]
    RunLocally,
    /// Return [`Error::Redis`] to the callers.
    Fail,
}

/// Where a call's value came from.
///
/// # Examples
///
/// ```
/// use singleflight_redis::Source;
/// assert_ne!(Source::Ran, Source::Remote);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// This process ran the work (it held the lease, or had to run it
    /// after all: the leader's value was too large, or the wait passed its
    /// deadline).
    Ran,
    /// Another process ran it; the value came through Redis.
    Remote,
    /// Redis was unreachable: this process ran it, coalescing locally only.
    Fallback,
}

/// A call's value.
///
/// # Examples
///
/// ```
/// use singleflight_redis::{Outcome, Source};
/// let outcome = Outcome { value: 7, shared: false, source: Source::Ran };
/// assert_eq!(outcome.value, 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// The value.
    pub value: T,
    /// Whether other callers of this process shared this call's flight.
    pub shared: bool,
    /// Where it came from.
    pub source: Source,
}

/// What a [`Group`] has counted since it was built; from [`Group::stats`].
/// The same counts go to the `metrics` facade as
/// `singleflight_redis_{field}_total`.
///
/// # Examples
///
/// ```
/// let stats = singleflight_redis::Stats::default();
/// assert_eq!(stats.executions + stats.remote, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Flights of this process that ran the work.
    pub executions: u64,
    /// Flights that received another process's value.
    pub remote: u64,
    /// Flights that ran the work because Redis was unreachable.
    pub fallbacks: u64,
    /// Waits that found the lease gone without a result and took over.
    pub takeovers: u64,
    /// Leases this process lost while its work ran (it never took one back).
    pub lost_leases: u64,
    /// Results of an older generation than the lease's, dropped.
    pub stale_results: u64,
    /// Values too large to publish; the waiters ran the work themselves.
    pub oversize: u64,
    /// Waits that passed their deadline and ran the work themselves.
    pub wait_timeouts: u64,
}

#[derive(Default)]
struct Counters {
    executions: AtomicU64,
    remote: AtomicU64,
    fallbacks: AtomicU64,
    takeovers: AtomicU64,
    lost_leases: AtomicU64,
    stale_results: AtomicU64,
    oversize: AtomicU64,
    wait_timeouts: AtomicU64,
}

macro_rules! count {
    ($counters:expr, $field:ident) => {{
        $counters.$field.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(concat!("singleflight_redis_", stringify!($field), "_total"))
            .increment(1);
    }};
}

#[derive(Debug, Clone)]
struct Settings {
    prefix: String,
    lease: Duration,
    wait: Duration,
    keep: Duration,
    max_work: Duration,
    max_value_bytes: usize,
    timeout: Duration,
    on_redis_error: OnRedisError,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: "singleflight".to_owned(),
            lease: Duration::from_secs(5),
            wait: Duration::from_secs(30),
            keep: Duration::from_secs(10),
            max_work: Duration::from_secs(60),
            max_value_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
            on_redis_error: OnRedisError::RunLocally,
        }
    }
}

/// Settings of a [`Group`]; from [`Group::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let builder = singleflight_redis::Group::<String>::builder("redis://127.0.0.1:6379")
///     .prefix("reports")
///     .lease(Duration::from_secs(2))
///     .wait(Duration::from_secs(10));
/// # drop(builder);
/// ```
pub struct Builder<T, C = Json> {
    url: String,
    root_certificate: Option<Vec<u8>>,
    settings: Settings,
    codec: C,
    value: PhantomData<fn() -> T>,
}

impl<T, C: std::fmt::Debug> std::fmt::Debug for Builder<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl<T, C> Builder<T, C> {
    /// The namespace of the group's Redis keys (by default `singleflight`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// How long a leader's lease lasts unless renewed (by default 5 s). The
    /// leader renews it every third of that while its work runs; a leader
    /// that dies lets it expire, and a waiter takes over after at most this.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease.max(Duration::from_millis(3));
        self
    }

    /// The longest a call waits for another process's result (by default
    /// 30 s); past it, it runs the work itself.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.settings.wait = wait;
        self
    }

    /// How long a result stays readable in Redis after it is published (by
    /// default 10 s): longer than any waiter takes to read it.
    pub fn keep_results(mut self, keep: Duration) -> Self {
        self.settings.keep = keep.max(Duration::from_millis(1));
        self
    }

    /// The longest a leader renews its lease for (by default 60 s): work
    /// that runs longer loses its lease, and a waiter takes over.
    pub fn max_work(mut self, max_work: Duration) -> Self {
        self.settings.max_work = max_work;
        self
    }

    /// The largest encoded value published through Redis (by default
    /// 1 MiB). A larger one is refused with a warning that names its size
    /// and the limit; its waiters run the work themselves.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_value_bytes = bytes;
        self
    }

    /// The longest one Redis command or connection may take (by default
    /// 1 s); past it, Redis counts as unreachable for that call.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// What a call does when Redis fails (by default
    /// [`OnRedisError::RunLocally`]).
    pub fn on_redis_error(mut self, on_error: OnRedisError) -> Self {
        self.settings.on_redis_error = on_error;
        self
    }

    /// Trusts only this CA certificate (PEM) for a `rediss://` URL, instead
    /// of the platform's roots.
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// Encodes values with `codec` instead of JSON.
    pub fn codec<D: Codec<T>>(self, codec: D) -> Builder<T, D> {
        Builder {
            url: self.url,
            root_certificate: self.root_certificate,
            settings: self.settings,
            codec,
            value: PhantomData,
        }
    }
}

impl<T, C> Builder<T, C>
where
    T: Clone + Send + Sync + 'static,
    C: Codec<T>,
{
    /// The group. It connects to Redis on its first call, and again after
    /// Redis went away, so it can be built while Redis is down.
    ///
    /// # Errors
    ///
    /// A URL that is not `redis://HOST[:PORT][/DB]` or `rediss://…` (TLS,
    /// checked against the platform's roots or [`Builder::root_certificate`]).
    pub fn build(self) -> Result<Group<T, C>, Error> {
        let client = match self.root_certificate {
            Some(pem) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?,
            None => redis::Client::open(self.url.as_str())?,
        };
        Ok(Group {
            inner: Arc::new(Inner {
                local: singleflight::future::Group::new(),
                client,
                protocol: OnceCell::new(),
                codec: self.codec,
                settings: self.settings,
                degraded: AtomicBool::new(false),
                counters: Counters::default(),
                token: Token::new(),
            }),
        })
    }
}

/// Coalesces calls for the same key across every process that uses the
/// same Redis and prefix: one of them runs the work, the others get its
/// value.
///
/// Within a process, calls are coalesced first (so at most one per key
/// talks to Redis). Across processes, a lease elects the leader, which
/// renews it while its work runs and publishes its value, with the lease's
/// fencing generation, to a stream the waiters read from its start.
///
/// **The guarantee is efficiency, not exclusion.** Duplicate work becomes
/// rare, not impossible: a leader paused longer than its lease (a long GC
/// pause, a stopped VM, a network partition) loses it, and a waiter takes
/// over while the first may still finish. Never use it for writes.
///
/// # Examples
///
/// ```no_run
/// # async fn report() -> String { String::new() }
/// # async fn run() -> Result<(), singleflight_redis::Error> {
/// let group = singleflight_redis::Group::<String>::builder("redis://127.0.0.1:6379").build()?;
/// let outcome = group.call("daily-report", || async { report().await }).await?;
/// println!("{} (from {:?})", outcome.value, outcome.source);
/// # Ok(()) }
/// ```
pub struct Group<T, C = Json> {
    inner: Arc<Inner<T, C>>,
}

impl<T, C> Clone for Group<T, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T, C> std::fmt::Debug for Group<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("settings", &self.inner.settings)
            .field("stats", &self.inner.stats())
            .finish_non_exhaustive()
    }
}

struct Inner<T, C> {
    local: singleflight::future::Group<Vec<u8>, Result<(T, Source), Error>>,
    client: redis::Client,
    protocol: OnceCell<Protocol>,
    codec: C,
    settings: Settings,
    degraded: AtomicBool,
    counters: Counters,
    token: Token,
}

/// Tokens unique to a flight across processes: a random 64-bit prefix per
/// group, the process id, and a counter.
struct Token {
    random: u64,
    next: AtomicU64,
}

impl Token {
    fn new() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let random =
            RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
        Self {
            random,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{}-{n}", self.random, std::process::id())
    }
}

impl<T> Group<T, Json> {
    /// Settings for a group on the Redis at `url` (`redis://HOST:PORT`).
    pub fn builder(url: impl Into<String>) -> Builder<T, Json> {
        Builder {
            url: url.into(),
            root_certificate: None,
            settings: Settings::default(),
            codec: Json,
            value: PhantomData,
        }
    }
}

impl<T, C> Group<T, C>
where
    T: Clone + Send + Sync + 'static,
    C: Codec<T>,
{
    /// Runs `work` for `key` unless a call for it is under way here or in
    /// another process, and returns its value (or the other call's).
    ///
    /// # Errors
    ///
    /// [`Error::Panicked`] when the work panicked; [`Error::Redis`] when
    /// Redis failed and the group is set to [`OnRedisError::Fail`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the flight to this process's other
    /// callers; when the last goes, a leader's work is cancelled and its
    /// lease released.
    pub async fn call<F, Fut>(&self, key: impl AsRef<[u8]>, work: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let key = key.as_ref();
        let called = self
            .inner
            .local
            .call_checked(key, || {
                distributed(Arc::clone(&self.inner), key.to_vec(), work)
            })
            .await;
        match called {
            Ok(outcome) => {
                let (value, source) = outcome.value?;
                Ok(Outcome {
                    value,
                    shared: outcome.shared,
                    source,
                })
            }
            Err(singleflight::Error::Panicked(panicked)) => {
                Err(Error::Panicked(panicked.message().to_owned()))
            }
            // The local group has no waiter cap and no deadline.
            Err(other) => Err(Error::Panicked(other.to_string())),
        }
    }

    /// What the group has counted so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

impl<T, C> Inner<T, C> {
    fn stats(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        Stats {
            executions: load(&c.executions),
            remote: load(&c.remote),
            fallbacks: load(&c.fallbacks),
            takeovers: load(&c.takeovers),
            lost_leases: load(&c.lost_leases),
            stale_results: load(&c.stale_results),
            oversize: load(&c.oversize),
            wait_timeouts: load(&c.wait_timeouts),
        }
    }

    async fn protocol(&self) -> Result<&Protocol, RedisError> {
        self.protocol
            .get_or_try_init(|| Protocol::connect(self.client.clone(), self.settings.timeout))
            .await
    }

    /// Redis answered: if it had gone away, say it is back.
    fn reachable(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis is reachable again; coalescing across processes");
        }
    }
}

/// What a wait for another process's result gave.
enum Waited<T> {
    Value(T),
    /// Run the work here: the leader's value could not be published.
    RunHere,
    /// The lease is gone and no result came: take over.
    LeaseGone,
    TimedOut,
}

async fn distributed<T, C, F, Fut>(
    inner: Arc<Inner<T, C>>,
    key: Vec<u8>,
    work: F,
) -> Result<(T, Source), Error>
where
    T: Clone + Send + Sync + 'static,
    C: Codec<T>,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let settings = &inner.settings;
    let keys = Keys::new(&settings.prefix, &key);
    let token = inner.token.next();
    let deadline = Instant::now() + settings.wait;
    loop {
        let protocol = match inner.protocol().await {
            Ok(protocol) => protocol,
            Err(error) => return without_redis(&inner, error, work).await,
        };
        let acquired = match protocol.acquire(&keys, &token, settings.lease).await {
            Ok(acquired) => acquired,
            Err(error) => return without_redis(&inner, error, work).await,
        };
        inner.reachable();
        match acquired {
            Acquired::Leader { generation, lease } => {
                return lead(&inner, protocol, keys, generation, lease, work).await;
            }
            Acquired::Held { generation } => {
                match wait(&inner, protocol, &keys, generation, deadline).await {
                    Ok(Waited::Value(value)) => {
                        count!(inner.counters, remote);
                        return Ok((value, Source::Remote));
                    }
                    Ok(Waited::RunHere) => {
                        count!(inner.counters, executions);
                        return Ok((work().await, Source::Ran));
                    }
                    Ok(Waited::TimedOut) => {
                        count!(inner.counters, wait_timeouts);
                        count!(inner.counters, executions);
                        tracing::debug!(wait = ?settings.wait, "no result in time; running the work here");
                        return Ok((work().await, Source::Ran));
                    }
                    Ok(Waited::LeaseGone) => count!(inner.counters, takeovers),
                    Err(error) => return without_redis(&inner, error, work).await,
                }
            }
        }
    }
}

/// Redis failed: run the work here, or fail, as set.
async fn without_redis<T, C, F, Fut>(
    inner: &Inner<T, C>,
    error: RedisError,
    work: F,
) -> Result<(T, Source), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    match inner.settings.on_redis_error {
        OnRedisError::Fail => Err(error.into()),
        OnRedisError::RunLocally => {
            if !inner.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "Redis is unreachable ({error}); coalescing within this process only until it is back"
                );
            }
            count!(inner.counters, fallbacks);
            Ok((work().await, Source::Fallback))
        }
    }
}

/// Releases a leader's lease and stops its renewal when the flight ends,
/// whichever way.
struct Leading {
    renewal: tokio::task::JoinHandle<()>,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.renewal.abort();
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

async fn lead<T, C, F, Fut>(
    inner: &Arc<Inner<T, C>>,
    protocol: &Protocol,
    keys: Keys,
    generation: u64,
    lease: String,
    work: F,
) -> Result<(T, Source), Error>
where
    T: Clone + Send + Sync + 'static,
    C: Codec<T>,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let renewal = tokio::spawn(renew(Arc::clone(inner), keys.clone(), lease.clone()));
    // Released on cancellation or panic too: spawned, as a drop cannot wait.
    let mut leading = Leading {
        renewal,
        release: Some(Box::new({
            let (inner, keys, lease) = (Arc::clone(inner), keys.clone(), lease.clone());
            move || {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Some(protocol) = inner.protocol.get() {
                            let _ = protocol.release(&keys, &lease).await;
                        }
                    });
                }
            }
        })),
    };
    count!(inner.counters, executions);
    let value = work().await;
    leading.renewal.abort();
    leading.release = None;
    let published = match inner.codec.encode(&value) {
        Ok(bytes) if bytes.len() <= inner.settings.max_value_bytes => Published::Value(bytes),
        Ok(bytes) => {
            count!(inner.counters, oversize);
            tracing::warn!(
                bytes = bytes.len(),
                limit = inner.settings.max_value_bytes,
                "a value of {} bytes is over the limit of {} (max_value_bytes): not published; the other processes run the work themselves",
                bytes.len(),
                inner.settings.max_value_bytes,
            );
            Published::Oversize
        }
        Err(error) => {
            tracing::warn!(
                "the value could not be encoded ({error}); the other processes run the work themselves"
            );
            Published::Oversize
        }
    };
    if let Err(error) = protocol
        .publish_and_release(&keys, generation, &published, inner.settings.keep, &lease)
        .await
    {
        tracing::warn!(
            "could not publish the result to Redis ({error}); waiters take over when the lease expires"
        );
    }
    Ok((value, Source::Ran))
}

/// Renews the lease every third of its span while the work runs, for at
/// most `max_work`; stops for good once the lease is lost.
async fn renew<T, C>(inner: Arc<Inner<T, C>>, keys: Keys, lease: String) {
    let span = inner.settings.lease;
    let every = span / 3;
    let until = Instant::now() + inner.settings.max_work;
    loop {
        tokio::time::sleep(every).await;
        if Instant::now() >= until {
            tracing::warn!(
                max_work = ?inner.settings.max_work,
                "the work ran past max_work; its lease is no longer renewed, and another process may take over"
            );
            return;
        }
        let Some(protocol) = inner.protocol.get() else {
            return;
        };
        match protocol.renew(&keys, &lease, span).await {
            Ok(true) => {}
            Ok(false) => {
                count!(inner.counters, lost_leases);
                tracing::warn!(
                    "lost the lease while the work ran (it expired, or another process took over); not taking it back"
                );
                return;
            }
            // Redis hiccuped: the next renewal may still be in time.
            Err(error) => tracing::debug!("lease renewal failed ({error})"),
        }
    }
}

/// Waits for a result of `generation` or later, until `deadline`.
async fn wait<T, C>(
    inner: &Inner<T, C>,
    protocol: &Protocol,
    keys: &Keys,
    generation: u64,
    deadline: Instant,
) -> Result<Waited<T>, RedisError>
where
    C: Codec<T>,
{
    let mut conn = protocol.waiter_connection(inner.settings.timeout).await?;
    let waited = wait_on(inner, &mut conn, keys, generation, deadline).await;
    // A connection that failed is not kept; one that answered is.
    if waited.is_ok() {
        protocol.return_waiter_connection(conn);
    }
    waited
}

async fn wait_on<T, C>(
    inner: &Inner<T, C>,
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    mut generation: u64,
    deadline: Instant,
) -> Result<Waited<T>, RedisError>
where
    C: Codec<T>,
{
    let mut after = "0".to_owned();
    loop {
        let Some((held, left)) = Protocol::held(conn, keys).await? else {
            // Published just before the release? Leaders publish first.
            let entries = Protocol::read(conn, keys, &after, None).await?;
            return Ok(take(inner, entries, generation, &mut after).unwrap_or(Waited::LeaseGone));
        };
        generation = generation.max(held);
        let now = Instant::now();
        if now >= deadline {
            return Ok(Waited::TimedOut);
        }
        // Until a result comes, or the lease would expire if not renewed
        // (then look again: a dead leader's lease is taken over at once).
        let span = inner.settings.lease;
        let block = (deadline - now).min(
            left.map_or(span, |left| left + Duration::from_millis(5))
                .min(span),
        );
        let entries = Protocol::read(conn, keys, &after, Some(block)).await?;
        if let Some(found) = take(inner, entries, generation, &mut after) {
            return Ok(found);
        }
    }
}

/// The first result of `generation` or later among `entries`; older ones
/// are dropped and counted.
fn take<T, C: Codec<T>>(
    inner: &Inner<T, C>,
    entries: Vec<(String, u64, Published)>,
    generation: u64,
    after: &mut String,
) -> Option<Waited<T>> {
    for (id, published_generation, published) in entries {
        *after = id;
        if published_generation < generation {
            count!(inner.counters, stale_results);
            continue;
        }
        return Some(match published {
            Published::Value(bytes) => match inner.codec.decode(&bytes) {
                Ok(value) => Waited::Value(value),
                Err(error) => {
                    tracing::warn!(
                        "a result could not be decoded ({error}); running the work here"
                    );
                    Waited::RunHere
                }
            },
            Published::Oversize => Waited::RunHere,
        });
    }
    None
}
