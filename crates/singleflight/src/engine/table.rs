// The table of flights in progress, shared by the blocking and async groups.
//
// Invariants:
// - At most one *live* (not forgotten) slot per key. `forget` flags a slot
//   instead of removing it, so the flight's own driver can still find it
//   (and its waiters) when it finishes; a new call for that key then inserts
//   a second, live slot beside it.
// - A slot is identified by `(hash, id)`; ids are never reused within a
//   table, so a finishing flight removes its own slot and never a newer
//   flight's, whatever `forget` did meanwhile.
// - A call hashes its key once, outside the lock. The hash is not stored in
//   the slot (a smaller slot is less memory per flight): when a shard's table
//   grows or tidies up, it hashes its keys again under the shard lock. That,
//   and `Eq` in lookups, is the only user code that runs under a group lock.
// - The flights are split over `Shards` by their hash, each with its own
//   lock, so calls for different keys rarely contend. Everything about one
//   key (its slots, the memo write check) happens under its one shard lock.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use hashbrown::HashTable;

use crate::loom::lock;
use crate::loom::sync::{Mutex, MutexGuard};

/// The group's flights, split into independently locked shards.
pub(crate) struct Shards<K, F> {
    shards: Box<[Shard<K, F>]>,
    mask: usize,
}

/// One shard, on a cache line of its own so that two cores working on
/// different shards do not contend for the line.
#[repr(align(128))]
struct Shard<K, F>(Mutex<Table<K, F>>);

impl<K, F> Shards<K, F> {
    pub(crate) fn new() -> Self {
        // A few shards per core keeps contention rare without making an idle
        // group large (128 bytes a shard). The core count is read once per
        // process: on Linux it reads cgroup files.
        static COUNT: OnceLock<usize> = OnceLock::new();
        let count = if cfg!(singleflight_loom) {
            2
        } else {
            *COUNT.get_or_init(|| {
                std::thread::available_parallelism()
                    .map_or(1, std::num::NonZero::get)
                    .saturating_mul(4)
                    .clamp(4, 64)
                    .next_power_of_two()
            })
        };
        Self {
            shards: (0..count)
                .map(|_| Shard(Mutex::new(Table::new())))
                .collect(),
            mask: count - 1,
        }
    }

    /// Locks the shard of the key whose hash is `hash`.
    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Table<K, F>> {
        lock(&self.shard(hash).0)
    }

    /// Where the shard of `hash` lives: with a flight's id, it names the
    /// flight among every group of the process.
    pub(crate) fn place(&self, hash: u64) -> usize {
        std::ptr::from_ref(self.shard(hash)) as usize
    }

    fn shard(&self, hash: u64) -> &Shard<K, F> {
        // Bits the shard's own table does not use to place a slot (hashbrown
        // takes the low bits for the bucket and the top seven as a tag).
        let index = (hash >> 32) as usize & self.mask;
        &self.shards[index]
    }

    /// Number of flights in progress over all shards, forgotten ones included.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.0).len()).sum()
    }
}

/// One flight's entry in the table.
pub(crate) struct Slot<K, F> {
    id: u64,
    forgotten: bool,
    /// The flight's waiters: its callers but one. The callers are the one
    /// driving its work (counted even while the work waits for a follower
    /// to take it over) and every follower that joined and has not left.
    /// The group's one count of a flight's callers; starting at 0 keeps a
    /// new slot all zeroes but its key.
    pub(crate) waiters: u32,
    /// Whether this flight is already a retry (`ErrorPolicy::RetryOnce`).
    pub(crate) retried: bool,
    pub(crate) key: K,
    /// Shared state of the flight, created lazily by its first follower, so
    /// a call that nobody joins allocates nothing beyond its slot.
    pub(crate) flight: Option<F>,
    /// The flight's span (async group, feature `tracing`), for its waiters'
    /// spans to follow from. An id, not a `Span`: cloning one under the
    /// table lock would call the subscriber there.
    #[cfg(feature = "tracing")]
    pub(crate) span: Option<tracing::Id>,
}

impl<K, F> Slot<K, F> {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether `forget` (or `invalidate`) was called on this flight: it must
    /// not write its result into the memo.
    pub(crate) fn is_forgotten(&self) -> bool {
        self.forgotten
    }
}

/// Flights in progress, keyed by `K`.
pub(crate) struct Table<K, F> {
    slots: HashTable<Slot<K, F>>,
    next_id: u64,
}

impl<K, F> Table<K, F> {
    pub(crate) const fn new() -> Self {
        Self {
            slots: HashTable::new(),
            next_id: 0,
        }
    }

    /// The live slot for `key`, if a flight for it is in progress.
    pub(crate) fn live_mut<Q>(&mut self, hash: u64, key: &Q) -> Option<&mut Slot<K, F>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.slots
            .find_mut(hash, |slot| !slot.forgotten && slot.key.borrow() == key)
    }

    /// Inserts a live slot for a new flight and returns its id.
    pub(crate) fn insert(&mut self, hash: u64, key: K, hasher: &impl BuildHasher) -> u64
    where
        K: Hash,
    {
        let id = self.next_id;
        self.next_id += 1;
        let slot = Slot {
            id,
            forgotten: false,
            waiters: 0,
            retried: false,
            key,
            flight: None,
            #[cfg(feature = "tracing")]
            span: None,
        };
        self.slots
            .insert_unique(hash, slot, |slot| hasher.hash_one(&slot.key));
        id
    }

    /// The slot of flight `id`, live or forgotten.
    pub(crate) fn get_mut(&mut self, hash: u64, id: u64) -> Option<&mut Slot<K, F>> {
        self.slots.find_mut(hash, |slot| slot.id == id)
    }

    /// Removes and returns the slot of flight `id`.
    pub(crate) fn remove(&mut self, hash: u64, id: u64) -> Option<Slot<K, F>> {
        match self.slots.find_entry(hash, |slot| slot.id == id) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    /// Flags the live slot for `key` as forgotten; returns whether there was one.
    pub(crate) fn forget<Q>(&mut self, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.live_mut(hash, key) {
            Some(slot) => {
                slot.forgotten = true;
                true
            }
            None => false,
        }
    }

    /// The live slot for `key`, if a flight for it is in progress.
    pub(crate) fn live<Q>(&self, hash: u64, key: &Q) -> Option<&Slot<K, F>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.slots
            .find(hash, |slot| !slot.forgotten && slot.key.borrow() == key)
    }

    /// Whether a live flight for `key` is in progress.
    pub(crate) fn contains<Q>(&self, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.live(hash, key).is_some()
    }

    /// Number of flights in progress, forgotten ones included.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}
