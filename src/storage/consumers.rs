//! Consumers: their settings, and the tasks or cursor position they start with.
//!
//! Creating, changing and dropping a consumer never takes the drain lock: a transaction
//! that does so inside BEGIN .. COMMIT would otherwise stop delivery for everyone until it
//! ended. A change holds the consumer's own lock exclusively instead (storage::locks);
//! drains route around it and leave a gap that the next drain fills with the consumer's
//! committed settings. A new consumer starts after the log's committed head; the events of
//! drains that ran while it was being created are filled in the same way.

use super::{
    arg, column, keys, locks, log, scalar, Statement, BIGINT, BOOL, INT, INTERVAL, OID, TEXT,
    TEXT_ARRAY, TIMESTAMPTZ,
};
use crate::core::settings::{BackoffKind, KeyOrdering, Mode, RetryPolicy};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys;
use pgrx::spi::{SpiClient, SpiHeapTupleData};

/// A consumer as the task and log paths need it. Intervals are in microseconds.
pub struct Consumer {
    pub id: i32,
    pub stream_id: i32,
    pub mode: Mode,
    pub paused: bool,
    pub ordering: KeyOrdering,
    pub policy: RetryPolicy,
    pub include_re: Option<String>,
    pub exclude_re: Option<String>,
    pub cursor_seq: i64,
    pub start_at: Option<TimestampWithTimeZone>,
    /// The role that created it.
    pub owner: pg_sys::Oid,
    /// Declared action order per key (with key ordering), if any.
    pub sequence: Option<Vec<String>>,
}

// The columns `decode` reads.
macro_rules! select_consumer {
    ($where:literal) => {
        concat!(
            "SELECT id, stream_id, mode, paused, ordering, max_attempts, backoff,
                    (extract(epoch FROM backoff_base) * 1000000)::bigint,
                    (extract(epoch FROM backoff_max) * 1000000)::bigint,
                    (extract(epoch FROM lease) * 1000000)::bigint,
                    include_re, exclude_re, cursor_seq, start_at, owner::oid, sequence
             FROM eventq_internal.consumers WHERE ",
            $where
        )
    };
}

static FIND: Statement = Statement::new(select_consumer!("name = $1"), &[TEXT]);
static FIND_BY_ID: Statement = Statement::new(select_consumer!("id = $1"), &[INT]);

pub fn find(client: &SpiClient<'_>, name: &str) -> Option<Consumer> {
    FIND.first_row(client, &[arg(name)]).map(decode)
}

pub fn find_by_id(client: &SpiClient<'_>, id: i32) -> Option<Consumer> {
    FIND_BY_ID.first_row(client, &[arg(id)]).map(decode)
}

fn decode(row: SpiHeapTupleData<'_>) -> Consumer {
    let text = |i| column::<String>(&row, i).unwrap_or_default();
    let micros = |i| column::<i64>(&row, i).unwrap_or(0);
    Consumer {
        id: column(&row, 1).unwrap_or(0),
        stream_id: column(&row, 2).unwrap_or(0),
        mode: Mode::parse(&text(3)).unwrap_or(Mode::Task),
        paused: column(&row, 4).unwrap_or(false),
        ordering: KeyOrdering::parse(&text(5)).unwrap_or(KeyOrdering::None),
        policy: RetryPolicy {
            max_attempts: column(&row, 6).unwrap_or(1),
            backoff: BackoffKind::parse(&text(7)).unwrap_or(BackoffKind::Exponential),
            backoff_base: micros(8),
            backoff_max: micros(9),
            lease: micros(10),
        },
        include_re: column(&row, 11),
        exclude_re: column(&row, 12),
        cursor_seq: column(&row, 13).unwrap_or(0),
        start_at: column(&row, 14),
        owner: column(&row, 15).unwrap_or(pg_sys::InvalidOid),
        sequence: column(&row, 16),
    }
}

/// Finds the consumer and takes its lock exclusively (waiting for drains and retention
/// passes that use it, which are short), then reads it again: what it returns is current
/// and stays so until this transaction ends.
pub fn find_for_change(client: &SpiClient<'_>, name: &str) -> Option<Consumer> {
    let id = find(client, name)?.id;
    locks::lock_consumer(id, locks::Mode::Exclusive);
    find(client, name).filter(|c| c.id == id)
}

/// Everything `create_consumer` stores.
pub struct NewConsumer<'a> {
    pub name: &'a str,
    pub stream_id: i32,
    pub mode: Mode,
    pub subjects: Vec<String>,
    pub exclude: Vec<String>,
    pub include_re: Option<String>,
    pub exclude_re: Option<String>,
    pub ordering: KeyOrdering,
    pub max_attempts: i32,
    pub backoff: BackoffKind,
    pub backoff_base: Interval,
    pub backoff_max: Interval,
    pub lease: Interval,
    pub start_at: Option<TimestampWithTimeZone>,
    pub owner: pg_sys::Oid,
    pub sequence: Option<Vec<String>>,
    pub sequence_timeout: Option<Interval>,
}

// A task consumer gets an open gap from the head on: drains that run before this
// transaction commits cannot see the consumer, and the first drain after fills in theirs.
static INSERT: Statement = Statement::new(
    "WITH created AS (
         INSERT INTO eventq_internal.consumers
             (name, stream_id, mode, subjects, exclude, include_re, exclude_re, ordering,
              max_attempts, backoff, backoff_base, backoff_max, lease, start_at, cursor_seq,
              owner, sequence, sequence_timeout)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::regrole,
                 $17, $18)
         ON CONFLICT (name) DO NOTHING RETURNING id, mode
     ), gap AS (
         INSERT INTO eventq_internal.routing_gaps (consumer_id, from_seq)
         SELECT id, $15 + 1 FROM created WHERE mode = 'task'
     )
     SELECT id FROM created",
    &[
        TEXT,
        INT,
        TEXT,
        TEXT_ARRAY,
        TEXT_ARRAY,
        TEXT,
        TEXT,
        TEXT,
        INT,
        TEXT,
        INTERVAL,
        INTERVAL,
        INTERVAL,
        TIMESTAMPTZ,
        BIGINT,
        OID,
        TEXT_ARRAY,
        INTERVAL,
    ],
);

/// Creates the consumer after the log's committed head; `None` if the name is taken.
pub fn insert(client: &SpiClient<'_>, c: NewConsumer<'_>) -> Option<i32> {
    let head = log::head(client);
    scalar(
        &INSERT,
        client,
        &[
            arg(c.name),
            arg(c.stream_id),
            arg(c.mode.as_str()),
            arg(c.subjects),
            arg(c.exclude),
            arg(c.include_re),
            arg(c.exclude_re),
            arg(c.ordering.as_str()),
            arg(c.max_attempts),
            arg(c.backoff.as_str()),
            arg(c.backoff_base),
            arg(c.backoff_max),
            arg(c.lease),
            arg(c.start_at),
            arg(head),
            arg(c.owner),
            arg(c.sequence),
            arg(c.sequence_timeout),
        ],
    )
}

/// Settings `alter_consumer` changes; `None` keeps the current value.
#[derive(Default)]
pub struct Changes {
    pub subjects: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// Regexes are replaced together with the patterns they come from.
    pub regexes: Option<(Option<String>, Option<String>)>,
    pub ordering: Option<KeyOrdering>,
    pub max_attempts: Option<i32>,
    pub backoff: Option<BackoffKind>,
    pub backoff_base: Option<Interval>,
    pub backoff_max: Option<Interval>,
    pub lease: Option<Interval>,
    /// `Some(None)` clears the limit.
    pub start_at: Option<Option<TimestampWithTimeZone>>,
    /// `Some(None)` clears the sequence (and its timeout).
    pub sequence: Option<Option<Vec<String>>>,
    pub sequence_timeout: Option<Interval>,
}

static UPDATE: Statement = Statement::new(
    "UPDATE eventq_internal.consumers SET
         subjects = coalesce($2, subjects),
         exclude = coalesce($3, exclude),
         include_re = CASE WHEN $4 THEN $5 ELSE include_re END,
         exclude_re = CASE WHEN $4 THEN $6 ELSE exclude_re END,
         ordering = coalesce($7, ordering),
         max_attempts = coalesce($8, max_attempts),
         backoff = coalesce($9, backoff),
         backoff_base = coalesce($10, backoff_base),
         backoff_max = coalesce($11, backoff_max),
         lease = coalesce($12, lease),
         start_at = CASE WHEN $13 THEN $14 ELSE start_at END,
         sequence = CASE WHEN $15 THEN $16 ELSE sequence END,
         sequence_timeout = CASE WHEN $15 AND $16 IS NULL THEN NULL
                                 ELSE coalesce($17, sequence_timeout) END
     WHERE id = $1",
    &[
        INT,
        TEXT_ARRAY,
        TEXT_ARRAY,
        BOOL,
        TEXT,
        TEXT,
        TEXT,
        INT,
        TEXT,
        INTERVAL,
        INTERVAL,
        INTERVAL,
        BOOL,
        TIMESTAMPTZ,
        BOOL,
        TEXT_ARRAY,
        INTERVAL,
    ],
);

/// Applies the changes; the caller holds the consumer's lock (`find_for_change`).
pub fn update(client: &SpiClient<'_>, id: i32, c: Changes) {
    let (new_regexes, (include_re, exclude_re)) = match c.regexes {
        Some(pair) => (true, pair),
        None => (false, (None, None)),
    };
    let (new_start, start_at) = match c.start_at {
        Some(start) => (true, start),
        None => (false, None),
    };
    let (new_sequence, sequence) = match c.sequence {
        Some(sequence) => (true, sequence),
        None => (false, None),
    };
    UPDATE.run(
        client,
        &[
            arg(id),
            arg(c.subjects),
            arg(c.exclude),
            arg(new_regexes),
            arg(include_re),
            arg(exclude_re),
            arg(c.ordering.map(KeyOrdering::as_str)),
            arg(c.max_attempts),
            arg(c.backoff.map(BackoffKind::as_str)),
            arg(c.backoff_base),
            arg(c.backoff_max),
            arg(c.lease),
            arg(new_start),
            arg(start_at),
            arg(new_sequence),
            arg(sequence),
            arg(c.sequence_timeout),
        ],
    );
}

static SET_PAUSED: Statement = Statement::new(
    "UPDATE eventq_internal.consumers SET paused = $2 WHERE name = $1 RETURNING id",
    &[TEXT, BOOL],
);

/// `false` if there is no such consumer.
pub fn set_paused(client: &SpiClient<'_>, name: &str, paused: bool) -> bool {
    SET_PAUSED.first_row(client, &[arg(name), arg(paused)]).is_some()
}

static DELETE: Statement = Statement::new(
    "WITH gone AS (
         DELETE FROM eventq_internal.consumers WHERE id = $1 RETURNING id
     ), gone_tasks AS (
         DELETE FROM eventq_internal.tasks WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_keys AS (
         DELETE FROM eventq_internal.key_heads WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_rechecks AS (
         DELETE FROM eventq_internal.key_rechecks WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_gaps AS (
         DELETE FROM eventq_internal.routing_gaps WHERE consumer_id IN (SELECT id FROM gone)
     )
     SELECT id FROM gone",
    &[INT],
);

/// Drops a consumer with everything it has; the caller holds its lock.
pub fn delete(client: &SpiClient<'_>, id: i32) {
    DELETE.run(client, &[arg(id)]);
    crate::pull_start::forget(id);
}

// A replay: tasks for the retained events published at or after $3 that pass the filter.
// Events the consumer has no task for get one; finished tasks start over with a fresh
// attempt budget (their completed attempt is recorded first, so the history keeps it);
// unfinished tasks stay as they are. Keyed tasks start out waiting (settled afterwards).
static REPLAY: Statement = Statement::new(
    "WITH c AS (
         SELECT id, stream_id, include_re, exclude_re, ordering = 'key' AS keyed
         FROM eventq_internal.consumers WHERE id = $1
     ), wanted AS (
         SELECT e.seq, e.deliver_at, CASE WHEN c.keyed THEN e.key END AS order_key
         FROM c JOIN eventq_internal.events e ON e.stream_id = c.stream_id
         WHERE e.published_at > '-infinity' AND e.published_at >= $2
           AND (c.include_re IS NULL OR e.subject ~ c.include_re)
           AND (c.exclude_re IS NULL OR e.subject !~ c.exclude_re)
     ), finished AS (
         SELECT t.seq, t.state, t.attempt, t.started_at, t.finished_at
         FROM wanted w
         CROSS JOIN LATERAL (
             SELECT * FROM eventq_internal.tasks t
             WHERE t.consumer_id = $1 AND t.seq = w.seq LIMIT 1
         ) t
         WHERE t.state IN ('completed', 'discarded')
     ), history AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, started_at, finished_at)
         SELECT $1, seq, attempt, 'completed', started_at, finished_at
         FROM finished WHERE state = 'completed' AND attempt > 0
     ), replayed AS (
         INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
         SELECT $1, w.seq,
                CASE
                  WHEN w.order_key IS NOT NULL THEN 'waiting'
                  WHEN w.deliver_at > pg_catalog.now() THEN 'scheduled'
                  ELSE 'available'
                END::eventq_internal.task_state,
                greatest(coalesce(w.deliver_at, pg_catalog.now()), pg_catalog.now()),
                w.order_key
         FROM wanted w
         ON CONFLICT (consumer_id, seq) DO UPDATE
             SET state = excluded.state, run_at = excluded.run_at, order_key = excluded.order_key,
                 attempt = 0, lease_until = NULL, started_at = NULL, finished_at = NULL,
                 last_error = NULL
             WHERE eventq_internal.tasks.state IN ('completed', 'discarded')
         RETURNING order_key
     )
     SELECT pg_catalog.count(*), pg_catalog.array_agg(DISTINCT order_key) FILTER (WHERE order_key IS NOT NULL)
     FROM replayed",
    &[INT, TIMESTAMPTZ],
);

/// Re-delivers the retained events published at or after `since` (see REPLAY); the caller
/// holds the consumer's lock. Returns how many tasks were created or restarted.
pub fn replay(client: &SpiClient<'_>, c: &Consumer, since: TimestampWithTimeZone) -> i64 {
    // Tasks of old events, below where pulls start.
    crate::pull_start::released(c.id);
    let Some(row) = REPLAY.first_row(client, &[arg(c.id), arg(since)]) else { return 0 };
    let keys: Vec<String> = column(&row, 2).unwrap_or_default();
    if !keys.is_empty() {
        keys::settle_keys(client, c.id, keys, keys::Busy::Wait);
    }
    column(&row, 1).unwrap_or(0)
}

// The cursor position from which a log reader sees the events published at or after $2:
// just before the oldest such event, or the committed head when there is none. Commit
// order and publish time differ, so a few events published earlier may follow; none
// published later is skipped.
static POSITION_AT: Statement = Statement::new(
    "SELECT pg_catalog.min(seq) - 1 FROM eventq_internal.events
     WHERE stream_id = $1 AND published_at > '-infinity' AND published_at >= $2",
    &[INT, TIMESTAMPTZ],
);

pub fn position_at(client: &SpiClient<'_>, stream_id: i32, at: TimestampWithTimeZone) -> i64 {
    scalar(&POSITION_AT, client, &[arg(stream_id), arg(at)]).unwrap_or_else(|| log::head(client))
}

static SET_CURSOR: Statement = Statement::new(
    "UPDATE eventq_internal.consumers SET cursor_seq = $2 WHERE id = $1",
    &[INT, BIGINT],
);

pub fn set_cursor(client: &SpiClient<'_>, id: i32, seq: i64) {
    SET_CURSOR.run(client, &[arg(id), arg(seq)]);
}

static PATTERNS: Statement =
    Statement::new("SELECT subjects, exclude FROM eventq_internal.consumers WHERE id = $1", &[INT]);

/// The consumer's include and exclude patterns.
pub fn patterns(client: &SpiClient<'_>, id: i32) -> (Vec<String>, Vec<String>) {
    match PATTERNS.first_row(client, &[arg(id)]) {
        Some(row) => (column(&row, 1).unwrap_or_default(), column(&row, 2).unwrap_or_default()),
        None => (Vec::new(), Vec::new()),
    }
}

// Turning key ordering on: unfinished tasks take their event's key. Of each key's
// unfinished tasks one is in flight: the oldest running one if any runs (tasks already
// running cannot be called back, and finish as they will), else the oldest. The others
// wait their turn. The tasks are locked first, so that no pull leases one meanwhile.
static ORDER_BY_KEY: Statement = Statement::new(
    "WITH keyed AS (
         SELECT t.seq, t.state, e.key AS order_key
         FROM eventq_internal.tasks t
         JOIN eventq_internal.consumers c ON c.id = $1
         JOIN eventq_internal.events e ON e.stream_id = c.stream_id AND e.seq = t.seq
         WHERE t.consumer_id = $1 AND e.key IS NOT NULL
           AND t.state IN ('available', 'scheduled', 'running', 'retryable', 'waiting')
         FOR UPDATE OF t
     ), heads AS (
         SELECT DISTINCT ON (order_key) order_key, seq FROM keyed
         ORDER BY order_key, (state = 'running') DESC, seq
     ), changed AS (
         UPDATE eventq_internal.tasks t
         SET order_key = k.order_key,
             state = CASE WHEN t.state = 'running' OR k.seq IN (SELECT seq FROM heads)
                          THEN t.state ELSE 'waiting' END::eventq_internal.task_state
         FROM keyed k
         WHERE t.consumer_id = $1 AND t.seq = k.seq
     )
     INSERT INTO eventq_internal.key_heads (consumer_id, order_key, head_seq)
     SELECT $1, order_key, seq FROM heads ORDER BY order_key
     ON CONFLICT (consumer_id, order_key) DO UPDATE SET head_seq = excluded.head_seq",
    &[INT],
);

/// Turns key ordering on for the consumer's existing tasks; the caller holds its lock.
pub fn order_by_key(client: &SpiClient<'_>, id: i32) {
    ORDER_BY_KEY.run(client, &[arg(id)]);
}

// Turning key ordering off: nothing waits any more, and unfinished tasks forget their key.
static FORGET_KEY_ORDER: Statement = Statement::new(
    "WITH freed AS (
         DELETE FROM eventq_internal.key_heads WHERE consumer_id = $1
     ), rechecks AS (
         DELETE FROM eventq_internal.key_rechecks WHERE consumer_id = $1
     )
     UPDATE eventq_internal.tasks
     SET state = CASE WHEN state <> 'waiting' THEN state
                      WHEN run_at > pg_catalog.now() THEN 'scheduled'
                      ELSE 'available' END::eventq_internal.task_state,
         order_key = NULL
     WHERE consumer_id = $1 AND order_key IS NOT NULL
       AND state NOT IN ('completed', 'discarded')",
    &[INT],
);

/// Turns key ordering off; the caller holds the consumer's lock.
pub fn forget_key_order(client: &SpiClient<'_>, id: i32) {
    crate::pull_start::released(id);
    FORGET_KEY_ORDER.run(client, &[arg(id)]);
}
