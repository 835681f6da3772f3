//! Maintenance, in the parts the background worker runs on their own schedules:
//! - draining (storage::drain), whenever a publishing commit wakes the worker;
//! - `timers`: expired leases rescued and due tasks made available, for every task consumer,
//!   and the counts the views read folded;
//! - `cleanup`: retention, removal of old finished tasks, and eventq's own bookkeeping.
//!
//! `run` is all of it at once: what `run_maintenance()` does. Each stream and consumer is
//! handled in a subtransaction of its own: one that fails is reported and the others go on.
//! None of it runs while a dump is being restored into the database (`restore_in_progress`).

use super::counts;
use super::drain::{self, Drained};
use super::isolation::contained;
use super::keys;
use super::locks;
use super::retention::{self, Cleaned};
use super::tasks::{self, Rescued};
use super::{column, Statement};
use pgrx::spi::SpiClient;

static TASK_CONSUMERS: Statement = Statement::new(
    "SELECT id, max_attempts, ordering = 'key', stream_id
     FROM eventq_internal.consumers WHERE mode = 'task' ORDER BY id",
    &[],
);

// Whether a session of the restore is connected: the one that created the extension, or
// any of pg_restore's (a parallel restore's leader disconnects while its workers load the
// data, and reconnects afterwards). Then whether one was seen within the last seconds:
// between the leader leaving and its workers arriving, none is.
static RESTORING: Statement = Statement::new(
    "SELECT EXISTS (
                SELECT 1 FROM eventq_internal.restoring r
                CROSS JOIN LATERAL pg_catalog.pg_stat_get_activity(r.pid) a
                WHERE a.backend_start IS NOT DISTINCT FROM r.backend_start)
            OR EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) a
                WHERE a.datid = (SELECT d.oid FROM pg_catalog.pg_database d
                                 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                  AND a.application_name OPERATOR(pg_catalog.=) 'pg_restore'),
            EXISTS (SELECT 1 FROM eventq_internal.restoring r
                    WHERE r.seen_at > pg_catalog.clock_timestamp() - interval '5 seconds')",
    &[],
);

static STILL_RESTORING: Statement = Statement::new(
    "UPDATE eventq_internal.restoring SET seen_at = pg_catalog.clock_timestamp()",
    &[],
);

static RESTORED: Statement = Statement::new("DELETE FROM eventq_internal.restoring", &[]);

/// Whether a dump is still being restored into this database (see table `restoring` in
/// sql/schema.sql). Once the restore has ended, forgets it (when this transaction may
/// write; until then every call looks again).
pub fn restore_in_progress(client: &SpiClient<'_>) -> bool {
    if !MARKED.first_row(client, &[]).and_then(|row| column::<bool>(&row, 1)).unwrap_or(false) {
        return false;
    }
    let Some(row) = RESTORING.first_row(client, &[]) else { return false };
    let (connected, recent) = (column(&row, 1).unwrap_or(false), column(&row, 2).unwrap_or(false));
    let writable = unsafe { !pgrx::pg_sys::XactReadOnly };
    if connected && writable {
        STILL_RESTORING.run(client, &[]);
    } else if !connected && !recent && writable {
        RESTORED.run(client, &[]);
    }
    connected || recent
}

static MARKED: Statement =
    Statement::new("SELECT EXISTS (SELECT 1 FROM eventq_internal.restoring)", &[]);

/// Rows of expired leases and due timers handled per consumer and pass.
pub const RESCUE_LIMIT: i64 = 10_000;

#[derive(Debug, Default)]
pub struct Pass {
    /// `None` when another session was draining.
    pub drained: Option<Drained>,
    pub rescued: Rescued,
    pub cleaned: Cleaned,
    /// What failed, one message per stream or consumer.
    pub errors: Vec<String>,
}

/// Everything, once: what `run_maintenance()` does.
pub fn run(client: &SpiClient<'_>, options: drain::Options, keep_finished_seconds: i64) -> Pass {
    let mut pass = Pass { drained: drain::drain(client, options), ..Pass::default() };
    let (rescued, errors) = timers(client);
    pass.rescued = rescued;
    pass.errors.extend(errors);
    let (cleaned, errors) = cleanup(client, keep_finished_seconds);
    pass.cleaned = cleaned;
    pass.errors.extend(errors);
    pass
}

/// Expired leases and due timers of every task consumer, and keys left for a recheck.
pub fn timers(client: &SpiClient<'_>) -> (Rescued, Vec<String>) {
    let mut rescued = Rescued::default();
    let mut errors = Vec::new();
    if restore_in_progress(client) {
        return (rescued, errors);
    }
    let consumers: Vec<(i32, i32, bool, i32)> = TASK_CONSUMERS
        .run(client, &[])
        .map(|row| {
            (
                column(&row, 1).unwrap_or(0),
                column(&row, 2).unwrap_or(1),
                column(&row, 3).unwrap_or(false),
                column(&row, 4).unwrap_or(0),
            )
        })
        .collect();
    for (id, max_attempts, keyed, stream_id) in consumers {
        let result = contained(|| {
            if !locks::try_lock_consumer(id, locks::Mode::Shared) {
                return Rescued::default();
            }
            let r = tasks::rescue_and_promote(client, id, stream_id, max_attempts, RESCUE_LIMIT);
            if keyed {
                keys::recheck_for(client, id);
                keys::release_timed_out(client, id);
            }
            r
        });
        match result {
            Ok(r) => rescued += r,
            Err(e) => errors.push(format!("consumer {id}: {e}")),
        }
    }
    (rescued, errors)
}

/// Retention for every stream, finished tasks of every consumer, bookkeeping.
pub fn cleanup(client: &SpiClient<'_>, keep_finished_seconds: i64) -> (Cleaned, Vec<String>) {
    let mut cleaned = Cleaned::default();
    let mut errors = Vec::new();
    if restore_in_progress(client) {
        return (cleaned, errors);
    }
    for (stream_id, retention_us) in retention::streams_with_retention(client) {
        match contained(|| retention::expire_stream(client, stream_id, retention_us)) {
            Ok(c) => cleaned += c,
            Err(e) => errors.push(format!("retention of stream {stream_id}: {e}")),
        }
    }
    for (consumer_id, position) in retention::consumers_with_tasks(client) {
        match contained(|| {
            retention::remove_finished(client, consumer_id, position, keep_finished_seconds)
        }) {
            Ok(n) => cleaned.removed_tasks += n,
            Err(e) => errors.push(format!("cleanup of consumer {consumer_id}: {e}")),
        }
    }
    // In the cleanup pass, not every timer pass: under a snapshot held open, the rows a fold
    // deletes stay, and each fold reads them all again; once a second, that grew into a
    // tenth of the worker's time over a five-minute soak.
    if let Err(e) = contained(|| counts::fold(client)) {
        errors.push(format!("folding counts: {e}"));
    }
    // Last: it may take the drain lock, which stays held until the transaction ends. Taken
    // before the folds, it held every pull up for as long as they ran.
    match contained(|| retention::tidy(client)) {
        Ok(grants_changed) => {
            if grants_changed {
                super::grants::announce_change();
            }
            cleaned.grants_changed = grants_changed;
        }
        Err(e) => errors.push(format!("bookkeeping: {e}")),
    }
    (cleaned, errors)
}
