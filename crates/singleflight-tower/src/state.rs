// The state every clone of a `Coalesce` shares: the settings, the group of
// flights, what is known about each resource, the bodies that late requests
// may still join, and the counters.
//
// Invariants:
// - `Streaming` has an entry for a key only while that key's last shared
//   response is still arriving and every byte of it is still kept: the
//   flight's work registers it, and its body's `settle` removes it (when the
//   body ends, loses bytes, or is dropped). An entry is removed only by the
//   body it names (`id`), never a newer flight's.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use http::HeaderName;
use http::request::Parts;
use singleflight::future::Group;
use tokio::time::Instant;

use crate::body::{Keep, Settle, SharedBody};
use crate::config::Config;
use crate::flown::{Flown, SharedHead, SharedResponse};
use crate::memo::Memo;
use crate::rules;

/// What the layer knows about a resource from its last responses (apart
/// from the response memo, which keeps responses).
#[derive(Clone, Default)]
pub(crate) struct Facts {
    /// The request headers its responses vary on, beyond the configured ones.
    pub(crate) vary: Arc<[HeaderName]>,
    /// It answered privately: requests for it go straight through until then.
    pub(crate) bypass_until: Option<Instant>,
}

/// Counters, shared by every clone of a service.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) coalesced: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) flights: AtomicU64,
    pub(crate) shared: AtomicU64,
    pub(crate) joined: AtomicU64,
    pub(crate) refetched: AtomicU64,
    pub(crate) upstream_errors: AtomicU64,
    pub(crate) memo_hits: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) stale_if_error: AtomicU64,
    pub(crate) max_wait_timeouts: AtomicU64,
    pub(crate) max_wait_bypasses: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, memo: Option<&Memo>) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (memo_entries, memo_bytes) = memo.map_or((0, 0), Memo::size);
        Stats {
            coalesced: load(&self.coalesced),
            bypassed: load(&self.bypassed),
            flights: load(&self.flights),
            shared: load(&self.shared),
            joined: load(&self.joined),
            refetched: load(&self.refetched),
            upstream_errors: load(&self.upstream_errors),
            memo_hits: load(&self.memo_hits),
            stale_hits: load(&self.stale_hits),
            stale_if_error: load(&self.stale_if_error),
            max_wait_timeouts: load(&self.max_wait_timeouts),
            max_wait_bypasses: load(&self.max_wait_bypasses),
            memo_entries,
            memo_bytes,
        }
    }
}

/// What a [`Coalesce`](crate::Coalesce) and its clones have counted so far;
/// from [`Coalesce::stats`](crate::Coalesce::stats).
///
/// Requests whose method is neither `GET` nor `HEAD` are not counted: they
/// take a path with no bookkeeping at all.
///
/// # Examples
///
/// ```
/// let service = singleflight_tower::Coalesce::new(());
/// let stats = service.stats();
/// // Requests the layer saved the upstream from.
/// let saved = stats.coalesced - stats.flights - stats.refetched;
/// assert_eq!(saved, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `GET`/`HEAD` requests that led or joined a flight.
    pub coalesced: u64,
    /// `GET`/`HEAD` requests sent straight through: with a body,
    /// `Authorization` or `Cookie`, opted out, or for a resource that
    /// answered privately a short while ago.
    pub bypassed: u64,
    /// Flights: requests sent to the inner service on behalf of coalesced
    /// requests.
    pub flights: u64,
    /// Coalesced requests whose response was shared with another.
    pub shared: u64,
    /// Coalesced requests that arrived after their flight's response head,
    /// while its body was still streaming, and read that body from its
    /// first byte (counted in `shared` too).
    pub joined: u64,
    /// Coalesced requests that sent their own request after all, because
    /// their flight's response was private to its requester, varied on a
    /// header they differ in, or no longer had every byte of its body.
    pub refetched: u64,
    /// Flights whose upstream failed (answered 502 or 504).
    pub upstream_errors: u64,
    /// Requests answered from the memo, fresh.
    pub memo_hits: u64,
    /// Requests answered from the memo past a response's lifetime while a
    /// refresh ran (stale-while-revalidate).
    pub stale_hits: u64,
    /// Requests answered from the memo past a response's lifetime because
    /// the upstream failed (stale-if-error).
    pub stale_if_error: u64,
    /// Requests that waited [`CoalesceLayer::max_wait`](crate::CoalesceLayer::max_wait)
    /// and were answered 504.
    pub max_wait_timeouts: u64,
    /// Requests that waited [`CoalesceLayer::max_wait`](crate::CoalesceLayer::max_wait)
    /// and sent their own request.
    pub max_wait_bypasses: u64,
    /// Responses kept in the memo now.
    pub memo_entries: u64,
    /// Their weight in bytes (bodies, heads and keys), within
    /// [`CoalesceLayer::memo_max_bytes`](crate::CoalesceLayer::memo_max_bytes).
    pub memo_bytes: u64,
}

/// The shared responses whose bodies are still streaming, by key: a request
/// for the key joins one of them instead of going upstream.
#[derive(Default)]
pub(crate) struct Streaming {
    bodies: Mutex<HashMap<Arc<str>, Entry>>,
}

struct Entry {
    id: u64,
    head: Arc<SharedHead>,
    /// Weak: the readers own the body, and when the last one goes, the
    /// upstream body is dropped, not kept for a joiner that may not come.
    body: Weak<SharedBody>,
}

impl Streaming {
    fn bodies(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.bodies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the body of flight `id` runs when it can no longer be joined.
    pub(crate) fn settle(self: &Arc<Self>, key: Arc<str>, id: u64) -> Settle {
        let streaming = Arc::downgrade(self);
        Box::new(move || {
            if let Some(streaming) = streaming.upgrade() {
                let removed = {
                    let mut bodies = streaming.bodies();
                    match bodies.get(&key) {
                        Some(entry) if entry.id == id => bodies.remove(&key),
                        _ => None,
                    }
                };
                // The weak handle is dropped outside the lock.
                drop(removed);
            }
        })
    }

    /// Lets requests for `key` join `response` (flight `id`) while its body
    /// streams; replaces an older flight's entry.
    pub(crate) fn register(&self, key: Arc<str>, id: u64, response: &Arc<SharedResponse>) {
        let entry = Entry {
            id,
            head: Arc::clone(&response.head),
            body: Arc::downgrade(&response.body),
        };
        let replaced = self.bodies().insert(key, entry);
        drop(replaced);
    }

    /// The response for `key` whose body is still streaming and whole, if
    /// any.
    pub(crate) fn find(&self, key: &str) -> Option<SharedResponse> {
        let response = {
            let bodies = self.bodies();
            let entry = bodies.get(key)?;
            SharedResponse {
                head: Arc::clone(&entry.head),
                body: entry.body.upgrade()?,
            }
        };
        // Checked outside the registry's lock, so that it stays short.
        response.body.joinable().then_some(response)
    }

    /// How many bodies can be joined now.
    pub(crate) fn len(&self) -> usize {
        self.bodies().len()
    }
}

/// A key whose flight has requests waiting for its response head; from
/// [`Coalesce::in_progress`](crate::Coalesce::in_progress).
///
/// # Examples
///
/// ```
/// # let service = singleflight_tower::Coalesce::new(());
/// for flight in service.in_progress() {
///     println!("{} waiters on {} for {:?}", flight.waiters, flight.key, flight.age);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InProgress {
    /// The flight's key (method, URL and key headers).
    pub key: String,
    /// How long its flight has been waiting for the response head: since
    /// its leader's request went upstream.
    pub age: std::time::Duration,
    /// Requests waiting on it now, its leader included.
    pub waiters: usize,
}

/// The flights waiting for their response head, by key, and since when:
/// what [`InProgress`] reports, with the waiters the group counts. Every
/// flight's work holds a [`Waiter`] while it runs: one entry per flight,
/// not per request, so a request that joins a flight touches nothing here.
#[derive(Default)]
pub(crate) struct Waiting {
    keys: Mutex<HashMap<Arc<str>, (Instant, usize)>>,
}

impl Waiting {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (Instant, usize)>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a flight for `key` until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, key: &Arc<str>) -> Waiter {
        self.keys()
            .entry(Arc::clone(key))
            .or_insert_with(|| (Instant::now(), 0))
            .1 += 1;
        Waiter {
            waiting: Arc::clone(self),
            key: Arc::clone(key),
        }
    }

    /// The keys with a flight, most waiters first; `waiters` counts the
    /// requests waiting on a key's flight besides its leader.
    pub(crate) fn list(&self, waiters: impl Fn(&str) -> usize) -> Vec<InProgress> {
        let now = Instant::now();
        let keys: Vec<(Arc<str>, Instant)> = self
            .keys()
            .iter()
            .map(|(key, (since, _))| (Arc::clone(key), *since))
            .collect();
        // Counted outside this lock: the group takes its own.
        let mut list: Vec<InProgress> = keys
            .into_iter()
            .map(|(key, since)| InProgress {
                waiters: waiters(&key) + 1,
                key: key.to_string(),
                age: now.saturating_duration_since(since),
            })
            .collect();
        list.sort_by(|a, b| b.waiters.cmp(&a.waiters).then_with(|| b.age.cmp(&a.age)));
        list
    }
}

/// A flight waiting for its response head, counted in [`Waiting`].
pub(crate) struct Waiter {
    waiting: Arc<Waiting>,
    key: Arc<str>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut keys = self.waiting.keys();
        if let Some((_, flights)) = keys.get_mut(&self.key) {
            debug_assert!(*flights > 0, "a flight was counted");
            *flights -= 1;
            if *flights == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

/// The state every clone of a [`Coalesce`](crate::Coalesce) shares.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) group: Group<Arc<str>, Flown>,
    /// The kept responses, when the memo is on.
    pub(crate) memo: Option<Memo>,
    /// What is known per resource, by the resource's hash.
    pub(crate) facts: quick_cache::sync::Cache<u64, Facts>,
    resources: RandomState,
    pub(crate) streaming: Arc<Streaming>,
    /// The requests waiting for a flight, by key.
    pub(crate) waiting: Arc<Waiting>,
    /// How flights keep their bodies, from `config`.
    pub(crate) keep: Keep,
    pub(crate) counters: Counters,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, group: Group<Arc<str>, Flown>) -> Self {
        Self {
            facts: quick_cache::sync::Cache::new(config.remembered),
            group,
            memo: Memo::new(&config),
            resources: RandomState::new(),
            streaming: Arc::default(),
            waiting: Arc::default(),
            keep: Keep {
                window: config.body_window,
                spill_max: config.spill_max,
                spill_dir: config.spill_dir.as_deref().map(Arc::from),
            },
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            config,
        }
    }

    /// A number no other request of this service has.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The key of a candidate request and the hash of its resource, or
    /// `None` when it must go straight through.
    pub(crate) fn key(&self, head: &Parts, body_is_empty: bool) -> Option<(String, u64)> {
        let config = &*self.config;
        if !body_is_empty || rules::carries_credentials(&head.headers, &config.key_headers) {
            return None;
        }
        if let Some(name) = &config.bypass_header
            && head.headers.contains_key(name)
        {
            return None;
        }
        if let Some(bypass) = &config.bypass_if
            && bypass(head)
        {
            return None;
        }
        let mut key = String::with_capacity(96);
        rules::push_resource(&mut key, head);
        // The facts are keyed by the resource's hash: a collision could at
        // worst add headers to a key or send requests straight through, and
        // each waiter still checks the response's `Vary` against its own
        // request.
        let resource = self.resources.hash_one(key.as_str());
        let facts = self.facts.get(&resource);
        if let Some(until) = facts.as_ref().and_then(|facts| facts.bypass_until)
            && Instant::now() < until
        {
            return None;
        }
        if let Some(key_fn) = &config.key_fn {
            // Prefixed by the method, and marked so that a custom key never
            // equals a built one.
            let custom = key_fn(head)?;
            key.clear();
            key.push_str(head.method.as_str());
            key.push_str(" custom:");
            key.push_str(&custom);
        }
        let vary = facts.map(|facts| facts.vary).unwrap_or_default();
        rules::push_header_values(&mut key, &head.headers, &config.key_headers);
        rules::push_header_values(&mut key, &head.headers, vary.iter());
        rules::push_header_values(&mut key, &head.headers, rules::conditions_of(&head.headers));
        Some((key, resource))
    }

    /// Updates what is known about `resource`.
    pub(crate) fn learn(&self, resource: u64, update: impl FnOnce(&mut Facts)) {
        let mut facts = self.facts.get(&resource).unwrap_or_default();
        update(&mut facts);
        self.facts.insert(resource, facts);
    }
}
