//! What backends tell each other through shared memory (only with eventq in
//! `shared_preload_libraries`): a slot per database, holding
//! - the background worker's latch, which a publishing commit sets, so the worker drains
//!   within milliseconds instead of on a poll;
//! - two counters that give readers "read after commit" cheaply. `published` counts the
//!   publishing commits of the database, each counted just after it became visible;
//!   `drained` is the highest `published` value read by a drain before its snapshot, set
//!   once that drain has committed. A reader that reads `published = n` and later sees
//!   `drained >= n` knows that everything committed before it started is in the log, and
//!   reads it with a snapshot taken after that. No counting is lost to a crash: after a
//!   restart both start from zero.
//!
//! Without preloading there is no slot and no worker: readers drain by themselves, and find
//! out whether they need to by looking at staging (see `api::drain_before_reading`).

use pgrx::pg_sys;
use pgrx::{pg_guard, pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Databases that can have a slot. Databases beyond it work as without preloading.
pub const SLOTS: usize = 32;

#[derive(Default)]
pub struct DatabaseSlot {
    /// The database's oid; 0 while the slot is free.
    database: AtomicU32,
    /// The worker's `MyLatch` (inside its PGPROC, in shared memory); 0 without a worker.
    latch: AtomicUsize,
    worker_pid: AtomicI32,
    /// Whether the worker drains (it is enabled and the extension exists in its database).
    serving: AtomicBool,
    /// When the worker last went round its loop (Postgres timestamp, microseconds).
    heartbeat: AtomicI64,
    published: AtomicU64,
    drained: AtomicU64,
}

#[derive(Default)]
pub struct Slots {
    /// Held while a slot is being claimed, so that a database never gets two.
    claiming: AtomicBool,
    slots: [DatabaseSlot; SLOTS],
}

unsafe impl PGRXSharedMemory for Slots {}

static SHARED: PgAtomic<Slots> = unsafe { PgAtomic::new(c"eventq database slots") };
/// Set in `_PG_init` of the postmaster when preloading; inherited by every process it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests the slots; called from `_PG_init` while shared_preload_libraries loads.
pub fn init_shared_memory() {
    pg_shmem_init!(SHARED);
    PRELOADED.store(true, Ordering::Relaxed);
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

thread_local! {
    /// This backend's slot (a backend serves one database for its life).
    static MY_SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The slot of this backend's database, claimed on first use; `None` without preloading or
/// when every slot is taken.
fn slot() -> Option<&'static DatabaseSlot> {
    if !preloaded() || my_database() == 0 {
        return None;
    }
    let shared = SHARED.get();
    if let Some(i) = MY_SLOT.with(Cell::get) {
        return Some(&shared.slots[i]);
    }
    let database = my_database();
    let found = shared.slots.iter().position(|s| s.database.load(Ordering::Acquire) == database);
    let index = match found {
        Some(i) => i,
        None => {
            while shared
                .claiming
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            let existing =
                shared.slots.iter().position(|s| s.database.load(Ordering::Acquire) == database);
            let claimed = existing.or_else(|| {
                let free = shared.slots.iter().position(|s| s.database.load(Ordering::Acquire) == 0)?;
                let s = &shared.slots[free];
                // One publishing commit counted from the start: after a restart (or a
                // promotion), what was staged before is undrained until a drain says so.
                s.published.store(1, Ordering::SeqCst);
                s.drained.store(0, Ordering::SeqCst);
                s.latch.store(0, Ordering::SeqCst);
                s.serving.store(false, Ordering::SeqCst);
                s.database.store(database, Ordering::Release);
                Some(free)
            });
            shared.claiming.store(false, Ordering::Release);
            claimed?
        }
    };
    MY_SLOT.with(|s| s.set(Some(index)));
    Some(&shared.slots[index])
}

/// Worker side, while enabled: publishers in this database wake this process, even while
/// it idles for want of the extension (so that it notices a new extension at the first
/// publish).
pub fn attach() {
    if let Some(slot) = slot() {
        slot.worker_pid.store(unsafe { pg_sys::MyProcPid }, Ordering::Relaxed);
        slot.latch.store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
    }
}

/// Worker side, at exit or when disabled.
pub fn detach() {
    if let Some(slot) = slot() {
        slot.serving.store(false, Ordering::Release);
        slot.latch.store(0, Ordering::Release);
        slot.worker_pid.store(0, Ordering::Relaxed);
    }
}

/// Worker side: whether it drains this database now.
pub fn set_serving(serving: bool) {
    if let Some(slot) = slot() {
        slot.serving.store(serving, Ordering::Release);
        beat();
    }
}

/// Worker side: still alive.
pub fn beat() {
    if let Some(slot) = slot() {
        slot.heartbeat.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
    }
}

/// Whether a live worker drains this database. A worker that has not gone round its loop
/// for a while (a long catch-up drain, or a hang) does not count.
pub fn worker_serves_this_database() -> bool {
    let Some(slot) = slot() else { return false };
    if !slot.serving.load(Ordering::Acquire) || slot.latch.load(Ordering::Acquire) == 0 {
        return false;
    }
    let silence_us =
        unsafe { pg_sys::GetCurrentTimestamp() } - slot.heartbeat.load(Ordering::Relaxed);
    let allowed_us = 10_000_000 + 2 * crate::gucs::maintenance_interval().as_micros() as i64;
    silence_us < allowed_us
}

/// The number of publishing commits of this database so far; `None` without a slot.
pub fn published() -> Option<u64> {
    slot().map(|s| s.published.load(Ordering::SeqCst))
}

/// Whether every publishing commit up to `target` has been drained by a committed drain.
pub fn drained_through(target: u64) -> bool {
    slot().is_some_and(|s| s.drained.load(Ordering::SeqCst) >= target)
}

pub fn wake_worker() {
    let Some(slot) = slot() else { return };
    let latch = slot.latch.load(Ordering::Acquire);
    if latch != 0 {
        // The latch lives in the worker's PGPROC, which stays mapped even if the worker has
        // just exited: at worst this wakes whoever reuses that PGPROC, for nothing.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Sleeps a millisecond on this backend's latch; a cancel or a terminate is served.
pub fn nap() {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            1,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        if pg_sys::InterruptPending != 0 {
            pg_sys::ProcessInterrupts();
        }
    }
}

thread_local! {
    static PUBLISHED: Cell<bool> = const { Cell::new(false) };
    /// A drain of this transaction read `published` = n before its snapshot, at
    /// (sub)transaction nesting level l: (n, l).
    static DRAINED: Cell<Option<(u64, i32)>> = const { Cell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn register_callback() {
    if !CALLBACK_REGISTERED.with(|r| r.replace(true)) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
    }
}

/// Publisher side: this transaction published (or changed a consumer in a way a drain must
/// see); count it and wake the worker when it commits.
pub fn published_in_this_transaction() {
    if slot().is_none() {
        return;
    }
    PUBLISHED.with(|p| p.set(true));
    register_callback();
}

/// Drain side: called before the drain takes its snapshot; once this transaction commits,
/// what was published up to now counts as drained.
pub fn draining() {
    let Some(slot) = slot() else { return };
    let seen = slot.published.load(Ordering::SeqCst);
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    DRAINED.with(|d| {
        d.set(Some(match d.get() {
            Some((old, old_level)) => (old.max(seen), old_level.min(level)),
            None => (seen, level),
        }))
    });
    register_callback();
}

/// A drain in a subtransaction that rolls back (a retry under REPEATABLE READ) covers
/// nothing: forget it.
#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    _mine: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
        DRAINED.with(|d| {
            if d.get().is_some_and(|(_, drained_at)| drained_at >= level) {
                d.set(None);
            }
        });
    }
}

/// A prepared transaction that published commits in COMMIT PREPARED, possibly in another
/// session, where no callback of the publishing backend runs: counted by `commit_prepared`.
pub fn commit_prepared() {
    if let Some(slot) = slot() {
        slot.published.fetch_add(1, Ordering::SeqCst);
        wake_worker();
    }
}

/// Runs after the commit is visible to others (XACT_EVENT_COMMIT follows
/// ProcArrayEndTransaction). Must not fail: it only touches atomics and sets a latch.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            let published = PUBLISHED.with(|p| p.replace(false));
            let drained = DRAINED.with(|d| d.take());
            let Some(slot) = slot() else { return };
            if let Some((seen, _)) = drained {
                slot.drained.fetch_max(seen, Ordering::SeqCst);
            }
            if published {
                slot.published.fetch_add(1, Ordering::SeqCst);
                wake_worker();
            }
        }
        // A prepared transaction commits later, maybe elsewhere: see `commit_prepared`.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            PUBLISHED.with(|p| p.set(false));
            DRAINED.with(|d| d.set(None));
        }
        _ => {}
    }
}

static mut PREVIOUS_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook that counts COMMIT PREPARED (see `commit_prepared`); from `_PG_init`
/// while preloading.
pub fn install_hooks() {
    unsafe {
        PREVIOUS_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        match PREVIOUS_PROCESS_UTILITY {
            Some(previous) => {
                previous(pstmt, query, read_only_tree, context, params, env, dest, qc)
            }
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query,
                read_only_tree,
                context,
                params,
                env,
                dest,
                qc,
            ),
        }
        // COMMIT PREPARED has made the prepared transaction's events visible by now. It
        // may not have published; counting it anyway only costs readers a drain.
        let statement = (*pstmt).utilityStmt;
        if !statement.is_null() && (*statement).type_ == pg_sys::NodeTag::T_TransactionStmt {
            let stmt = statement as *mut pg_sys::TransactionStmt;
            if (*stmt).kind == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED {
                commit_prepared();
            }
        }
    }
}
