//! Streams.

use super::{arg, column, locks, scalar, Statement, INT, INTERVAL, TEXT};
use pgrx::datum::Interval;
use pgrx::spi::SpiClient;

static FIND: Statement =
    Statement::new("SELECT id FROM eventq_internal.streams WHERE name = $1", &[TEXT]);

static INSERT: Statement = Statement::new(
    "INSERT INTO eventq_internal.streams (name, retention) VALUES ($1, $2)
     ON CONFLICT (name) DO NOTHING RETURNING id",
    &[TEXT, INTERVAL],
);

static SET_RETENTION: Statement = Statement::new(
    "UPDATE eventq_internal.streams SET retention = $2 WHERE name = $1 RETURNING id",
    &[TEXT, INTERVAL],
);

static CONSUMERS: Statement = Statement::new(
    "SELECT id, name FROM eventq_internal.consumers WHERE stream_id = $1 ORDER BY id",
    &[INT],
);

// Everything of a stream, consumers included, except its staged events: those are the
// drain's, which deletes the staged events of dropped streams (so a drop never waits for a
// drain, nor a drain for a drop).
static DELETE_ALL: Statement = Statement::new(
    "WITH gone_consumers AS (
         DELETE FROM eventq_internal.consumers WHERE stream_id = $1 RETURNING id
     ), gone_tasks AS (
         DELETE FROM eventq_internal.tasks WHERE consumer_id IN (SELECT id FROM gone_consumers)
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts WHERE consumer_id IN (SELECT id FROM gone_consumers)
     ), gone_keys AS (
         DELETE FROM eventq_internal.key_heads WHERE consumer_id IN (SELECT id FROM gone_consumers)
     ), gone_events AS (
         DELETE FROM eventq_internal.events WHERE stream_id = $1
     ), gone_rechecks AS (
         DELETE FROM eventq_internal.key_rechecks WHERE consumer_id IN (SELECT id FROM gone_consumers)
     ), gone_gaps AS (
         DELETE FROM eventq_internal.routing_gaps WHERE consumer_id IN (SELECT id FROM gone_consumers)
     ), gone_dedup AS (
         DELETE FROM eventq_internal.dedup WHERE stream_id = $1
     ), gone_grants AS (
         DELETE FROM eventq_internal.grants WHERE stream_id = $1
     ), tombstone AS (
         INSERT INTO eventq_internal.dropped_streams (id) VALUES ($1) ON CONFLICT DO NOTHING
     )
     DELETE FROM eventq_internal.streams WHERE id = $1",
    &[INT],
);

pub fn find(client: &SpiClient<'_>, name: &str) -> Option<i32> {
    scalar(&FIND, client, &[arg(name)])
}

/// The named stream, held (shared) until this transaction ends: it cannot be dropped
/// meanwhile, so what is created for it (a consumer, a grant) never outlives it. Storage has
/// no foreign keys (see sql/schema.sql); this lock is what keeps that promise.
pub fn find_and_hold(client: &SpiClient<'_>, name: &str) -> Option<i32> {
    let id = find(client, name)?;
    locks::lock_stream(id, locks::Mode::Shared);
    find(client, name).filter(|&again| again == id)
}

/// Creates the stream; `None` if the name is taken.
pub fn insert(client: &SpiClient<'_>, name: &str, retention: Option<Interval>) -> Option<i32> {
    scalar(&INSERT, client, &[arg(name), arg(retention)])
}

/// `false` if there is no such stream.
pub fn set_retention(client: &SpiClient<'_>, name: &str, retention: Option<Interval>) -> bool {
    SET_RETENTION.first_row(client, &[arg(name), arg(retention)]).is_some()
}

/// The stream's consumers, `(id, name)`.
pub fn consumers(client: &SpiClient<'_>, stream_id: i32) -> Vec<(i32, String)> {
    CONSUMERS
        .run(client, &[arg(stream_id)])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect()
}

/// Deletes the stream and its consumers. Drains and retention leave them alone meanwhile
/// (their locks are held until this transaction ends).
pub fn delete(client: &SpiClient<'_>, stream_id: i32, consumers: &[(i32, String)]) {
    locks::lock_stream(stream_id, locks::Mode::Exclusive);
    for (id, _) in consumers {
        locks::lock_consumer(*id, locks::Mode::Exclusive);
    }
    DELETE_ALL.run(client, &[arg(stream_id)]);
    for (id, _) in consumers {
        crate::pull_start::forget(*id);
    }
}
