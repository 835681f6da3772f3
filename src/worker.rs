//! Background processes: the worker (with `shared_preload_libraries = 'eventq'`), one
//! process per database where eventq is created, started by the launcher
//! (src/launcher.rs), and the helper, a short-lived process started by a session that
//! needs a drain (or a maintenance pass) but must not run one in its own transaction (see
//! `api::drain_before_reading` and `run_maintenance()`).
//!
//! The worker drains whenever a publishing commit sets its latch (see `wakeup`), rescues
//! expired leases and makes due tasks available every `eventq.maintenance_interval`, and
//! applies retention and removes old finished tasks every `eventq.cleanup_interval`. Each
//! piece of work is its own transaction; an error is logged (once a minute at most for a
//! repeating one) and the loop goes on. It exits when its database has no eventq (the
//! launcher looks again later), when the launcher stops it, or when a command needs its
//! database free. Its health is in shared memory, for `eventq.workers`.
//!
//! Both run their transactions in READ COMMITTED, read-write, whatever the database's
//! defaults say, with a lock timeout as a backstop (nothing they do should wait for a
//! user's transaction). SIGTERM ends them at once, even inside a statement that waits.

use crate::storage::{drain, maintenance, Statement};
use crate::{gucs, wakeup};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How often a worker waiting for ALTER EXTENSION eventq UPDATE looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// A repeating failure is logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

static INSTALLED_VERSION: Statement =
    Statement::new("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eventq'", &[]);

/// Whether this database has eventq's SQL, and of this library's version. With another
/// one (a new build installed, the server restarted, ALTER EXTENSION UPDATE not run yet)
/// the process does nothing and says so, at most once a minute.
#[derive(Debug)]
enum Installed {
    Current,
    Older(String),
    Missing,
}

fn installed(client: &pgrx::spi::SpiClient<'_>) -> Installed {
    match crate::storage::scalar::<String>(&INSTALLED_VERSION, client, &[]) {
        Some(v) if v == crate::api::LIBRARY_VERSION => Installed::Current,
        Some(v) => Installed::Older(v),
        None => Installed::Missing,
    }
}

// Postgres' own signal handlers, called by the kernel: no Rust wrapper may stand between.
unsafe extern "C-unwind" {
    fn die(signal: std::ffi::c_int);
    fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
}

/// Signals as a Postgres backend has them: SIGTERM ends the process through
/// CHECK_FOR_INTERRUPTS, also while a statement waits for a lock; SIGHUP asks for a reload.
pub fn prepare_process() {
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

fn set(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Settings of the database or role that would change what a drain does.
fn session_settings() {
    set(c"default_transaction_isolation", c"read committed");
    set(c"default_transaction_read_only", c"off");
    set(c"default_transaction_deferrable", c"off");
    set(c"statement_timeout", c"0");
    set(c"idle_in_transaction_session_timeout", c"0");
    set(c"lock_timeout", c"10s");
    // A drain numbers its events in one sort; a catch-up over a large backlog should not
    // spill it to disk.
    set(c"work_mem", c"64MB");
    set(c"search_path", c"pg_catalog, pg_temp");
}

pub fn check_for_interrupts() {
    unsafe {
        if pg_sys::InterruptPending != 0 {
            pg_sys::ProcessInterrupts();
        }
    }
}

/// Logs a failure as a WARNING, at most once a minute for each kind of work.
#[derive(Default)]
struct Warnings {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Warnings {
    fn report(&mut self, what: &'static str, message: &str) {
        let now = Instant::now();
        match self.last.get_mut(what) {
            Some((at, suppressed)) if now.duration_since(*at) < WARNING_INTERVAL => {
                *suppressed += 1;
            }
            entry => {
                let suppressed = entry.map(|(_, n)| *n).unwrap_or(0);
                let again = if suppressed > 0 {
                    format!(" ({suppressed} more times since the last report)")
                } else {
                    String::new()
                };
                warning!("eventq: error while {what}: {message}{again}");
                self.last.insert(what, (now, 0));
            }
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventq_worker_main(arg: pg_sys::Datum) {
    prepare_process();
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    session_settings();
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    wakeup::attach();
    wakeup::worker_started();

    let mut warnings = Warnings::default();
    let mut next_timers = Instant::now();
    let mut next_cleanup = Instant::now();
    let mut wait = Duration::ZERO;
    let mut announced = false;
    loop {
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                wait.as_millis().min(i32::MAX as u128) as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        check_for_interrupts();
        if unsafe { pg_sys::ConfigReloadPending } != 0 {
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            session_settings();
            // New intervals apply from now, not from the old deadlines.
            next_timers = next_timers.min(Instant::now() + gucs::maintenance_interval());
            next_cleanup = next_cleanup.min(Instant::now() + gucs::cleanup_interval());
        }
        if !gucs::worker_enabled() || wakeup::my_state() == Some(wakeup::State::Suspended) {
            break;
        }
        wakeup::attach();
        let drained = in_transaction("draining", &mut warnings, || {
            Spi::connect(|client| match installed(client) {
                Installed::Current => {
                    let drained = drain::drain(
                        client,
                        drain::Options {
                            wait: true,
                            truncate: true,
                            chunk: gucs::drain_batch_size(),
                        },
                    );
                    // In the drain's transaction: notifications are skipped while the
                    // queue is filling up (see drain::notify), so they cannot fail it.
                    if let Some(d) = &drained {
                        drain::notify(client, d.received.clone());
                    }
                    Ok(drained)
                }
                other => Err(other),
            })
        });
        let drained = match drained {
            Some(Err(Installed::Older(version))) => {
                warnings.report(
                    "waiting for ALTER EXTENSION eventq UPDATE",
                    &format!(
                        "this database has eventq {version}, the library is {}; run ALTER EXTENSION eventq UPDATE",
                        crate::api::LIBRARY_VERSION
                    ),
                );
                wakeup::set_serving(false);
                wait = IDLE_RECHECK;
                continue;
            }
            Some(Err(_)) => {
                // No eventq here (any more): the launcher looks again later.
                wakeup::mark_absent(unsafe { pg_sys::MyDatabaseId }.to_u32());
                break;
            }
            Some(Ok(drained)) => drained,
            None => None,
        };
        if !announced {
            // (a catalog lookup: inside a transaction)
            let name = in_transaction("starting", &mut warnings, database_name).unwrap_or_default();
            log!("eventq worker serving database \"{name}\"");
            announced = true;
        }
        wakeup::set_serving(true);
        if let Some(d) = &drained {
            wakeup::worker_drained(d.events);
        }
        let more_to_do = drained.is_some_and(|d| d.gaps_left > 0);
        let now = Instant::now();
        if now >= next_timers {
            in_transaction("rescuing leases", &mut warnings, || {
                let (_, errors) = Spi::connect(maintenance::timers);
                errors
            })
            .into_iter()
            .flatten()
            .for_each(|e| warnings.report("rescuing leases", &e));
            next_timers = now + gucs::maintenance_interval();
        }
        if now >= next_cleanup {
            in_transaction("applying retention", &mut warnings, || {
                let (_, errors) = Spi::connect(|client| {
                    maintenance::cleanup(client, gucs::keep_finished_tasks_seconds())
                });
                errors
            })
            .into_iter()
            .flatten()
            .for_each(|e| warnings.report("applying retention", &e));
            next_cleanup = now + gucs::cleanup_interval();
        }
        wait = if more_to_do {
            Duration::from_millis(10)
        } else {
            next_timers.min(next_cleanup).saturating_duration_since(Instant::now())
        };
        if wait >= Duration::from_secs(1) {
            // Statistics still pending from the last round are due before a long sleep.
            unsafe { pg_sys::pgstat_report_stat(true) };
        }
    }
    unsafe { pg_sys::pgstat_report_stat(true) };
}

/// The name of this database; needs a transaction.
fn database_name() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    wakeup::detach();
    wakeup::wake_launcher();
}

/// Runs `work` in its own transaction. An error is logged and the transaction rolled back,
/// so that the process keeps going.
fn in_transaction<R>(
    what: &'static str,
    warnings: &mut Warnings,
    work: impl FnOnce() -> R,
) -> Option<R> {
    let activity = std::ffi::CString::new(format!("eventq: {what}")).unwrap_or_default();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, activity.as_ptr());
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(move || Ok(work())))
        .catch_others(|error| Err(crate::storage::isolation::message(&error)))
        .execute();
    unsafe {
        if result.is_ok() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
        // A background worker must hand in its own table statistics (a client backend does
        // so when idle). Without them autovacuum never learns that the worker's inserts and
        // retention deletes left dead rows, and never vacuums the log, which then only
        // grows: 340 MB in a 10-minute run holding 240k events.
        pg_sys::pgstat_report_stat(false);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            wakeup::worker_failed(&format!("{what}: {message}"));
            warnings.report(what, &message);
            None
        }
    }
}

/// What a helper process does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// One drain.
    Drain,
    /// What `run_maintenance()` does; the report comes back.
    Maintain,
}

/// Room for a helper's report.
const REPORT_BYTES: usize = 64 * 1024;

/// Starts a helper process that does `job` for this database in transactions of its own,
/// and waits for it to finish. Returns its report (for `Job::Maintain`), or `None` if no
/// helper could be started (every background worker slot is taken).
pub fn run_in_helper(job: Job) -> Option<serde_json::Value> {
    let (segment, handle) = if job == Job::Maintain {
        unsafe {
            // SAFETY: a new segment, zeroed here, owned by this transaction's resource owner
            // and detached below once the helper has written into it.
            let segment = pg_sys::dsm_create(REPORT_BYTES, 0);
            std::ptr::write_bytes(pg_sys::dsm_segment_address(segment) as *mut u8, 0, REPORT_BYTES);
            (segment, pg_sys::dsm_segment_handle(segment))
        }
    } else {
        (std::ptr::null_mut(), 0)
    };
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let kind = if job == Job::Maintain { "maintain" } else { "drain" };
    let helper = BackgroundWorkerBuilder::new("eventq helper")
        .set_type("eventq helper")
        .set_library("eventq")
        .set_function("eventq_helper_main")
        .set_argument(Some(pg_sys::Datum::from(handle)))
        .set_extra(&format!("{database} {kind}"))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    let finished = match helper {
        Ok(helper) => helper.wait_for_shutdown().is_ok(),
        Err(_) => false,
    };
    if segment.is_null() {
        return finished.then_some(serde_json::Value::Null);
    }
    let report = unsafe {
        // SAFETY: the helper wrote a length and that many bytes of JSON, within the segment.
        let base = pg_sys::dsm_segment_address(segment) as *const u8;
        let len = (base as *const u32).read_unaligned() as usize;
        let bytes = std::slice::from_raw_parts(base.add(4), len.min(REPORT_BYTES - 4));
        let report = serde_json::from_slice(bytes).ok();
        pg_sys::dsm_detach(segment);
        report
    };
    if finished {
        report
    } else {
        None
    }
}

/// Starts a helper that drains; see `run_in_helper`.
pub fn drain_in_helper() -> bool {
    run_in_helper(Job::Drain).is_some()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventq_helper_main(arg: pg_sys::Datum) {
    prepare_process();
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.split(' ');
    let database: u32 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let job = if parts.next() == Some("maintain") { Job::Maintain } else { Job::Drain };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    session_settings();
    let mut warnings = Warnings::default();
    match job {
        Job::Maintain => {
            let report = in_transaction("maintaining", &mut warnings, || {
                matches!(Spi::connect(installed), Installed::Current)
                    .then(|| crate::api::maintenance::pass_report().0)
            });
            let text =
                serde_json::to_vec(&report.flatten().unwrap_or_default()).unwrap_or_default();
            let handle = arg.value() as u32;
            if handle != 0 && text.len() <= REPORT_BYTES - 4 {
                unsafe {
                    // SAFETY: the requester's segment, alive until it has read it.
                    let segment = pg_sys::dsm_attach(handle);
                    if !segment.is_null() {
                        let base = pg_sys::dsm_segment_address(segment) as *mut u8;
                        std::ptr::copy_nonoverlapping(text.as_ptr(), base.add(4), text.len());
                        (base as *mut u32).write_unaligned(text.len() as u32);
                        pg_sys::dsm_detach(segment);
                    }
                }
            }
        }
        Job::Drain => {
            let drained = in_transaction("draining", &mut warnings, || {
                Spi::connect(|client| {
                    if !matches!(installed(client), Installed::Current) {
                        return None;
                    }
                    drain::drain(
                        client,
                        drain::Options {
                            wait: true,
                            truncate: true,
                            chunk: gucs::drain_batch_size(),
                        },
                    )
                })
            });
            if let Some(Some(drained)) = drained {
                if !drained.received.is_empty() {
                    in_transaction("notifying listeners", &mut warnings, || {
                        Spi::connect(|client| drain::notify(client, drained.received))
                    });
                }
            }
        }
    }
}
