//! What backends tell each other through shared memory (only with eventq in
//! `shared_preload_libraries`): a slot per database, holding
//! - what the launcher knows of the database (a worker runs, the extension is absent, a
//!   command needs the database free), and the worker's health for `eventq.workers`;
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
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

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
    /// What the launcher knows (`State`), and since when (Postgres timestamp).
    state: AtomicU8,
    state_since: AtomicI64,
    started_at: AtomicI64,
    last_drain_at: AtomicI64,
    drained_events: AtomicU64,
    /// The worker's last error: `error_len` bytes in `error`, written under `error_lock`.
    error_lock: AtomicBool,
    error_at: AtomicI64,
    error_len: AtomicUsize,
    error: [AtomicU64; ERROR_WORDS],
}

const ERROR_WORDS: usize = 32;

/// What the launcher knows of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// To look at: start a worker, which finds out whether the extension is there.
    Unknown = 0,
    /// A worker was started for it.
    Running = 1,
    /// The worker found no eventq there; looked at again after a while, or at once when
    /// a CREATE EXTENSION commits there.
    Absent = 2,
    /// A command (DROP DATABASE, CREATE DATABASE from it as template, ALTER DATABASE that
    /// moves or renames it) needs the database without connections: no worker until done.
    Suspended = 3,
}

impl State {
    fn from(v: u8) -> State {
        match v {
            1 => State::Running,
            2 => State::Absent,
            3 => State::Suspended,
            _ => State::Unknown,
        }
    }
}

#[derive(Default)]
pub struct Slots {
    /// Held while a slot is being claimed, so that a database never gets two.
    claiming: AtomicBool,
    launcher_latch: AtomicUsize,
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
        if shared.slots[i].database.load(Ordering::Acquire) == my_database() {
            return Some(&shared.slots[i]);
        }
    }
    let index = claim(my_database())?;
    MY_SLOT.with(|s| s.set(Some(index)));
    Some(&shared.slots[index])
}

/// The slot of a database, if it has one.
fn slot_of(database: u32) -> Option<&'static DatabaseSlot> {
    if !preloaded() || database == 0 {
        return None;
    }
    SHARED.get().slots.iter().find(|s| s.database.load(Ordering::Acquire) == database)
}

/// The index of the database's slot, claimed if it has none; `None` when all are taken.
fn claim(database: u32) -> Option<usize> {
    let shared = SHARED.get();
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
                let free =
                    shared.slots.iter().position(|s| s.database.load(Ordering::Acquire) == 0)?;
                let s = &shared.slots[free];
                // One publishing commit counted from the start: after a restart (or a
                // promotion), what was staged before is undrained until a drain says so.
                s.published.store(1, Ordering::SeqCst);
                s.drained.store(0, Ordering::SeqCst);
                s.latch.store(0, Ordering::SeqCst);
                s.worker_pid.store(0, Ordering::SeqCst);
                s.serving.store(false, Ordering::SeqCst);
                s.state.store(State::Unknown as u8, Ordering::SeqCst);
                s.started_at.store(0, Ordering::SeqCst);
                s.last_drain_at.store(0, Ordering::SeqCst);
                s.drained_events.store(0, Ordering::SeqCst);
                s.error_at.store(0, Ordering::SeqCst);
                s.error_len.store(0, Ordering::SeqCst);
                s.database.store(database, Ordering::Release);
                Some(free)
            });
            shared.claiming.store(false, Ordering::Release);
            claimed?
        }
    };
    Some(index)
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Launcher side: the database's state, claiming a slot for it (`None` when all are taken).
pub fn state_of(database: u32) -> Option<(State, i64)> {
    let slot = &SHARED.get().slots[claim(database)?];
    Some((
        State::from(slot.state.load(Ordering::Acquire)),
        slot.state_since.load(Ordering::Acquire),
    ))
}

pub fn set_state(database: u32, state: State) {
    if let Some(slot) = slot_of(database) {
        slot.state.store(state as u8, Ordering::Release);
        slot.state_since.store(now(), Ordering::Release);
    }
}

/// Worker side: its database has no eventq. Only if the launcher still counts on a worker
/// there: a CREATE EXTENSION that committed meanwhile has asked for a new look.
pub fn mark_absent(database: u32) {
    if let Some(slot) = slot_of(database) {
        if slot
            .state
            .compare_exchange(
                State::Running as u8,
                State::Absent as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            slot.state_since.store(now(), Ordering::Release);
        }
    }
}

/// Launcher side: a database that is gone gives its slot back.
pub fn release(database: u32) {
    if let Some(slot) = slot_of(database) {
        slot.database.store(0, Ordering::Release);
    }
}

pub fn register_launcher() {
    SHARED.get().launcher_latch.store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
}

pub fn wake_launcher() {
    if !preloaded() {
        return;
    }
    let latch = SHARED.get().launcher_latch.load(Ordering::Acquire);
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Worker side: what the launcher says of this database.
pub fn my_state() -> Option<State> {
    slot().map(|s| State::from(s.state.load(Ordering::Acquire)))
}

/// Worker side, at start.
pub fn worker_started() {
    if let Some(slot) = slot() {
        slot.started_at.store(now(), Ordering::Relaxed);
        slot.drained_events.store(0, Ordering::Relaxed);
        slot.error_len.store(0, Ordering::Relaxed);
        slot.error_at.store(0, Ordering::Relaxed);
    }
}

/// Worker side: a drain committed.
pub fn worker_drained(events: i64) {
    if let Some(slot) = slot() {
        slot.last_drain_at.store(now(), Ordering::Relaxed);
        slot.drained_events.fetch_add(events.max(0) as u64, Ordering::Relaxed);
    }
}

fn lock_error(slot: &DatabaseSlot) {
    while slot
        .error_lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

/// Worker side: what failed last.
pub fn worker_failed(message: &str) {
    let Some(slot) = slot() else { return };
    let bytes = message.as_bytes();
    let len = bytes.len().min(ERROR_WORDS * 8);
    lock_error(slot);
    for (i, word) in slot.error.iter().enumerate() {
        let mut chunk = [0u8; 8];
        for (j, b) in chunk.iter_mut().enumerate() {
            if let Some(&byte) = bytes.get(i * 8 + j).filter(|_| i * 8 + j < len) {
                *b = byte;
            }
        }
        word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
    slot.error_len.store(len, Ordering::Relaxed);
    slot.error_at.store(now(), Ordering::Relaxed);
    slot.error_lock.store(false, Ordering::Release);
}

/// A worker as `eventq.workers` shows it.
pub struct WorkerHealth {
    pub database: u32,
    pub pid: i32,
    pub started_at: i64,
    pub last_drain_at: i64,
    pub drained: i64,
    pub last_error: Option<String>,
    pub last_error_at: i64,
}

/// Every running worker's health.
pub fn workers() -> Vec<WorkerHealth> {
    if !preloaded() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for slot in SHARED.get().slots.iter() {
        let database = slot.database.load(Ordering::Acquire);
        let pid = slot.worker_pid.load(Ordering::Acquire);
        if database == 0 || pid == 0 {
            continue;
        }
        lock_error(slot);
        let len = slot.error_len.load(Ordering::Relaxed);
        let bytes: Vec<u8> = slot
            .error
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .take(len)
            .collect();
        let error_at = slot.error_at.load(Ordering::Relaxed);
        slot.error_lock.store(false, Ordering::Release);
        out.push(WorkerHealth {
            database,
            pid,
            started_at: slot.started_at.load(Ordering::Relaxed),
            last_drain_at: slot.last_drain_at.load(Ordering::Relaxed),
            drained: slot.drained_events.load(Ordering::Relaxed) as i64,
            last_error: (len > 0).then(|| String::from_utf8_lossy(&bytes).into_owned()),
            last_error_at: error_at,
        });
    }
    out
}

/// A command needs the database without connections (see `State::Suspended`): the
/// launcher starts no worker for it, and its worker is asked to leave. Waits (up to ten
/// seconds) until it has.
pub fn suspend(database: u32) {
    let Some(slot) = slot_of(database) else { return };
    slot.state.store(State::Suspended as u8, Ordering::Release);
    slot.state_since.store(now(), Ordering::Release);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pid = slot.worker_pid.load(Ordering::Acquire);
        if pid == 0 || std::time::Instant::now() >= deadline {
            return;
        }
        unsafe { libc_kill(pid, pg_sys::SIGTERM as i32) };
        nap();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// After the command: the launcher looks at the database again.
pub fn resume(database: u32) {
    set_state(database, State::Unknown);
    wake_launcher();
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
    /// This transaction created the extension: at commit, the launcher starts a worker.
    static CREATED_EXTENSION: Cell<bool> = const { Cell::new(false) };
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

/// This transaction creates the extension: once it commits, the launcher starts a worker.
pub fn creating_extension() {
    if slot().is_some() {
        CREATED_EXTENSION.with(|c| c.set(true));
        register_callback();
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
            if CREATED_EXTENSION.with(|c| c.replace(false)) {
                resume(my_database());
            }
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
            CREATED_EXTENSION.with(|c| c.set(false));
            PUBLISHED.with(|p| p.set(false));
            DRAINED.with(|d| d.set(None));
        }
        _ => {}
    }
}
