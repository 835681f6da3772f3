//! Retention and cleanup: events older than their stream's retention go, with their tasks
//! and attempts (unfinished tasks are counted on their consumer as `expired`); completed
//! and discarded tasks go, with their attempts, once they have been finished for a while.
//!
//! Both delete in bounded rounds so that no single transaction grows large.

use super::{arg, column, scalar, tasks, Statement, BIGINT, INT};
use pgrx::spi::SpiClient;
use std::collections::BTreeMap;

/// Rows per round.
const ROUND: i64 = 10_000;
/// Rounds per stream or consumer and call, so that one call stays short.
const MAX_ROUNDS: usize = 20;

static STREAMS_WITH_RETENTION: Statement = Statement::new(
    "SELECT id, (extract(epoch FROM retention) * 1000000)::bigint
     FROM eventq_internal.streams WHERE retention IS NOT NULL ORDER BY id",
    &[],
);

// The oldest expired events of a stream, with their tasks. Tasks that were in flight for
// an ordered key are reported, so that the key moves on to its next task. Rows are found
// by key and deleted by ctid: joins here could be planned as hashes of whole tables when
// statistics are stale (see events_by_time in sql/schema.sql).
static EXPIRE_EVENTS: Statement = Statement::new(
    "WITH doomed AS (
         SELECT ctid FROM eventq_internal.events
         WHERE stream_id = $1 AND published_at > '-infinity'
           AND published_at < now() - $2 * interval '1 microsecond'
         ORDER BY published_at LIMIT $3
     ), gone AS (
         DELETE FROM eventq_internal.events
         WHERE ctid = ANY (ARRAY (SELECT ctid FROM doomed))
         RETURNING seq
     ), gone_tasks AS (
         DELETE FROM eventq_internal.tasks
         WHERE ctid = ANY (ARRAY (
             SELECT task.ctid
             FROM gone g
             CROSS JOIN eventq_internal.consumers c
             CROSS JOIN LATERAL (
                 SELECT t.ctid FROM eventq_internal.tasks t
                 WHERE t.consumer_id = c.id AND t.seq = g.seq LIMIT 1
             ) task
             WHERE c.stream_id = $1))
         RETURNING consumer_id, seq, state, order_key
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts a USING gone_tasks t
         WHERE a.consumer_id = t.consumer_id AND a.task_id = t.seq
     ), unfinished AS (
         SELECT * FROM gone_tasks WHERE state NOT IN ('completed', 'discarded')
     ), counted AS (
         UPDATE eventq_internal.consumers c SET expired = c.expired + x.n
         FROM (SELECT consumer_id, count(*) AS n FROM unfinished GROUP BY consumer_id) x
         WHERE c.id = x.consumer_id
     ), heads AS (
         SELECT consumer_id, order_key, seq FROM unfinished
         WHERE order_key IS NOT NULL AND state <> 'waiting'
     )
     SELECT (SELECT count(*) FROM gone),
            (SELECT count(*) FROM unfinished),
            (SELECT array_agg(consumer_id ORDER BY consumer_id) FROM heads),
            (SELECT array_agg(order_key ORDER BY consumer_id) FROM heads),
            (SELECT array_agg(seq ORDER BY consumer_id) FROM heads)",
    &[INT, BIGINT, BIGINT],
);

static EXPIRE_DEDUP: Statement = Statement::new(
    "DELETE FROM eventq_internal.dedup
     WHERE stream_id = $1 AND published_at > '-infinity'
       AND published_at < now() - $2 * interval '1 microsecond'",
    &[INT, BIGINT],
);

static CONSUMERS_WITH_TASKS: Statement =
    Statement::new("SELECT id FROM eventq_internal.consumers WHERE mode = 'task' ORDER BY id", &[]);

// Among a consumer's oldest finished tasks, those finished long enough ago. Tasks finish
// roughly in seq order, so the oldest are what is due; looking at a bounded window keeps a
// round cheap however many tasks a consumer has.
static REMOVE_FINISHED: Statement = Statement::new(
    "WITH oldest AS (
         SELECT ctid FROM eventq_internal.tasks
         WHERE consumer_id = $1 AND state IN ('completed', 'discarded')
         ORDER BY seq LIMIT $3
     ), gone AS (
         DELETE FROM eventq_internal.tasks t
         WHERE t.ctid = ANY (ARRAY (SELECT ctid FROM oldest))
           AND t.state IN ('completed', 'discarded')
           AND t.finished_at < now() - $2 * interval '1 second'
         RETURNING t.seq
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts a USING gone g
         WHERE a.consumer_id = $1 AND a.task_id = g.seq
     )
     SELECT count(*) FROM gone",
    &[INT, BIGINT, BIGINT],
);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// Events deleted by retention.
    pub expired_events: i64,
    /// Unfinished tasks deleted with their events (counted on their consumers).
    pub expired_tasks: i64,
    /// Completed and discarded tasks removed.
    pub removed_tasks: i64,
}

/// Applies every stream's retention.
pub fn expire(client: &SpiClient<'_>) -> Cleaned {
    let streams: Vec<(i32, i64)> = STREAMS_WITH_RETENTION
        .run(client, &[])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect();
    let mut cleaned = Cleaned::default();
    for (stream_id, retention_us) in streams {
        for _ in 0..MAX_ROUNDS {
            let Some(row) =
                EXPIRE_EVENTS.first_row(client, &[arg(stream_id), arg(retention_us), arg(ROUND)])
            else {
                break;
            };
            let events: i64 = column(&row, 1).unwrap_or(0);
            cleaned.expired_events += events;
            cleaned.expired_tasks += column::<i64>(&row, 2).unwrap_or(0);
            let consumers: Vec<i32> = column(&row, 3).unwrap_or_default();
            let keys: Vec<String> = column(&row, 4).unwrap_or_default();
            let seqs: Vec<i64> = column(&row, 5).unwrap_or_default();
            let mut by_consumer: BTreeMap<i32, (Vec<String>, Vec<i64>)> = BTreeMap::new();
            for ((consumer, key), seq) in consumers.into_iter().zip(keys).zip(seqs) {
                let entry = by_consumer.entry(consumer).or_default();
                entry.0.push(key);
                entry.1.push(seq);
            }
            for (consumer, (keys, seqs)) in by_consumer {
                tasks::advance_keys(client, consumer, keys, seqs);
            }
            if events < ROUND {
                break;
            }
        }
        EXPIRE_DEDUP.run(client, &[arg(stream_id), arg(retention_us)]);
    }
    cleaned
}

/// Removes tasks finished more than `keep_seconds` ago.
pub fn remove_finished(client: &SpiClient<'_>, keep_seconds: i64) -> i64 {
    let consumers: Vec<i32> =
        CONSUMERS_WITH_TASKS.run(client, &[]).filter_map(|row| column(&row, 1)).collect();
    let mut removed = 0;
    for consumer in consumers {
        for _ in 0..MAX_ROUNDS {
            let n: i64 =
                scalar(&REMOVE_FINISHED, client, &[arg(consumer), arg(keep_seconds), arg(ROUND)])
                    .unwrap_or(0);
            removed += n;
            if n < ROUND {
                break;
            }
        }
    }
    removed
}
