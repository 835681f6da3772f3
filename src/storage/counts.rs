//! The task and event counts the views read (see `task_counts` in `sql/schema.sql`): the
//! counting triggers add a row per statement; folding sums them into one row per group;
//! recounting starts them again from the rows.

use super::isolation::contained;
use super::{arg, column, locks, Statement, TEXT};
use crate::error;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::time::{Duration, Instant};

// Fold the rows the counting triggers add (see task_counts in sql/schema.sql) into one per
// consumer and state, or per stream. A row is deleted by one fold only, and what it held
// goes into that fold's sum, in the same statement: so the total never changes, whatever
// runs at the same time. Counts of a consumer or stream that is gone sum to zero and go.
// Every row is deleted and summed, with no join: found by joining the table to its own
// groups, the rows to fold once went quadratic (analyzed right after a fold, with a few
// rows left in the pages of a hundred thousand, the table looked nearly empty to the
// planner, which joined by nested loop and read the sorted table again for each row; a
// run_maintenance() after a burst did not end in ten minutes), and so did deleting them
// by a list of row addresses (a sequential scan searching the list for each row: 0.4 s a
// fold under an end-to-end load). A fold runs only when some group has more than one row
// (FOLD_NEEDED, one pass), so that an idle database writes nothing.
static FOLD_TASK_COUNTS: Statement = Statement::new(
    "WITH folded AS (
         DELETE FROM eventq_internal.task_counts RETURNING consumer_id, state, tasks
     )
     INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
     SELECT consumer_id, state, pg_catalog.sum(tasks) FROM folded
     GROUP BY consumer_id, state
     HAVING pg_catalog.sum(tasks) OPERATOR(pg_catalog.<>) 0",
    &[],
);

static FOLD_EVENT_COUNTS: Statement = Statement::new(
    "WITH folded AS (
         DELETE FROM eventq_internal.event_counts RETURNING stream_id, events
     )
     INSERT INTO eventq_internal.event_counts (stream_id, events)
     SELECT stream_id, pg_catalog.sum(events) FROM folded
     GROUP BY stream_id
     HAVING pg_catalog.sum(events) OPERATOR(pg_catalog.<>) 0",
    &[],
);

static FOLD_NEEDED: Statement = Statement::new(
    "SELECT EXISTS (SELECT FROM eventq_internal.task_counts
                    GROUP BY consumer_id, state HAVING pg_catalog.count(*) > 1),
            EXISTS (SELECT FROM eventq_internal.event_counts
                    GROUP BY stream_id HAVING pg_catalog.count(*) > 1)",
    &[],
);

/// Folds the task and event counts, unless another session is folding them. Every cleanup
/// pass does, so that the views sum a few rows per group and the statements of the last
/// seconds, not every statement ever.
pub fn fold(client: &SpiClient<'_>) {
    if locks::try_lock_fold() {
        let (tasks, events) = FOLD_NEEDED
            .first_row(client, &[])
            .map(|row| {
                (column::<bool>(&row, 1).unwrap_or(true), column::<bool>(&row, 2).unwrap_or(true))
            })
            .unwrap_or((true, true));
        if tasks {
            FOLD_TASK_COUNTS.run(client, &[]);
        }
        if events {
            FOLD_EVENT_COUNTS.run(client, &[]);
        }
    }
}

// Writers of tasks and events hold ROW EXCLUSIVE until they end: SHARE waits for them all
// and keeps new ones out until the recount commits. Each statement after it, in READ
// COMMITTED, sees every row they committed.
static HOLD_WRITERS: Statement =
    Statement::new("LOCK TABLE eventq_internal.tasks, eventq_internal.events IN SHARE MODE", &[]);
static LOCK_TIMEOUT: Statement = Statement::new(
    "SELECT pg_catalog.current_setting('lock_timeout'),
            pg_catalog.set_config('lock_timeout', $1, true)",
    &[TEXT],
);
static SET_LOCK_TIMEOUT: Statement =
    Statement::new("SELECT pg_catalog.set_config('lock_timeout', $1, true)", &[TEXT]);
/// How long one try waits for the locks; how long all tries may take.
const TRY_LOCKS: &str = "200ms";
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

static FORGET_COUNTS: [Statement; 2] = [
    Statement::new("DELETE FROM eventq_internal.task_counts", &[]),
    Statement::new("DELETE FROM eventq_internal.event_counts", &[]),
];
static COUNT_ROWS: [Statement; 2] = [
    Statement::new(
        "INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
         SELECT consumer_id, state, pg_catalog.count(*) FROM eventq_internal.tasks
         GROUP BY consumer_id, state",
        &[],
    ),
    Statement::new(
        "INSERT INTO eventq_internal.event_counts (stream_id, events)
         SELECT stream_id, pg_catalog.count(*) FROM eventq_internal.events GROUP BY stream_id",
        &[],
    ),
];

/// Counts the tasks and events again from the rows, for when the triggers did not fire
/// (a data-only restore with triggers disabled, rows written with
/// `session_replication_role = replica`). Stops writers of tasks and events until the
/// transaction ends. Only in READ COMMITTED: in a snapshot taken before the writers were
/// stopped, rows committed since would be missed.
pub fn recount(client: &SpiClient<'_>) {
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        error::needs_read_committed("recount()");
    }
    hold_writers(client);
    for s in FORGET_COUNTS.iter().chain(COUNT_ROWS.iter()) {
        s.run(client, &[]);
    }
}

/// Takes the drain lock, the fold lock, and SHARE on tasks and events. Writers take these
/// in other orders (a drain writes events, then tasks; dropping a consumer deletes tasks,
/// then events; a maintenance pass holds the drain lock and folds), so each try waits a
/// short while only and gives everything back if it fails, rather than wait in a cycle or
/// stop every writer queued behind it while a long transaction holds a table.
fn hold_writers(client: &SpiClient<'_>) {
    let previous: String = LOCK_TIMEOUT
        .first_row(client, &[arg(TRY_LOCKS)])
        .and_then(|row| column(&row, 1))
        .unwrap_or_else(|| "0".into());
    let started = Instant::now();
    loop {
        let held = contained(|| {
            locks::lock_drain();
            locks::lock_fold();
            HOLD_WRITERS.run(client, &[]);
        });
        if held.is_ok() {
            break;
        }
        if started.elapsed() > GIVE_UP_AFTER {
            error::busy(
                "recount() could not stop the writers of tasks and events",
                "A transaction that changed tasks or events is still open (idle in transaction, or prepared): retry once it has ended.",
            );
        }
        unsafe { pg_sys::pg_usleep(20_000) };
        pgrx::check_for_interrupts!();
    }
    SET_LOCK_TIMEOUT.run(client, &[arg(previous)]);
}
