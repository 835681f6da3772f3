//! The background worker (with `shared_preload_libraries = 'eventq'`): one process serving
//! the database named by `eventq.database`.
//!
//! It drains whenever a publishing commit sets its latch (see `wakeup`), rescues expired
//! leases and makes due tasks available every `eventq.maintenance_interval`, and applies
//! retention and removes old finished tasks every `eventq.cleanup_interval`. Each piece of
//! work is its own transaction; an error is logged and the loop goes on. It idles while the
//! extension is not created in its database, and restarts in another database when
//! `eventq.database` changes.

use crate::storage::{drain, maintenance, retention, Statement};
use crate::{gucs, wakeup};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How often an idle worker (extension not created, or worker disabled) looks again.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("eventq worker")
        .set_type("eventq worker")
        .set_library("eventq")
        .set_function("eventq_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

static EXTENSION_CREATED: Statement = Statement::new(
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'eventq')",
    &[],
);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventq_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    log!("eventq worker serving database \"{database}\"");

    let mut next_timers = Instant::now();
    let mut next_cleanup = Instant::now();
    let mut wait = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(wait)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            if gucs::database() != database {
                log!("eventq worker restarting to serve database \"{}\"", gucs::database());
                unsafe { pg_sys::proc_exit(1) };
            }
            // New intervals apply from now, not from the old deadlines.
            next_timers = next_timers.min(Instant::now() + gucs::maintenance_interval());
            next_cleanup = next_cleanup.min(Instant::now() + gucs::cleanup_interval());
        }
        if !gucs::worker_enabled() {
            // Stop being woken too: every publishing commit would otherwise wake this
            // process for nothing.
            wakeup::detach();
            wait = IDLE_RECHECK;
            continue;
        }
        wakeup::attach();
        let created = in_transaction("draining", || {
            Spi::connect(|client| {
                let created = crate::storage::scalar::<bool>(&EXTENSION_CREATED, client, &[])
                    .unwrap_or(false);
                if created {
                    drain::drain(client, gucs::drain_batch_size());
                }
                created
            })
        });
        if created == Some(false) {
            wakeup::set_serving(false);
            wait = IDLE_RECHECK;
            continue;
        }
        wakeup::set_serving(true);
        let now = Instant::now();
        if now >= next_timers {
            in_transaction("rescuing leases", || Spi::connect(maintenance::timers));
            next_timers = now + gucs::maintenance_interval();
        }
        if now >= next_cleanup {
            in_transaction("applying retention", || {
                Spi::connect(|client| {
                    retention::expire(client);
                    retention::remove_finished(client, gucs::keep_finished_tasks_seconds());
                })
            });
            next_cleanup = now + gucs::cleanup_interval();
        }
        wait = next_timers.min(next_cleanup).saturating_duration_since(Instant::now());
        if wait >= Duration::from_secs(1) {
            // Statistics still pending from the last round are due before a long sleep.
            unsafe { pg_sys::pgstat_report_stat(true) };
        }
    }
    log!("eventq worker shutting down");
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    wakeup::detach();
}

/// Runs `work` in its own transaction. An error is logged as a warning and the transaction
/// rolled back, so that the worker keeps going.
fn in_transaction<R>(what: &str, work: impl FnOnce() -> R) -> Option<R> {
    let activity = std::ffi::CString::new(format!("eventq worker: {what}")).unwrap_or_default();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, activity.as_ptr());
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(move || Some(work())))
        .catch_others(|error| {
            let message = match &error {
                pg_sys::panic::CaughtError::PostgresError(e)
                | pg_sys::panic::CaughtError::ErrorReport(e) => e.message().to_string(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_string()
                }
            };
            warning!("eventq worker: error while {what}: {message}");
            None
        })
        .execute();
    unsafe {
        if result.is_some() {
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
    result
}
