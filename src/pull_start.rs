//! Where a consumer's `pull` starts looking (only with eventq in `shared_preload_libraries`).
//!
//! A pull takes the lowest available tasks of its consumer from the partial index of
//! available tasks. Every task leased since the last vacuum leaves a dead entry at the low
//! end of that index, and a scan from the start walks all of them: page after page of
//! entries that lead nowhere. While anything holds an old snapshot (a long transaction, a
//! replica's feedback) vacuum removes none of them, and every pull gets slower than the
//! one before. So each consumer has a *start* in shared memory, a seq below which it has no
//! available task, and pulls scan from there.
//!
//! The start is a lower bound, kept by three rules:
//! - **Raised** by a pull to the lowest seq its own snapshot sees available (LEASE computes
//!   it in the same statement). Rows other transactions have locked or changed without
//!   committing yet still look available to it: a pull in progress elsewhere, one rolled
//!   back (wholly, to a savepoint, or prepared), retention or a DBA holding rows, all keep
//!   the start at or below them. Only in READ COMMITTED, whose statement snapshot is taken
//!   after the start was read, and only if no reset happened since it was read (an epoch,
//!   compared under the entry's spinlock).
//! - **Reset to 0** when a transaction that may have made tasks of the consumer available
//!   commits (after its changes are visible): an expired lease or a due retry made
//!   available, a key handed on, a redrive, key ordering turned off, a replay, a routing gap
//!   filled. The code that can do so calls `released`; that transaction's own later pulls
//!   start at 0. COMMIT PREPARED resets the whole database (`launcher`). New tasks of new
//!   events always have a higher seq than any task before them and need nothing.
//! - **Reset by age**: a start not reset for `RESET_AFTER` is reset by the next pull that
//!   reads it, so that a change made behind eventq's back (a DBA's UPDATE of the task table)
//!   is seen within that time, with or without a background worker.
//!
//! A start of 0 scans the whole index, as without this module; so does every pull without
//! preloading, of a consumer beyond the table's capacity, or after a restart (shared memory
//! starts empty). Key-ordered consumers hand a key on at most acks, and so mostly start at 0.
//!
//! **Timer passes** (expired leases, due retries: `tasks::rescue_and_promote`, run before
//! every pull) have the same problem in the indexes of running and of scheduled tasks,
//! ordered by time: every acked task leaves a dead entry there, and once its lease time has
//! passed the entry lies in the range "expired before now" that each pass walks. Under a
//! snapshot held for minutes that was hundreds of thousands of entries per pull. So each
//! entry also keeps `timers_from`, a time below which a pass found nothing left to do, and
//! passes look only at times from there. It is a claim about committed rows a pass could
//! lock; a lease or retry whose time lies before it can still appear (committed later by a
//! transaction that started earlier, or rolled back after a pass skipped its locked row). So
//! the claim is made a second before the pass's start, which covers short transactions, and
//! every `FULL_TIMER_PASS_EVERY` one pass starts from the beginning and replaces it: a timer
//! that turns up late fires at most that much after it would have otherwise.

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
/// How long a start lives without a reset (microseconds).
const RESET_AFTER: i64 = 1_000_000;
/// How often a timer pass of a consumer starts from the beginning (microseconds).
const FULL_TIMER_PASS_EVERY: i64 = 5_000_000;
/// A timer pass from the beginning (TimestampTz's -infinity).
pub const FROM_THE_BEGINNING: i64 = i64::MIN;

#[derive(Default)]
pub struct Entry {
    /// (database oid << 32) | consumer id; FREE or DELETED. Changed under `lock`.
    key: AtomicU64,
    lock: AtomicBool,
    // Read and written under `lock`:
    start: AtomicI64,
    epoch: AtomicU64,
    reset_at: AtomicI64,
    timers_from: AtomicI64,
    full_timer_pass_at: AtomicI64,
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

fn database() -> u64 {
    unsafe { pg_sys::MyDatabaseId.to_u32() as u64 }
}

fn key_of(consumer: i32) -> u64 {
    (database() << 32) | (consumer as u32 as u64)
}

fn home(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % ENTRIES
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The consumer's entry, claimed if `claim` and it has none.
fn entry(consumer: i32, claim: bool) -> Option<&'static Entry> {
    if !crate::wakeup::preloaded() || database() == 0 {
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
                return take(reusable.unwrap_or(e), key).or_else(|| entry(consumer, false));
            }
            DELETED if reusable.is_none() => reusable = Some(e),
            _ => {}
        }
    }
    match reusable {
        Some(e) if claim => take(e, key).or_else(|| entry(consumer, false)),
        _ => None,
    }
}

/// Claims a free or deleted entry for `key`, starting at 0.
fn take(e: &'static Entry, key: u64) -> Option<&'static Entry> {
    lock(e);
    let current = e.key.load(Ordering::Relaxed);
    let taken = current == FREE || current == DELETED;
    if taken {
        reset_locked(e);
        e.timers_from.store(FROM_THE_BEGINNING, Ordering::Relaxed);
        e.full_timer_pass_at.store(i64::MIN, Ordering::Relaxed);
        e.key.store(key, Ordering::Release);
    }
    unlock(e);
    taken.then_some(e)
}

fn lock(e: &Entry) {
    crate::spinlock::lock(&e.lock);
}

fn unlock(e: &Entry) {
    crate::spinlock::unlock(&e.lock);
}

fn reset_locked(e: &Entry) {
    e.start.store(0, Ordering::Relaxed);
    e.epoch.fetch_add(1, Ordering::Relaxed);
    e.reset_at.store(now(), Ordering::Relaxed);
}

/// Where a pull starts, and what it needs to raise it afterwards.
#[derive(Clone, Copy)]
pub struct Start {
    pub seq: i64,
    read: Option<(&'static Entry, u64, u64)>,
}

/// Read before the pull's statement takes its snapshot.
pub fn read(consumer: i32) -> Start {
    let from_zero = Start { seq: 0, read: None };
    if RELEASED.with(|r| r.borrow().contains(&consumer))
        || crate::storage::isolation::uses_transaction_snapshot()
    {
        return from_zero;
    }
    let Some(e) = entry(consumer, true) else { return from_zero };
    let key = key_of(consumer);
    lock(e);
    if e.key.load(Ordering::Relaxed) != key {
        unlock(e);
        return from_zero;
    }
    // (a clock set back counts as time passed)
    if !(0..=RESET_AFTER).contains(&(now() - e.reset_at.load(Ordering::Relaxed))) {
        reset_locked(e);
    }
    let start = Start {
        seq: e.start.load(Ordering::Relaxed),
        read: Some((e, key, e.epoch.load(Ordering::Relaxed))),
    };
    unlock(e);
    start
}

/// After a pull whose snapshot saw no available task of the consumer below `lowest`.
pub fn raise(from: Start, lowest: i64) {
    let Some((e, key, epoch)) = from.read else { return };
    lock(e);
    if e.key.load(Ordering::Relaxed) == key
        && e.epoch.load(Ordering::Relaxed) == epoch
        && e.start.load(Ordering::Relaxed) < lowest
    {
        e.start.store(lowest, Ordering::Relaxed);
    }
    unlock(e);
}

/// Where a timer pass of the consumer starts (a TimestampTz), and whether that is the
/// beginning. At most one pass per `FULL_TIMER_PASS_EVERY` is told to start there.
pub fn timers_from(consumer: i32) -> (i64, bool) {
    let full = (FROM_THE_BEGINNING, true);
    let Some(e) = entry(consumer, true) else { return full };
    lock(e);
    if e.key.load(Ordering::Relaxed) != key_of(consumer) {
        unlock(e);
        return full;
    }
    let t = now();
    // (a clock set back counts as time passed)
    let from = if !(0..=FULL_TIMER_PASS_EVERY)
        .contains(&t.saturating_sub(e.full_timer_pass_at.load(Ordering::Relaxed)))
    {
        e.full_timer_pass_at.store(t, Ordering::Relaxed);
        full
    } else {
        (e.timers_from.load(Ordering::Relaxed), false)
    };
    unlock(e);
    from
}

/// A timer pass left no timer of the consumer before `below` (`timers_from` explains the
/// second of margin the caller has taken off). If the pass changed tasks, that holds once
/// its transaction commits.
pub fn timers_passed(consumer: i32, full: bool, below: i64, changed: bool) {
    if !crate::wakeup::preloaded() {
        return;
    }
    if changed {
        let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
        PASSED.with(|p| p.borrow_mut().push((consumer, full, below, subtransaction)));
        register_callback();
    } else {
        claim_timers(consumer, full, below);
    }
}

fn claim_timers(consumer: i32, full: bool, below: i64) {
    let Some(e) = entry(consumer, false) else { return };
    lock(e);
    if e.key.load(Ordering::Relaxed) == key_of(consumer)
        && (full || e.timers_from.load(Ordering::Relaxed) < below)
    {
        // A pass from the beginning replaces the claim: one made before the clock was set
        // back may lie in the future.
        e.timers_from.store(below, Ordering::Relaxed);
    }
    unlock(e);
}

fn reset_consumer(consumer: i32) {
    if let Some(e) = entry(consumer, false) {
        lock(e);
        reset_locked(e);
        unlock(e);
    }
}

/// Resets the start of every consumer of this database (COMMIT PREPARED).
pub fn reset_database() {
    each_of_database(database(), reset_locked);
}

/// Forgets the consumers of a database: it was dropped, or eventq is created there anew
/// (its consumer ids start over).
pub fn forget_database(oid: u32) {
    each_of_database(oid as u64, |e| {
        reset_locked(e);
        e.timers_from.store(FROM_THE_BEGINNING, Ordering::Relaxed);
        e.key.store(DELETED, Ordering::Release);
    });
}

fn each_of_database(database: u64, f: impl Fn(&Entry)) {
    if !crate::wakeup::preloaded() || database == 0 {
        return;
    }
    for e in SHARED.get().entries.iter() {
        let k = e.key.load(Ordering::Acquire);
        if k != FREE && k != DELETED && k >> 32 == database {
            lock(e);
            if e.key.load(Ordering::Relaxed) == k {
                f(e);
            }
            unlock(e);
        }
    }
}

/// The consumer is gone: its entry can be reused.
pub fn forget(consumer: i32) {
    let key = key_of(consumer);
    if let Some(e) = entry(consumer, false) {
        lock(e);
        if e.key.load(Ordering::Relaxed) == key {
            reset_locked(e);
            e.key.store(DELETED, Ordering::Release);
        }
        unlock(e);
    }
}

thread_local! {
    /// Consumers whose tasks this transaction may have made available below their start.
    static RELEASED: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// Timer passes of this transaction that changed tasks: (consumer, full, below, and the
    /// subtransaction whose rollback undoes them).
    static PASSED: RefCell<Vec<(i32, bool, i64, pg_sys::SubTransactionId)>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// This transaction may have made tasks of `consumer` available.
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

fn register_callback() {
    if !CALLBACK_REGISTERED.with(Cell::get) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
        CALLBACK_REGISTERED.with(|r| r.set(true));
    }
}

/// A timer pass in a subtransaction that rolls back changed nothing; one in a subtransaction
/// that commits is its parent's now.
#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subtransaction: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            PASSED.with(|p| p.borrow_mut().retain(|e| e.3 != subtransaction))
        }
        SUBXACT_EVENT_COMMIT_SUB => PASSED.with(|p| {
            for e in p.borrow_mut().iter_mut().filter(|e| e.3 == subtransaction) {
                e.3 = parent;
            }
        }),
        _ => {}
    }
}

/// Runs after the commit is visible to others (XACT_EVENT_COMMIT follows
/// ProcArrayEndTransaction). Touches only shared atomics: it must not fail. A transaction
/// that rolls back made nothing available; a prepared one is seen to at COMMIT PREPARED.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            for consumer in RELEASED.with(|r| std::mem::take(&mut *r.borrow_mut())) {
                reset_consumer(consumer);
            }
            for (consumer, full, below, _) in PASSED.with(|p| std::mem::take(&mut *p.borrow_mut()))
            {
                claim_timers(consumer, full, below);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            RELEASED.with(|r| r.borrow_mut().clear());
            PASSED.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}
