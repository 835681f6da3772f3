//! Where a consumer's `pull` starts looking (only with eventq in `shared_preload_libraries`).
//!
//! A pull takes the lowest available tasks of its consumer from the partial index of
//! available tasks. Every task leased since the last vacuum leaves a dead entry at the low
//! end of that index, and a scan from the start walks all of them: page after page of
//! entries that lead nowhere. While anything holds an old snapshot (a long transaction, a
//! replica's feedback) vacuum removes none of them, and every pull gets slower than the
//! one before. So each consumer has a *start* in shared memory: a seq below which it has
//! no available task. Pulls scan from there.
//!
//! The start is only ever a lower bound, kept by two rules:
//! - **Raised** by a pull that leased something, to the lowest seq it leased: its scan went
//!   up the index from the old start and took the lowest available tasks it could lock.
//!   Only in READ COMMITTED (its snapshot is taken after it read the start) and only if no
//!   lowering happened since it read the start (an epoch, compared under a spinlock).
//!   Tasks it skipped because another pull held them either end up leased, or that pull
//!   rolls back, which lowers the start (below) after its locks are gone.
//! - **Lowered to 0** (reset) whenever a task of the consumer may have become available
//!   below it: an expired lease or a due retry made available, a key handed on, a redrive,
//!   key ordering turned off, a replay, a routing gap filled, a pull rolled back. The
//!   statements that can do so are marked in `storage` (`Statement::releasing`); a
//!   transaction that ran one resets the consumer's start when it commits, after its
//!   changes are visible, and its own later pulls start at 0. Prepared transactions are
//!   reset for at COMMIT/ROLLBACK PREPARED (`launcher`). New tasks of new events always
//!   have a higher seq than any task before them and need nothing.
//!
//! A pull that reads a start of 0 scans the whole index, as without this module; so does
//! every pull without preloading, of a consumer beyond the table's capacity, or after a
//! restart (shared memory starts empty). Maintenance resets the starts of its database on
//! every pass, so that a change made behind eventq's back (a DBA's UPDATE of the task table)
//! is seen within a pass.

use pgrx::pg_sys;
use pgrx::{pg_guard, pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Consumers (of all databases) that can have a start; the others scan from 0.
const ENTRIES: usize = 4096;
/// How far a lookup probes from a consumer's home entry.
const PROBES: usize = 32;
const FREE: u64 = 0;
const DELETED: u64 = u64::MAX;

#[derive(Default)]
pub struct Entry {
    /// (database oid << 32) | consumer id; FREE or DELETED.
    key: AtomicU64,
    lock: AtomicBool,
    /// Written under `lock`.
    start: AtomicI64,
    epoch: AtomicU64,
}

pub struct Starts {
    entries: [Entry; ENTRIES],
}

impl Default for Starts {
    fn default() -> Starts {
        Starts { entries: std::array::from_fn(|_| Entry::default()) }
    }
}

unsafe impl PGRXSharedMemory for Starts {}

static SHARED: PgAtomic<Starts> = unsafe { PgAtomic::new(c"eventq pull starts") };

/// Requests the table; called from `_PG_init` while shared_preload_libraries loads.
pub fn init_shared_memory() {
    pg_shmem_init!(SHARED);
}

fn key_of(consumer: i32) -> u64 {
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() } as u64;
    (database << 32) | (consumer as u32 as u64)
}

fn home(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % ENTRIES
}

/// The consumer's entry, claimed if `claim` and it has none.
fn entry(consumer: i32, claim: bool) -> Option<&'static Entry> {
    if !crate::wakeup::preloaded() || unsafe { pg_sys::MyDatabaseId.to_u32() } == 0 {
        return None;
    }
    let entries = &SHARED.get().entries;
    let key = key_of(consumer);
    let first = home(key);
    let mut reusable = None;
    for i in 0..PROBES {
        let e = &entries[(first + i) % ENTRIES];
        match e.key.load(Ordering::Acquire) {
            k if k == key => return Some(e),
            FREE => {
                if !claim {
                    return None;
                }
                let slot = reusable.unwrap_or(e);
                return take(slot, key).or_else(|| entry(consumer, false));
            }
            DELETED if reusable.is_none() => reusable = Some(e),
            _ => {}
        }
    }
    match reusable {
        Some(slot) if claim => take(slot, key).or_else(|| entry(consumer, false)),
        _ => None,
    }
}

/// Claims a free or deleted entry for `key`, starting at 0.
fn take(e: &'static Entry, key: u64) -> Option<&'static Entry> {
    lock(e);
    let current = e.key.load(Ordering::Acquire);
    let taken = if current == FREE || current == DELETED {
        e.start.store(0, Ordering::Relaxed);
        e.epoch.fetch_add(1, Ordering::AcqRel);
        e.key.store(key, Ordering::Release);
        true
    } else {
        false
    };
    unlock(e);
    taken.then_some(e)
}

fn lock(e: &Entry) {
    while e.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        std::hint::spin_loop();
    }
}

fn unlock(e: &Entry) {
    e.lock.store(false, Ordering::Release);
}

/// Where a pull of `consumer` starts, and what it needs to raise it afterwards.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub seq: i64,
    epoch: Option<u64>,
}

/// Read before the pull's statement takes its snapshot.
pub fn read(consumer: i32) -> Start {
    let unchanged = Start { seq: 0, epoch: None };
    if RELEASED.with(|r| r.borrow().contains(&consumer))
        || crate::storage::isolation::uses_transaction_snapshot()
    {
        return unchanged;
    }
    let Some(e) = entry(consumer, true) else { return unchanged };
    lock(e);
    let start = Start { seq: e.start.load(Ordering::Relaxed), epoch: Some(e.epoch.load(Ordering::Relaxed)) };
    unlock(e);
    start
}

/// After the pull leased tasks, the lowest of them being `lowest`.
pub fn raise(consumer: i32, from: Start, lowest: i64) {
    let Some(epoch) = from.epoch else { return };
    let Some(e) = entry(consumer, false) else { return };
    lock(e);
    if e.epoch.load(Ordering::Relaxed) == epoch && e.start.load(Ordering::Relaxed) < lowest {
        e.start.store(lowest, Ordering::Relaxed);
    }
    unlock(e);
}

fn reset(e: &Entry) {
    lock(e);
    e.start.store(0, Ordering::Relaxed);
    e.epoch.fetch_add(1, Ordering::AcqRel);
    unlock(e);
}

/// Resets the start of `consumer` now.
pub fn reset_consumer(consumer: i32) {
    if let Some(e) = entry(consumer, false) {
        reset(e);
    }
}

/// Resets the start of every consumer of this database (maintenance, COMMIT PREPARED).
pub fn reset_database() {
    if !crate::wakeup::preloaded() {
        return;
    }
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() } as u64;
    for e in SHARED.get().entries.iter() {
        let k = e.key.load(Ordering::Acquire);
        if k != FREE && k != DELETED && k >> 32 == database {
            reset(e);
        }
    }
}

/// The consumer is gone: its entry can be reused.
pub fn forget(consumer: i32) {
    if let Some(e) = entry(consumer, false) {
        lock(e);
        e.key.store(DELETED, Ordering::Release);
        e.epoch.fetch_add(1, Ordering::AcqRel);
        unlock(e);
    }
}

thread_local! {
    /// Consumers whose tasks this transaction may have made available below their start.
    static RELEASED: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// Consumers this transaction leased tasks of: if it rolls back, they are available again.
    static LEASED: RefCell<Vec<(i32, i32)>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// A statement of this transaction may have made tasks of `consumer` available.
pub fn released(consumer: i32) {
    if !crate::wakeup::preloaded() {
        return;
    }
    RELEASED.with(|r| {
        let mut r = r.borrow_mut();
        if !r.contains(&consumer) {
            r.push(consumer);
        }
    });
    register_callback();
}

/// This transaction leased tasks of `consumer`; the subtransaction level says which
/// rollback gives them back.
pub fn leased(consumer: i32) {
    if !crate::wakeup::preloaded() {
        return;
    }
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    LEASED.with(|l| l.borrow_mut().push((consumer, level)));
    register_callback();
}

fn register_callback() {
    if !CALLBACK_REGISTERED.with(|r| r.replace(true)) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
    }
}

/// Runs after the transaction's end is visible to others (both XACT_EVENT_COMMIT and
/// XACT_EVENT_ABORT follow ProcArrayEndTransaction: a rolled-back pull's tasks are unlocked
/// by then). Touches only shared atomics: it must not fail.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            for consumer in RELEASED.with(|r| std::mem::take(&mut *r.borrow_mut())) {
                reset_consumer(consumer);
            }
            LEASED.with(|l| l.borrow_mut().clear());
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            RELEASED.with(|r| r.borrow_mut().clear());
            for (consumer, _) in LEASED.with(|l| std::mem::take(&mut *l.borrow_mut())) {
                reset_consumer(consumer);
            }
        }
        // Its changes become visible, or its leases are given back, at COMMIT or ROLLBACK
        // PREPARED, which reset the database's starts (launcher's utility hook).
        XACT_EVENT_PREPARE => {
            RELEASED.with(|r| r.borrow_mut().clear());
            LEASED.with(|l| l.borrow_mut().clear());
        }
        _ => {}
    }
}

/// A rolled-back subtransaction gives back the tasks it leased (its xid is no longer
/// running when this runs: RecordTransactionAbort came first).
#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    _mine: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
        let given_back: Vec<i32> = LEASED.with(|l| {
            let mut l = l.borrow_mut();
            let back = l.iter().filter(|(_, at)| *at >= level).map(|(c, _)| *c).collect();
            l.retain(|(_, at)| *at < level);
            back
        });
        for consumer in given_back {
            reset_consumer(consumer);
        }
    }
}
