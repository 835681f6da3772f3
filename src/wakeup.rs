//! The commit-time wake-up. A transaction that published sets the background worker's latch
//! when it commits, so the worker drains within milliseconds instead of on a poll.
//!
//! The worker publishes its latch in a small shared-memory slot, which exists only when
//! eventq is in `shared_preload_libraries`. Without it there is no worker and nothing to
//! wake: `pull` and `fetch` drain by themselves.

use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};

#[derive(Default)]
pub struct WorkerSlot {
    /// The worker's `MyLatch` (inside its PGPROC, in shared memory); 0 when there is no
    /// worker process.
    latch: AtomicUsize,
    database: AtomicU32,
    /// Whether the worker drains (it is enabled and the extension exists in its database).
    serving: AtomicBool,
    /// When the worker last went round its loop (Postgres timestamp, microseconds).
    heartbeat: AtomicI64,
}

unsafe impl PGRXSharedMemory for WorkerSlot {}

static SLOT: PgAtomic<WorkerSlot> = unsafe { PgAtomic::new(c"eventq worker slot") };
/// Set in `_PG_init` of the postmaster when preloading; inherited by every process it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests the slot; called from `_PG_init` while shared_preload_libraries loads.
pub fn init_shared_memory() {
    pg_shmem_init!(SLOT);
    PRELOADED.store(true, Ordering::Relaxed);
}

fn slot() -> Option<&'static WorkerSlot> {
    PRELOADED.load(Ordering::Relaxed).then(|| SLOT.get())
}

fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// Worker side, while enabled: publishers in this database wake this process, even while
/// it idles for want of the extension (so that it notices a new extension at the first
/// publish).
pub fn attach() {
    if let Some(slot) = slot() {
        slot.database.store(my_database(), Ordering::Relaxed);
        slot.latch.store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
    }
}

/// Worker side, at exit or when disabled.
pub fn detach() {
    if let Some(slot) = slot() {
        slot.serving.store(false, Ordering::Release);
        slot.latch.store(0, Ordering::Release);
    }
}

/// Worker side: whether it drains this database now; readers drain themselves otherwise.
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

/// Whether a live worker drains this database, so readers need not drain themselves. A
/// worker that has not gone round its loop for a while (a long catch-up drain, or a hang)
/// does not count: readers then try the drain lock themselves, which is harmless.
pub fn worker_serves_this_database() -> bool {
    let Some(slot) = slot() else { return false };
    if !slot.serving.load(Ordering::Acquire)
        || slot.database.load(Ordering::Relaxed) != my_database()
    {
        return false;
    }
    let silence_us =
        unsafe { pg_sys::GetCurrentTimestamp() } - slot.heartbeat.load(Ordering::Relaxed);
    let allowed_us = 10_000_000 + 2 * crate::gucs::maintenance_interval().as_micros() as i64;
    silence_us < allowed_us
}

thread_local! {
    static PUBLISHED: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Publisher side: this transaction published; wake the worker when it commits.
pub fn published() {
    if slot().is_none() {
        return;
    }
    PUBLISHED.with(|p| p.set(true));
    if !CALLBACK_REGISTERED.with(|r| r.replace(true)) {
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

/// Runs after the commit is visible to others (XACT_EVENT_COMMIT follows
/// ProcArrayEndTransaction), so the woken worker sees the events. Must not fail: it only
/// reads atomics and sets a latch.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT if PUBLISHED.with(|p| p.replace(false)) => {
            wake_worker()
        }
        // A prepared transaction commits later, maybe elsewhere: the worker's timer finds it.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            PUBLISHED.with(|p| p.set(false))
        }
        _ => {}
    }
}

fn wake_worker() {
    let Some(slot) = slot() else { return };
    if slot.database.load(Ordering::Relaxed) != my_database() {
        return;
    }
    let latch = slot.latch.load(Ordering::Acquire);
    if latch != 0 {
        // The latch lives in the worker's PGPROC, which stays mapped even if the worker has
        // just exited: at worst this wakes whoever reuses that PGPROC, for nothing.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}
