//! run_maintenance, subject_matches.

use crate::core::subject;
use crate::error::OrRaise;
use crate::gucs;
use crate::storage::isolation::retrying;
use crate::storage::{drain, maintenance};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

/// One pass of everything the background worker does: drain committed events, rescue
/// expired leases, make due retries available, truncate idle staging, apply retention and
/// remove old finished tasks. Returns counts, and what failed (one stream's or consumer's
/// failure does not stop the others). Safe to call concurrently (with itself and with the
/// worker), e.g. from pg_cron, under any isolation level.
///
/// It refuses to run inside a transaction block, as VACUUM does: it takes the drain lock
/// and may truncate staging, and would hold both until the block ended, stopping delivery
/// for everyone meanwhile. Called from inside a function or a DO block, whose statement
/// may run long after, or in a SERIALIZABLE transaction (a database whose default it is,
/// say, with pg_cron), the pass runs in a helper process, READ COMMITTED: its reads would
/// otherwise take part in serializable conflict detection and could make the
/// applications' own transactions fail.
#[pg_extern]
fn run_maintenance() -> JsonB {
    let call = super::access::enter();
    call.require_admin("run maintenance");
    unsafe {
        pg_sys::PreventCommandIfReadOnly(c"run_maintenance()".as_ptr());
        if pg_sys::IsTransactionBlock() {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
                "run_maintenance() cannot run inside a transaction block",
                "Call it on its own (as pg_cron does); the background worker does the same work by itself."
            );
        }
        // Inside a function (whose statement may go on for long) or under SERIALIZABLE:
        // the pass runs in a helper process.
        if super::called_from_a_function()
            || pg_sys::XactIsoLevel == pg_sys::XACT_SERIALIZABLE as i32
        {
            if let Some(report) = crate::worker::run_in_helper(crate::worker::Job::Maintain) {
                return JsonB(report);
            }
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "run_maintenance() could not start its helper process",
                "Under SERIALIZABLE it runs in a background worker process: raise max_worker_processes, or call it in a READ COMMITTED transaction."
            );
        }
    }
    pass_report()
}

/// The pass `run_maintenance()` makes, and its report.
pub fn pass_report() -> JsonB {
    let options = drain::Options { wait: true, truncate: true, chunk: gucs::drain_batch_size() };
    let pass = retrying(|| {
        Spi::connect(|client| {
            let pass = maintenance::run(client, options, gucs::keep_finished_tasks_seconds());
            if let Some(drained) = &pass.drained {
                drain::notify(client, drained.received.clone());
            }
            pass
        })
    });
    for error in &pass.errors {
        warning!("eventq: {error}");
    }
    let drained = pass.drained.clone().unwrap_or_default();
    // The report must fit a helper's reply (worker::REPORT_BYTES): keep the first errors.
    let errors: Vec<&String> = pass.errors.iter().take(100).collect();
    JsonB(json!({
        "drained_events": drained.events,
        "created_tasks": drained.tasks,
        "gap_tasks": drained.gap_tasks,
        "keys_rechecked": drained.keys_rechecked,
        "lost_leases": pass.rescued.lost,
        "discarded_after_lost_lease": pass.rescued.discarded,
        "due_tasks": pass.rescued.promoted,
        "truncated_staging": drained.truncated,
        "expired_events": pass.cleaned.expired_events,
        "expired_tasks": pass.cleaned.expired_tasks,
        "held_events": pass.cleaned.held_events,
        "skipped_streams": pass.cleaned.skipped_streams,
        "removed_finished_tasks": pass.cleaned.removed_tasks,
        "errors": errors,
    }))
}

/// Counts tasks and events again from the rows, for the views. The counts are kept by
/// triggers on tasks and events; writes those triggers did not see (a data-only restore with
/// `--disable-triggers`, rows changed by hand with `session_replication_role = replica`)
/// leave them wrong until this runs. Holds off publishing, draining and every change of a
/// task until its transaction ends. READ COMMITTED only.
#[pg_extern]
fn recount() {
    let call = super::access::enter();
    call.require_admin("recount");
    unsafe { pg_sys::PreventCommandIfReadOnly(c"recount()".as_ptr()) };
    Spi::connect(crate::storage::counts::recount);
}

/// The background workers (one per database with eventq, with eventq preloaded): when each
/// started, drained last, how many events it drained, and what failed last. Empty without
/// preloading. Behind the view `eventq.workers`.
// pgrx needs the row type written out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn worker_health() -> TableIterator<
    'static,
    (
        name!(database, Option<String>),
        name!(pid, i32),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_drain_at, Option<TimestampWithTimeZone>),
        name!(drained, i64),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
    ),
> {
    let call = super::access::enter();
    call.require_admin("see eventq's workers");
    let time = |t: i64| -> Option<TimestampWithTimeZone> {
        (t != 0)
            .then(|| unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) })
            .flatten()
    };
    let rows: Vec<_> = crate::wakeup::workers()
        .into_iter()
        .map(|w| {
            let name = unsafe {
                let name = pg_sys::get_database_name(pg_sys::Oid::from(w.database));
                (!name.is_null())
                    .then(|| std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
            };
            (
                name,
                w.pid,
                time(w.started_at),
                time(w.last_drain_at),
                w.drained,
                w.last_error,
                time(w.last_error_at),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Whether a NATS-style pattern (`*` one token, `>` one or more trailing tokens) matches a
/// subject.
#[pg_extern(immutable, parallel_safe)]
fn subject_matches(pattern: &str, subject: &str) -> bool {
    subject::subject_matches(pattern, subject).or_raise()
}
