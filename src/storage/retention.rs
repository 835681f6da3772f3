//! Retention and cleanup: events older than their stream's retention go, with their tasks
//! and attempts (unfinished tasks are counted on their consumer as `expired`); completed
//! and discarded tasks go, with their attempts, once they have been finished for a while.
//!
//! These passes run for everyone (in the worker, or in `run_maintenance()`), so they never
//! wait for a user's transaction: rows someone holds are skipped (SKIP LOCKED) and taken
//! next time, and a stream or consumer being changed (its lock held, storage::locks) is
//! left for the next pass. Each deletes in bounded rounds so that no transaction grows
//! large.

use super::keys::{self, Busy};
use super::{arg, column, locks, scalar, Statement, BIGINT, INT};
use pgrx::spi::SpiClient;

/// Rows per round.
const ROUND: i64 = 10_000;
/// Rounds per stream and call, so that one call stays short.
const MAX_ROUNDS: usize = 20;
/// Rounds of the walk over a consumer's tasks per call: the walk goes on from there at the
/// next call, so every task is looked at within a few calls.
const CLEANUP_ROUNDS: usize = 5;

static STREAMS_WITH_RETENTION: Statement = Statement::new(
    "SELECT id, (extract(epoch FROM retention) * 1000000)::bigint
     FROM eventq_internal.streams WHERE retention IS NOT NULL ORDER BY id",
    &[],
);

static TASK_CONSUMERS_OF: Statement = Statement::new(
    "SELECT id FROM eventq_internal.consumers WHERE stream_id = $1 AND mode = 'task' ORDER BY id",
    &[INT],
);

// The oldest expired events of a stream, with their tasks. An event one of whose tasks
// someone holds right now (a worker acking it, say) stays until a later pass. Rows are
// found by key and deleted by ctid: joins here could be planned as hashes of whole tables
// when statistics are stale (see events_by_time in sql/schema.sql). Returns the counts,
// and the heads of ordered keys that went unfinished, so that their keys move on.
static EXPIRE_EVENTS: Statement = Statement::new(
    "WITH doomed AS (
         SELECT ctid, seq FROM eventq_internal.events
         WHERE stream_id = $1 AND published_at > '-infinity'
           AND published_at < pg_catalog.now() - $2 * interval '1 microsecond'
         ORDER BY published_at LIMIT $3
     ), candidates AS (
         SELECT task.ctid, task.consumer_id, task.seq
         FROM doomed d
         CROSS JOIN eventq_internal.consumers c
         CROSS JOIN LATERAL (
             SELECT t.ctid, t.consumer_id, t.seq FROM eventq_internal.tasks t
             WHERE t.consumer_id = c.id AND t.seq = d.seq LIMIT 1
         ) task
         WHERE c.stream_id = $1
     ), locked AS (
         SELECT t.ctid, t.consumer_id, t.seq FROM eventq_internal.tasks t
         WHERE t.ctid = ANY (ARRAY (SELECT ctid FROM candidates))
         FOR UPDATE SKIP LOCKED
     ), held AS (
         SELECT DISTINCT c.seq FROM candidates c
         WHERE NOT EXISTS (SELECT 1 FROM locked l
                           WHERE l.consumer_id = c.consumer_id AND l.seq = c.seq)
     ), gone AS (
         DELETE FROM eventq_internal.events
         WHERE ctid = ANY (ARRAY (SELECT ctid FROM doomed
                                  WHERE seq NOT IN (SELECT seq FROM held)))
         RETURNING seq
     ), gone_tasks AS (
         DELETE FROM eventq_internal.tasks
         WHERE ctid = ANY (ARRAY (SELECT l.ctid FROM locked l
                                  WHERE l.seq IN (SELECT seq FROM gone)))
         RETURNING consumer_id, seq, state, order_key
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts a USING gone_tasks t
         WHERE a.consumer_id = t.consumer_id AND a.task_id = t.seq
     ), unfinished AS (
         SELECT * FROM gone_tasks WHERE state NOT IN ('completed', 'discarded')
     ), counted AS (
         INSERT INTO eventq_internal.expirations (consumer_id, tasks)
         SELECT consumer_id, pg_catalog.count(*) FROM unfinished GROUP BY consumer_id
     )
     SELECT (SELECT pg_catalog.count(*) FROM gone),
            (SELECT pg_catalog.count(*) FROM unfinished),
            (SELECT pg_catalog.count(*) FROM held),
            h.consumers, h.keys, h.seqs
     FROM (SELECT pg_catalog.array_agg(consumer_id ORDER BY consumer_id, seq) AS consumers,
                  pg_catalog.array_agg(order_key ORDER BY consumer_id, seq) AS keys,
                  pg_catalog.array_agg(seq ORDER BY consumer_id, seq) AS seqs
           FROM unfinished WHERE order_key IS NOT NULL AND state <> 'waiting') h",
    &[INT, BIGINT, BIGINT],
);

// A dedup claim goes once its event is gone (expired, or never drained because its stream
// went) and it is older than the retention; never while the event is still retained or
// staged, so the same dedup_key cannot publish a second event while the first is kept.
// (Staging has no index: NOT IN reads it once, into a hash.)
static EXPIRE_DEDUP: Statement = Statement::new(
    "DELETE FROM eventq_internal.dedup
     WHERE ctid = ANY (ARRAY (
         SELECT d.ctid FROM eventq_internal.dedup d
         WHERE d.stream_id = $1 AND d.published_at > '-infinity'
           AND d.published_at < pg_catalog.now() - $2 * interval '1 microsecond'
           AND NOT EXISTS (SELECT 1 FROM eventq_internal.events e WHERE e.id = d.event_id)
           AND d.event_id NOT IN (SELECT s.id FROM eventq_internal.staged s)
         ORDER BY d.published_at LIMIT $3
         FOR UPDATE SKIP LOCKED))",
    &[INT, BIGINT, BIGINT],
);

static CONSUMERS_WITH_TASKS: Statement = Statement::new(
    "SELECT id, cleanup_seq FROM eventq_internal.consumers WHERE mode = 'task' ORDER BY id",
    &[],
);

// A consumer's tasks in a window of seq numbers ($4, $4 + $3]: those finished long enough
// ago go. Walking every task (not only the oldest finished ones) finds finished tasks
// wherever they are, e.g. behind older tasks that were redriven and finished again later;
// windows of seq numbers cost what they hold, read through the primary key (the plan is
// held to indexes: one made while the table looked small would scan it whole per window).
static REMOVE_FINISHED: Statement = Statement::indexed(
    "WITH scanned AS (
         SELECT ctid, seq, state, finished_at FROM eventq_internal.tasks
         WHERE consumer_id = $1 AND seq > $4 AND seq <= $4 + $3
     ), doomed AS (
         SELECT t.ctid FROM eventq_internal.tasks t
         WHERE t.ctid = ANY (ARRAY (
                 SELECT ctid FROM scanned
                 WHERE state IN ('completed', 'discarded')
                   AND finished_at < pg_catalog.now() - $2 * interval '1 second'))
         FOR UPDATE SKIP LOCKED
     ), gone AS (
         DELETE FROM eventq_internal.tasks t
         WHERE t.ctid = ANY (ARRAY (SELECT ctid FROM doomed))
         RETURNING t.seq
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts a USING gone g
         WHERE a.consumer_id = $1 AND a.task_id = g.seq
     )
     SELECT (SELECT pg_catalog.count(*) FROM gone)",
    &[INT, BIGINT, BIGINT, BIGINT],
);

static SET_CLEANUP_SEQ: Statement = Statement::new(
    "UPDATE eventq_internal.consumers SET cleanup_seq = $2 WHERE id = $1",
    &[INT, BIGINT],
);

// Rows of idle keys with nothing waiting (run under the drain lock, so that no drain is
// inserting the same key meanwhile). A row that remembers what the key has finished of
// its consumer's sequence stays: forgetting it would hold the key's next tasks back again.
static REMOVE_IDLE_KEYS: Statement = Statement::indexed(
    "DELETE FROM eventq_internal.key_heads h
     WHERE h.ctid = ANY (ARRAY (
             SELECT ctid FROM eventq_internal.key_heads
             WHERE head_seq IS NULL AND sequence_done = 0 LIMIT $1
             FOR UPDATE SKIP LOCKED))
       AND NOT EXISTS (SELECT 1 FROM eventq_internal.tasks t
                       WHERE t.consumer_id = h.consumer_id AND t.order_key = h.order_key
                         AND t.state = 'waiting')",
    &[BIGINT],
);

// The record of drains older than ten minutes; the newest always stays (it is the head).
static TRIM_DRAINS: Statement = Statement::new(
    "DELETE FROM eventq_internal.drains
     WHERE last_seq < (SELECT pg_catalog.max(last_seq) FROM eventq_internal.drains)
       AND drained_at < pg_catalog.now() - interval '10 minutes'",
    &[],
);

// Folds each consumer's expiration counts into one row, and drops those of consumers that
// are gone: every row, with no join, as storage::counts folds the task counts (which says
// why); only when there is something to fold or drop (EXPIRATIONS_TO_FOLD).
static FOLD_EXPIRATIONS: Statement = Statement::new(
    "WITH folded AS (
         DELETE FROM eventq_internal.expirations RETURNING consumer_id, tasks
     )
     INSERT INTO eventq_internal.expirations (consumer_id, tasks)
     SELECT f.consumer_id, pg_catalog.sum(f.tasks) FROM folded f
     WHERE EXISTS (SELECT 1 FROM eventq_internal.consumers c WHERE c.id = f.consumer_id)
     GROUP BY f.consumer_id",
    &[],
);

static EXPIRATIONS_TO_FOLD: Statement = Statement::new(
    "SELECT EXISTS (SELECT FROM eventq_internal.expirations
                    GROUP BY consumer_id HAVING pg_catalog.count(*) > 1)
         OR EXISTS (SELECT FROM eventq_internal.expirations x
                    WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.consumers c
                                      WHERE c.id = x.consumer_id))",
    &[],
);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// Events deleted by retention.
    pub expired_events: i64,
    /// Unfinished tasks deleted with their events (counted on their consumers).
    pub expired_tasks: i64,
    /// Expired events kept for a later pass because someone held one of their tasks.
    pub held_events: i64,
    /// Streams left for a later pass because they or a consumer of theirs were being changed.
    pub skipped_streams: i64,
    /// Completed and discarded tasks removed.
    pub removed_tasks: i64,
    /// Grants of dropped roles removed.
    pub grants_changed: bool,
}

impl std::ops::AddAssign for Cleaned {
    fn add_assign(&mut self, o: Cleaned) {
        self.expired_events += o.expired_events;
        self.expired_tasks += o.expired_tasks;
        self.held_events += o.held_events;
        self.skipped_streams += o.skipped_streams;
        self.removed_tasks += o.removed_tasks;
        self.grants_changed |= o.grants_changed;
    }
}

/// The streams that have a retention, with it in microseconds.
pub fn streams_with_retention(client: &SpiClient<'_>) -> Vec<(i32, i64)> {
    STREAMS_WITH_RETENTION
        .run(client, &[])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect()
}

/// Applies one stream's retention.
pub fn expire_stream(client: &SpiClient<'_>, stream_id: i32, retention_us: i64) -> Cleaned {
    let mut cleaned = Cleaned::default();
    let consumers: Vec<i32> =
        TASK_CONSUMERS_OF.run(client, &[arg(stream_id)]).filter_map(|r| column(&r, 1)).collect();
    if !locks::try_lock_stream(stream_id, locks::Mode::Shared)
        || !consumers.iter().all(|&c| locks::try_lock_consumer(c, locks::Mode::Shared))
    {
        cleaned.skipped_streams = 1;
        return cleaned;
    }
    for _ in 0..MAX_ROUNDS {
        let Some(row) =
            EXPIRE_EVENTS.first_row(client, &[arg(stream_id), arg(retention_us), arg(ROUND)])
        else {
            break;
        };
        let events: i64 = column(&row, 1).unwrap_or(0);
        let held: i64 = column(&row, 3).unwrap_or(0);
        cleaned.expired_events += events;
        cleaned.expired_tasks += column::<i64>(&row, 2).unwrap_or(0);
        cleaned.held_events += held;
        let consumers: Vec<i32> = column(&row, 4).unwrap_or_default();
        let keys: Vec<String> = column(&row, 5).unwrap_or_default();
        let seqs: Vec<i64> = column(&row, 6).unwrap_or_default();
        let heads = consumers.into_iter().zip(keys).zip(seqs).map(|((c, k), s)| (c, k, s));
        keys::advance_all(client, heads.collect(), Busy::Recheck);
        if events + held < ROUND || events == 0 {
            break;
        }
    }
    for _ in 0..MAX_ROUNDS {
        let removed = EXPIRE_DEDUP.run(client, &[arg(stream_id), arg(retention_us), arg(ROUND)]);
        if (removed.len() as i64) < ROUND {
            break;
        }
    }
    cleaned
}

static TASK_SPAN: Statement = Statement::indexed(
    "SELECT pg_catalog.min(seq), pg_catalog.max(seq) FROM eventq_internal.tasks WHERE consumer_id = $1",
    &[INT],
);

/// Removes one consumer's tasks finished more than `keep_seconds` ago, continuing where the
/// last call stopped.
pub fn remove_finished(
    client: &SpiClient<'_>,
    consumer_id: i32,
    start_after: i64,
    keep_seconds: i64,
) -> i64 {
    if !locks::try_lock_consumer(consumer_id, locks::Mode::Shared) {
        return 0;
    }
    let Some(span) = TASK_SPAN.first_row(client, &[arg(consumer_id)]) else { return 0 };
    let (Some(lowest), Some(highest)) = (column::<i64>(&span, 1), column::<i64>(&span, 2)) else {
        return 0;
    };
    let mut removed = 0;
    let mut position = start_after.max(lowest - 1);
    for _ in 0..CLEANUP_ROUNDS {
        if position >= highest {
            // the end: the next call starts from the beginning
            position = 0;
            break;
        }
        removed += REMOVE_FINISHED
            .first_row(client, &[arg(consumer_id), arg(keep_seconds), arg(ROUND), arg(position)])
            .and_then(|row| column::<i64>(&row, 1))
            .unwrap_or(0);
        position += ROUND;
    }
    if position != start_after {
        SET_CLEANUP_SEQ.run(client, &[arg(consumer_id), arg(position)]);
    }
    removed
}

/// The task consumers with where their cleanup continues.
pub fn consumers_with_tasks(client: &SpiClient<'_>) -> Vec<(i32, i64)> {
    CONSUMERS_WITH_TASKS
        .run(client, &[])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect()
}

// Grants to roles that no longer exist (DROP ROLE cannot know about them). They grant
// nothing already; gone, they cannot pass to a later role that gets the same oid.
static FORGET_DROPPED_GRANTEES: Statement = Statement::new(
    "DELETE FROM eventq_internal.grants g
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = g.grantee)",
    &[],
);

// Consumers whose owner was dropped go to the extension's owner: administrators and
// managers of the stream keep working them, and a later role that gets the same oid (or
// has it in another cluster a dump is restored into) does not inherit them.
static ADOPT_ORPHANED_CONSUMERS: Statement = Statement::new(
    "UPDATE eventq_internal.consumers c
     SET owner = (SELECT n.nspowner FROM pg_catalog.pg_namespace n
                  WHERE n.nspname OPERATOR(pg_catalog.=) 'eventq_internal')
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = c.owner)",
    &[],
);

/// Housekeeping of eventq's own bookkeeping: idle key rows (only while holding the drain
/// lock; skipped otherwise), the record of old drains, expiration counts, grants and
/// consumers of dropped roles. Returns whether grants changed.
// The drain lock is held from where it is taken to the end of the transaction, and every
// pull and fetch waits for a drain meanwhile: so it is taken last, after everything else
// the pass does (the caller runs nothing after this either).
pub fn tidy(client: &SpiClient<'_>) -> bool {
    TRIM_DRAINS.run(client, &[]);
    if scalar::<bool>(&EXPIRATIONS_TO_FOLD, client, &[]).unwrap_or(true) {
        FOLD_EXPIRATIONS.run(client, &[]);
    }
    ADOPT_ORPHANED_CONSUMERS.run(client, &[]);
    let grants_changed = !FORGET_DROPPED_GRANTEES.run(client, &[]).is_empty();
    if locks::try_lock_drain() {
        REMOVE_IDLE_KEYS.run(client, &[arg(ROUND)]);
    }
    grants_changed
}
