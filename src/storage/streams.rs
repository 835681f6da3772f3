//! Streams.

use super::{arg, column, drain, scalar, Statement, INT, INTERVAL, TEXT};
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

static CONSUMER_NAMES: Statement = Statement::new(
    "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM eventq_internal.consumers
     WHERE stream_id = $1",
    &[INT],
);

// Everything of a stream, consumers included. Staged rows are found by a scan of the
// (small) staging tables; rows a publisher commits after this are dropped by the drain,
// which skips events of streams that no longer exist.
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
     ), gone_dedup AS (
         DELETE FROM eventq_internal.dedup WHERE stream_id = $1
     ), gone_staged AS (
         DELETE FROM eventq_internal.staged WHERE stream_id = $1
     )
     DELETE FROM eventq_internal.streams WHERE id = $1",
    &[INT],
);

pub fn find(client: &SpiClient<'_>, name: &str) -> Option<i32> {
    scalar(&FIND, client, &[arg(name)])
}

/// Creates the stream; `None` if the name is taken.
pub fn insert(client: &SpiClient<'_>, name: &str, retention: Option<Interval>) -> Option<i32> {
    scalar(&INSERT, client, &[arg(name), arg(retention)])
}

/// `false` if there is no such stream.
pub fn set_retention(client: &SpiClient<'_>, name: &str, retention: Option<Interval>) -> bool {
    SET_RETENTION.first_row(client, &[arg(name), arg(retention)]).is_some()
}

pub fn consumer_names(client: &SpiClient<'_>, stream_id: i32) -> Vec<String> {
    CONSUMER_NAMES
        .first_row(client, &[arg(stream_id)])
        .and_then(|row| column::<Vec<String>>(&row, 1))
        .unwrap_or_default()
}

pub fn delete(client: &SpiClient<'_>, stream_id: i32) {
    // The drain must not be moving events of this stream while they are deleted.
    drain::lock(client);
    DELETE_ALL.run(client, &[arg(stream_id)]);
}
