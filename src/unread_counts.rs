//! What log consumers' unread events were last counted to, shared by every backend (only
//! with eventq in `shared_preload_libraries`).
//!
//! `eventq.consumers` shows a log consumer's lag: the events after its cursor that its
//! filter lets through. A consumer that does not read (stopped, or whose filter matches
//! nothing) has its whole backlog counted at every read; `storage::log::unread` keeps what
//! it counted, so that the next read counts only the events since. Kept per backend, that
//! helped only a dashboard that polls on one connection: one that connects for each read
//! (a command line, a pooler handing out fresh sessions) counted everything every time,
//! 1.1–1.4 s for a filter over a million events. Kept here, one backend's count serves
//! all of them.
//!
//! A count is a claim about committed events up to a seq, which never change once below the
//! log's head, only go (retention): `storage::log::unread` checks the stream's total before
//! it uses one, whoever counted it, and counts afresh if events went. Slots are a cache:
//! one per hash of (database, filter), the last count written wins, a count that is
//! not found is counted again.

use pgrx::pg_sys;
use pgrx::{pg_guard, pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

const SLOTS: usize = 1024;

#[derive(Default)]
struct Slot {
    lock: AtomicBool,
    // Read and written under `lock`:
    /// 0 (no key is) while no count has been written.
    key: AtomicU64,
    from: AtomicI64,
    through: AtomicI64,
    matching: AtomicI64,
    has_oldest: AtomicBool,
    oldest_at: AtomicI64,
    total: AtomicI64,
}

pub struct Slots {
    slots: [Slot; SLOTS],
}

impl Default for Slots {
    fn default() -> Slots {
        Slots { slots: std::array::from_fn(|_| Slot::default()) }
    }
}

unsafe impl PGRXSharedMemory for Slots {}

static SHARED: PgAtomic<Slots> = unsafe { PgAtomic::new(c"eventq unread counts") };

/// Requests the slots; called from `_PG_init` while shared_preload_libraries loads.
pub fn init_shared_memory() {
    pg_shmem_init!(SHARED);
}

/// A count: the events the filter lets through in `(from, through]`, the earliest
/// publication time among them (a TimestampTz), and the stream's events up to `through`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub from: i64,
    pub through: i64,
    pub matching: i64,
    pub oldest_at: Option<i64>,
    pub total: i64,
}

/// The key of a filter in this database; `None` without the shared slots.
pub fn key(filter: &impl Hash) -> Option<u64> {
    if !crate::wakeup::preloaded() {
        return None;
    }
    // SipHash with fixed keys: every backend runs this same library, and gets the same key.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    unsafe { pg_sys::MyDatabaseId }.to_u32().hash(&mut h);
    filter.hash(&mut h);
    Some(h.finish().max(1))
}

fn slot(key: u64) -> &'static Slot {
    &SHARED.get().slots[(key % SLOTS as u64) as usize]
}

fn lock(s: &Slot) {
    crate::spinlock::lock(&s.lock);
}

fn unlock(s: &Slot) {
    crate::spinlock::unlock(&s.lock);
}

pub fn get(key: u64) -> Option<Count> {
    let s = slot(key);
    lock(s);
    let count = (s.key.load(Ordering::Relaxed) == key).then(|| Count {
        from: s.from.load(Ordering::Relaxed),
        through: s.through.load(Ordering::Relaxed),
        matching: s.matching.load(Ordering::Relaxed),
        oldest_at: s
            .has_oldest
            .load(Ordering::Relaxed)
            .then(|| s.oldest_at.load(Ordering::Relaxed)),
        total: s.total.load(Ordering::Relaxed),
    });
    unlock(s);
    count
}

pub fn put(key: u64, count: Count) {
    let s = slot(key);
    lock(s);
    s.from.store(count.from, Ordering::Relaxed);
    s.through.store(count.through, Ordering::Relaxed);
    s.matching.store(count.matching, Ordering::Relaxed);
    s.has_oldest.store(count.oldest_at.is_some(), Ordering::Relaxed);
    s.oldest_at.store(count.oldest_at.unwrap_or(0), Ordering::Relaxed);
    s.total.store(count.total, Ordering::Relaxed);
    s.key.store(key, Ordering::Relaxed);
    unlock(s);
}
