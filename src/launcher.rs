//! The launcher (with `shared_preload_libraries = 'eventq'`): one process that starts a
//! background worker (src/worker.rs) for every database where eventq is created, and stops
//! it when the extension or the database goes.
//!
//! It looks at `pg_database` every ten seconds, and at once when woken: by a CREATE
//! EXTENSION eventq that commits, or by a worker that exits. For a database it knows
//! nothing of it starts a worker, which finds out whether eventq is there; a worker that
//! finds nothing marks the database `Absent` and exits, and the launcher looks again after
//! a while. `eventq.database`, when set, is the list of databases to serve;
//! `eventq.max_workers` bounds how many run. Databases past either have no worker: their
//! readers drain by themselves, as without preloading.
//!
//! A worker stays connected to its database, and Postgres refuses DROP DATABASE, CREATE
//! DATABASE from it as a template, and ALTER DATABASE that renames or moves it while
//! anything is connected. The utility hook here asks the worker to leave first (and the
//! launcher to keep away) until the command is done. The same hook counts COMMIT PREPARED
//! for read after commit (see `wakeup`).

use crate::{gucs, wakeup};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// How often the launcher looks at the databases without being woken.
const NAPTIME: Duration = Duration::from_secs(10);
/// How long a database where eventq was not found is left alone before another look.
const ABSENT_RECHECK_MICROS: i64 = 60_000_000;
/// How long after a worker ended on its own (an error) before another is started.
const RESTART_DELAY_MICROS: i64 = 5_000_000;

pub fn register() {
    BackgroundWorkerBuilder::new("eventq launcher")
        .set_type("eventq launcher")
        .set_library("eventq")
        .set_function("eventq_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

struct Database {
    oid: u32,
    name: String,
}

/// The databases that may be served: connectable, not templates, listed in
/// `eventq.database` when that is set. Read from the shared catalog `pg_database`, in a
/// transaction of its own.
fn databases() -> Vec<Database> {
    let wanted = gucs::databases();
    let mut out = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::GETSTRUCT(tuple) as pg_sys::Form_pg_database;
            let name = CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
            if (*form).datallowconn
                && !(*form).datistemplate
                && (wanted.is_empty() || wanted.contains(&name))
            {
                out.push(Database { oid: (*form).oid.to_u32(), name });
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    out
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventq_launcher_main(_arg: pg_sys::Datum) {
    crate::worker::prepare_process();
    BackgroundWorker::connect_worker_to_spi(None, None);
    wakeup::register_launcher();
    log!("eventq launcher started");
    let mut workers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    let mut ended_at: HashMap<u32, i64> = HashMap::new();
    loop {
        crate::worker::check_for_interrupts();
        if unsafe { pg_sys::ConfigReloadPending } != 0 {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        // Workers that ended: by themselves (no extension, an error) or told to.
        workers.retain(|oid, worker| {
            let alive = worker.pid().is_ok()
                || matches!(
                    worker.pid(),
                    Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted)
                );
            if !alive && wakeup::state_of(*oid).is_some_and(|(s, _)| s == wakeup::State::Running) {
                // ended on its own (an error, a crash): another in a while
                ended_at.insert(*oid, now);
                wakeup::set_state(*oid, wakeup::State::Unknown);
            }
            alive
        });
        let candidates = if gucs::worker_enabled() { databases() } else { Vec::new() };
        // Stop workers of databases no longer served (dropped, or no longer listed).
        let keep: std::collections::HashSet<u32> = candidates.iter().map(|d| d.oid).collect();
        let leaving: Vec<u32> = workers.keys().filter(|o| !keep.contains(o)).copied().collect();
        for oid in leaving {
            if let Some(worker) = workers.remove(&oid) {
                worker.terminate();
            }
            wakeup::set_state(oid, wakeup::State::Unknown);
        }
        for database in candidates {
            if workers.contains_key(&database.oid) || workers.len() >= gucs::max_workers() {
                continue;
            }
            let Some((state, since)) = wakeup::state_of(database.oid) else { continue };
            let due = match state {
                wakeup::State::Unknown => {
                    ended_at.get(&database.oid).is_none_or(|&t| now - t >= RESTART_DELAY_MICROS)
                }
                wakeup::State::Absent => now - since >= ABSENT_RECHECK_MICROS,
                wakeup::State::Running | wakeup::State::Suspended => false,
            };
            if !due {
                continue;
            }
            match start_worker(&database) {
                Some(worker) => {
                    wakeup::set_state(database.oid, wakeup::State::Running);
                    workers.insert(database.oid, worker);
                }
                None => {
                    warning!(
                        "eventq launcher: could not start a worker for database \"{}\" (raise max_worker_processes)",
                        database.name
                    );
                    ended_at.insert(database.oid, now);
                }
            }
        }
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                NAPTIME.as_millis() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

fn start_worker(database: &Database) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("eventq worker for {}", database.name))
        .set_type("eventq worker")
        .set_library("eventq")
        .set_function("eventq_worker_main")
        .set_argument(Some(pg_sys::Datum::from(database.oid)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

static mut PREVIOUS_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Installs the utility hook; from `_PG_init` while preloading.
pub fn install_hooks() {
    unsafe {
        PREVIOUS_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// What a utility statement means to eventq.
enum Concern {
    None,
    /// The databases must have no connections while it runs; `dropped` once it succeeded.
    Databases {
        oids: Vec<u32>,
        dropped: bool,
    },
    CreateExtension,
    CommitPrepared,
}

unsafe fn database_oid(name: *const std::ffi::c_char) -> Option<u32> {
    if name.is_null() {
        return None;
    }
    let oid = unsafe { pg_sys::get_database_oid(name, true) };
    (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
}

/// The value of option `name` in a list of DefElem, as a database name.
unsafe fn option_database(options: *mut pg_sys::List, name: &CStr) -> Option<u32> {
    unsafe {
        if options.is_null() {
            return None;
        }
        for i in 0..(*options).length {
            let elem = (*(*options).elements.add(i as usize)).ptr_value as *mut pg_sys::DefElem;
            if !elem.is_null()
                && !(*elem).defname.is_null()
                && CStr::from_ptr((*elem).defname) == name
                && !(*elem).arg.is_null()
            {
                return database_oid(pg_sys::defGetString(elem));
            }
        }
        None
    }
}

unsafe fn concern(statement: *mut pg_sys::Node) -> Concern {
    use pg_sys::NodeTag::*;
    unsafe {
        if statement.is_null() {
            return Concern::None;
        }
        match (*statement).type_ {
            T_DropdbStmt => {
                let stmt = statement as *mut pg_sys::DropdbStmt;
                Concern::Databases {
                    oids: database_oid((*stmt).dbname).into_iter().collect(),
                    dropped: true,
                }
            }
            T_CreatedbStmt => {
                let stmt = statement as *mut pg_sys::CreatedbStmt;
                let template = option_database((*stmt).options, c"template");
                Concern::Databases { oids: template.into_iter().collect(), dropped: false }
            }
            T_AlterDatabaseStmt => {
                let stmt = statement as *mut pg_sys::AlterDatabaseStmt;
                Concern::Databases {
                    oids: database_oid((*stmt).dbname).into_iter().collect(),
                    dropped: false,
                }
            }
            T_RenameStmt => {
                let stmt = statement as *mut pg_sys::RenameStmt;
                if (*stmt).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    Concern::Databases {
                        oids: database_oid((*stmt).subname).into_iter().collect(),
                        dropped: false,
                    }
                } else {
                    Concern::None
                }
            }
            T_CreateExtensionStmt => {
                let stmt = statement as *mut pg_sys::CreateExtensionStmt;
                if !(*stmt).extname.is_null() && CStr::from_ptr((*stmt).extname) == c"eventq" {
                    Concern::CreateExtension
                } else {
                    Concern::None
                }
            }
            T_TransactionStmt => {
                let stmt = statement as *mut pg_sys::TransactionStmt;
                if (*stmt).kind == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED {
                    Concern::CommitPrepared
                } else {
                    Concern::None
                }
            }
            _ => Concern::None,
        }
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
    let concern = unsafe { concern((*pstmt).utilityStmt) };
    let run = || unsafe {
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
    };
    match concern {
        Concern::None => run(),
        Concern::Databases { oids, dropped } => {
            for &oid in &oids {
                wakeup::suspend(oid);
            }
            PgTryBuilder::new(AssertUnwindSafe(run))
                .catch_others(|error| {
                    oids.iter().for_each(|&oid| wakeup::resume(oid));
                    error.rethrow()
                })
                .execute();
            for &oid in &oids {
                if dropped {
                    wakeup::release(oid);
                    crate::pull_start::forget_database(oid);
                } else {
                    wakeup::resume(oid);
                }
            }
        }
        Concern::CreateExtension => {
            run();
            wakeup::creating_extension();
            // Consumer ids start over (after DROP EXTENSION, or a restore with --clean).
            crate::pull_start::forget_database(unsafe { pg_sys::MyDatabaseId }.to_u32());
        }
        Concern::CommitPrepared => {
            run();
            // The prepared transaction's events are visible by now. It may not have
            // published; counting it anyway only costs readers a drain.
            wakeup::commit_prepared();
            // Nor may it have made tasks available: see pull_start.
            crate::pull_start::reset_database();
        }
    }
}
