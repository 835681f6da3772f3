//! Task transitions. Every UPDATE names the state it leaves (`AND state = 'running'`), so a
//! late call about a task that has moved on changes nothing: workers race with leases by
//! design.
//!
//! Statements about given tasks spell that guard `state::text = 'running'`. It means the
//! same, but the planner cannot match it to the partial index of running tasks, and so
//! always uses the primary key. That index holds an entry for every lease since the last
//! vacuum (acked tasks leave it dead), and an ack planned on it, as happened with stale
//! statistics, walked them all: 4 ms instead of a few microseconds.
//!
//! Key ordering: among the unfinished tasks of one (consumer, key), one is in flight (its
//! seq is the key's row in `key_heads`) and the rest wait. Whoever finishes the task in
//! flight hands the key to the oldest waiting task (`advance_keys`); see sql/schema.sql for
//! why the drain and the finishers cannot miss each other.
//!
//! Times that record when something happened (lease, finish, retry) use clock_timestamp():
//! a pull may spend a while draining before it leases, and `now()` is when its transaction
//! began. Checks for what is due use `now()`, which indexes can use.

use super::{arg, column, Statement, BIGINT, BIGINT_ARRAY, INT, TEXT, TEXT_ARRAY};
use crate::datum::Jsonb;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

/// Lease expiry and due timers of one consumer, done before every pull and by maintenance.
/// Expired leases become available again (the lost attempt is recorded) or are discarded
/// past max_attempts; scheduled and retryable tasks whose time has come become available.
static RESCUE_AND_PROMOTE: Statement = Statement::new(
    "WITH expired AS (
         SELECT t.seq FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'running' AND t.lease_until < now()
         ORDER BY t.lease_until LIMIT $3
         FOR UPDATE SKIP LOCKED
     ), rescued AS (
         UPDATE eventq_internal.tasks t
         SET state = CASE WHEN t.attempt >= $2 THEN 'discarded' ELSE 'available' END
                         ::eventq_internal.task_state,
             run_at = now(),
             lease_until = NULL,
             finished_at = CASE WHEN t.attempt >= $2 THEN clock_timestamp() END,
             last_error = 'lease expired'
         FROM expired WHERE t.consumer_id = $1 AND t.seq = expired.seq
         RETURNING t.seq, t.attempt, t.started_at, t.lease_until AS expired_at, t.state, t.order_key
     ), lost AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, error, started_at, finished_at)
         SELECT $1, seq, attempt, 'lost', 'lease expired', started_at, clock_timestamp()
         FROM rescued
     ), due AS (
         SELECT t.seq FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state IN ('scheduled', 'retryable') AND t.run_at <= now()
         ORDER BY t.run_at LIMIT $3
         FOR UPDATE SKIP LOCKED
     ), promoted AS (
         UPDATE eventq_internal.tasks t SET state = 'available'
         FROM due WHERE t.consumer_id = $1 AND t.seq = due.seq
         RETURNING t.seq
     )
     SELECT (SELECT count(*) FROM rescued WHERE state = 'available'),
            (SELECT count(*) FROM rescued WHERE state = 'discarded'),
            (SELECT array_agg(order_key) FROM rescued
              WHERE state = 'discarded' AND order_key IS NOT NULL),
            (SELECT array_agg(seq) FROM rescued
              WHERE state = 'discarded' AND order_key IS NOT NULL),
            (SELECT count(*) FROM promoted)",
    &[INT, INT, BIGINT],
);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    /// Expired leases made available again.
    pub lost: i64,
    /// Expired leases discarded because they had used up their attempts.
    pub discarded: i64,
    /// Scheduled or retryable tasks that became due.
    pub promoted: i64,
}

impl std::ops::AddAssign for Rescued {
    fn add_assign(&mut self, o: Rescued) {
        self.lost += o.lost;
        self.discarded += o.discarded;
        self.promoted += o.promoted;
    }
}

pub fn rescue_and_promote(
    client: &SpiClient<'_>,
    consumer_id: i32,
    max_attempts: i32,
    limit: i64,
) -> Rescued {
    let Some(row) =
        RESCUE_AND_PROMOTE.first_row(client, &[arg(consumer_id), arg(max_attempts), arg(limit)])
    else {
        return Rescued::default();
    };
    advance_keys(
        client,
        consumer_id,
        column(&row, 3).unwrap_or_default(),
        column(&row, 4).unwrap_or_default(),
    );
    Rescued {
        lost: column(&row, 1).unwrap_or(0),
        discarded: column(&row, 2).unwrap_or(0),
        promoted: column(&row, 5).unwrap_or(0),
    }
}

// The oldest available tasks, skipping those other workers are leasing right now. The ctid
// list hands the locked rows to the UPDATE without a second index search. Each event is
// read by its key in a LATERAL .. LIMIT 1 that the planner cannot turn into a join: with
// statistics from when the log was small (right after a burst, before autoanalyze), a join
// was planned as a hash of every event of the stream, 150 ms per pull instead of 0.4.
static LEASE: Statement = Statement::new(
    "WITH picked AS (
         SELECT t.ctid FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'available'
         ORDER BY t.seq LIMIT $2
         FOR UPDATE SKIP LOCKED
     ), leased AS (
         UPDATE eventq_internal.tasks t
         SET state = 'running', attempt = t.attempt + 1, started_at = clock.now,
             lease_until = clock.now + $3 * interval '1 microsecond'
         FROM (SELECT clock_timestamp() AS now) clock
         WHERE t.ctid = ANY (ARRAY (SELECT ctid FROM picked))
         RETURNING t.seq, t.attempt
     )
     SELECT l.seq, e.id, e.subject, e.key, e.payload, e.headers, l.attempt, e.published_at
     FROM leased l
     CROSS JOIN LATERAL (
         SELECT * FROM eventq_internal.events
         WHERE stream_id = $4 AND seq = l.seq
         LIMIT 1
     ) e
     ORDER BY l.seq",
    &[INT, BIGINT, BIGINT, INT],
);

pub struct Leased {
    pub seq: i64,
    pub event_id: Uuid,
    pub subject: String,
    pub key: Option<String>,
    pub payload: Jsonb,
    pub headers: Option<Jsonb>,
    pub attempt: i32,
    pub published_at: TimestampWithTimeZone,
}

pub fn lease(
    client: &SpiClient<'_>,
    consumer_id: i32,
    stream_id: i32,
    max: i64,
    lease_micros: i64,
) -> Vec<Leased> {
    LEASE
        .run(client, &[arg(consumer_id), arg(max), arg(lease_micros), arg(stream_id)])
        .filter_map(|row| {
            Some(Leased {
                seq: column(&row, 1)?,
                event_id: column(&row, 2)?,
                subject: column(&row, 3)?,
                key: column(&row, 4),
                payload: column(&row, 5)?,
                headers: column(&row, 6),
                attempt: column(&row, 7)?,
                published_at: column(&row, 8)?,
            })
        })
        .collect()
}

// Tasks named by id are found one primary-key lookup each: planned as one scan with
// `seq = ANY ($2)`, stale statistics turned the array into a filter over every task of the
// consumer (50 ms an ack). Rows are then updated by ctid, and the state guard rechecked.
static ACK: Statement = Statement::new(
    "WITH done AS (
         UPDATE eventq_internal.tasks
         SET state = 'completed', finished_at = clock_timestamp(), lease_until = NULL
         WHERE ctid = ANY (ARRAY (
                 SELECT task.ctid FROM unnest($2::bigint[]) AS id(seq)
                 CROSS JOIN LATERAL (
                     SELECT ctid FROM eventq_internal.tasks
                     WHERE consumer_id = $1 AND seq = id.seq LIMIT 1
                 ) task))
           AND state::text = 'running'
         RETURNING seq, order_key
     )
     SELECT count(*)::int,
            array_agg(order_key) FILTER (WHERE order_key IS NOT NULL),
            array_agg(seq) FILTER (WHERE order_key IS NOT NULL)
     FROM done",
    &[INT, BIGINT_ARRAY],
);

/// running -> completed; returns how many changed.
pub fn ack(client: &SpiClient<'_>, consumer_id: i32, task_ids: Vec<i64>) -> i32 {
    let Some(row) = ACK.first_row(client, &[arg(consumer_id), arg(task_ids)]) else {
        return 0;
    };
    advance_keys(
        client,
        consumer_id,
        column(&row, 2).unwrap_or_default(),
        column(&row, 3).unwrap_or_default(),
    );
    column(&row, 1).unwrap_or(0)
}

static RUNNING_ATTEMPT: Statement = Statement::new(
    "SELECT attempt FROM eventq_internal.tasks
     WHERE consumer_id = $1 AND seq = $2 AND state::text = 'running'
     FOR UPDATE",
    &[INT, BIGINT],
);

/// The attempt number of a running task, locked for a transition; `None` if not running.
pub fn running_attempt(client: &SpiClient<'_>, consumer_id: i32, task_id: i64) -> Option<i32> {
    super::scalar(&RUNNING_ATTEMPT, client, &[arg(consumer_id), arg(task_id)])
}

// Ends the running attempt: `failed` (retry; the task goes to $3, retryable or discarded)
// or `discarded` (discard). The attempt is recorded with its error.
static END_ATTEMPT: Statement = Statement::new(
    "WITH ended AS (
         UPDATE eventq_internal.tasks t
         SET state = $3::eventq_internal.task_state,
             run_at = CASE WHEN $3 = 'retryable'
                           THEN clock_timestamp() + $4 * interval '1 microsecond'
                           ELSE t.run_at END,
             finished_at = CASE WHEN $3 = 'discarded' THEN clock_timestamp() END,
             lease_until = NULL,
             last_error = $5
         WHERE t.consumer_id = $1 AND t.seq = $2 AND t.state::text = 'running'
         RETURNING t.seq, t.attempt, t.started_at, t.order_key
     ), recorded AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, error, started_at, finished_at)
         SELECT $1, seq, attempt, $6, $5, started_at, clock_timestamp() FROM ended
     )
     SELECT order_key FROM ended",
    &[INT, BIGINT, TEXT, BIGINT, TEXT, TEXT],
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// retry: the attempt failed; the task is retryable again after the delay.
    Retry { delay_micros: i64 },
    /// retry past max_attempts: the attempt failed and the task is discarded.
    FailAndDiscard,
    /// discard: the worker gives up on the task.
    Discard,
}

/// Ends a running attempt; `false` if the task was not running.
pub fn end_attempt(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_id: i64,
    outcome: Outcome,
    error: Option<&str>,
) -> bool {
    let (state, delay, recorded_as) = match outcome {
        Outcome::Retry { delay_micros } => ("retryable", delay_micros, "failed"),
        Outcome::FailAndDiscard => ("discarded", 0, "failed"),
        Outcome::Discard => ("discarded", 0, "discarded"),
    };
    let Some(row) = END_ATTEMPT.first_row(
        client,
        &[arg(consumer_id), arg(task_id), arg(state), arg(delay), arg(error), arg(recorded_as)],
    ) else {
        return false;
    };
    if state == "discarded" {
        if let Some(key) = column::<String>(&row, 1) {
            advance_keys(client, consumer_id, vec![key], vec![task_id]);
        }
    }
    true
}

static EXTEND_LEASE: Statement = Statement::new(
    "UPDATE eventq_internal.tasks SET lease_until = clock_timestamp() + $3 * interval '1 microsecond'
     WHERE consumer_id = $1 AND seq = $2 AND state::text = 'running'
     RETURNING lease_until",
    &[INT, BIGINT, BIGINT],
);

pub fn extend_lease(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_id: i64,
    micros: i64,
) -> Option<TimestampWithTimeZone> {
    super::scalar(&EXTEND_LEASE, client, &[arg(consumer_id), arg(task_id), arg(micros)])
}

// Discarded tasks start over with a fresh attempt budget. Keyed tasks go through `waiting`
// so that `claim_free_keys` puts them back in key order.
macro_rules! redrive {
    ($which:literal) => {
        Statement::new(
            concat!(
                "WITH redriven AS (
                     UPDATE eventq_internal.tasks
                     SET state = CASE WHEN order_key IS NULL THEN 'available' ELSE 'waiting' END
                                 ::eventq_internal.task_state,
                         attempt = 0, run_at = now(), finished_at = NULL, lease_until = NULL,
                         started_at = NULL
                     WHERE ", $which, " AND state::text = 'discarded'
                     RETURNING order_key
                 )
                 SELECT count(*)::int, array_agg(DISTINCT order_key) FILTER (WHERE order_key IS NOT NULL)
                 FROM redriven"
            ),
            &[INT, BIGINT_ARRAY],
        )
    };
}

static REDRIVE_ALL: Statement = redrive!("consumer_id = $1 AND $2::bigint[] IS NULL");
// Looked up by key one at a time, for the reason given at ACK.
static REDRIVE_SOME: Statement = redrive!(
    "ctid = ANY (ARRAY (
         SELECT task.ctid FROM unnest($2::bigint[]) AS id(seq)
         CROSS JOIN LATERAL (
             SELECT ctid FROM eventq_internal.tasks
             WHERE consumer_id = $1 AND seq = id.seq LIMIT 1
         ) task))"
);

pub fn redrive(client: &SpiClient<'_>, consumer_id: i32, task_ids: Option<Vec<i64>>) -> i32 {
    let statement = if task_ids.is_some() { &REDRIVE_SOME } else { &REDRIVE_ALL };
    let Some(row) = statement.first_row(client, &[arg(consumer_id), arg(task_ids)]) else {
        return 0;
    };
    let keys: Vec<String> = column(&row, 2).unwrap_or_default();
    if !keys.is_empty() {
        claim_free_keys(client, consumer_id, Some(keys));
    }
    column(&row, 1).unwrap_or(0)
}

// Locks the key rows whose head just finished. Runs before ADVANCE_KEYS, as its own
// statement: ADVANCE_KEYS then takes a snapshot in which every drain that added tasks to
// these keys has committed (a drain needs the same rows to add one).
static LOCK_FINISHED_HEADS: Statement = Statement::new(
    "SELECT h.order_key
     FROM eventq_internal.key_heads h
     JOIN unnest($2::text[], $3::bigint[]) AS f(order_key, seq)
       ON h.order_key = f.order_key AND h.head_seq = f.seq
     WHERE h.consumer_id = $1
     ORDER BY h.order_key
     FOR UPDATE OF h",
    &[INT, TEXT_ARRAY, BIGINT_ARRAY],
);

// The oldest waiting task of each key becomes its head; keys with none waiting are freed.
static ADVANCE_KEYS: Statement = Statement::new(
    "WITH next AS (
         SELECT DISTINCT ON (t.order_key) t.order_key, t.seq
         FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.order_key = ANY ($2) AND t.state = 'waiting'
         ORDER BY t.order_key, t.seq
     ), moved AS (
         UPDATE eventq_internal.key_heads h SET head_seq = n.seq
         FROM next n WHERE h.consumer_id = $1 AND h.order_key = n.order_key
     ), freed AS (
         DELETE FROM eventq_internal.key_heads h
         WHERE h.consumer_id = $1 AND h.order_key = ANY ($2)
           AND NOT EXISTS (SELECT 1 FROM next n WHERE n.order_key = h.order_key)
     )
     UPDATE eventq_internal.tasks t
     SET state = CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'available' END
                 ::eventq_internal.task_state
     FROM next n WHERE t.consumer_id = $1 AND t.seq = n.seq",
    &[INT, TEXT_ARRAY],
);

/// Hands each key whose head (`keys[i]`, `seqs[i]`) finished to its next waiting task.
pub fn advance_keys(client: &SpiClient<'_>, consumer_id: i32, keys: Vec<String>, seqs: Vec<i64>) {
    if keys.is_empty() {
        return;
    }
    let locked: Vec<String> = LOCK_FINISHED_HEADS
        .run(client, &[arg(consumer_id), arg(keys), arg(seqs)])
        .filter_map(|row| column(&row, 1))
        .collect();
    if !locked.is_empty() {
        ADVANCE_KEYS.run(client, &[arg(consumer_id), arg(locked)]);
    }
}

// Keys with waiting tasks and no head (NULL: any key of the consumer) get their oldest
// waiting task as head. A key whose row exists keeps its head: ON CONFLICT DO NOTHING.
static CLAIM_FREE_KEYS: Statement = Statement::new(
    "WITH candidates AS (
         SELECT DISTINCT ON (t.order_key) t.order_key, t.seq
         FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'waiting'
           AND ($2::text[] IS NULL OR t.order_key = ANY ($2))
         ORDER BY t.order_key, t.seq
     ), claimed AS (
         INSERT INTO eventq_internal.key_heads (consumer_id, order_key, head_seq)
         SELECT $1, order_key, seq FROM candidates ORDER BY order_key
         ON CONFLICT (consumer_id, order_key) DO NOTHING
         RETURNING head_seq
     )
     UPDATE eventq_internal.tasks t
     SET state = CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'available' END
                 ::eventq_internal.task_state
     FROM claimed c WHERE t.consumer_id = $1 AND t.seq = c.head_seq",
    &[INT, TEXT_ARRAY],
);

pub fn claim_free_keys(client: &SpiClient<'_>, consumer_id: i32, keys: Option<Vec<String>>) {
    CLAIM_FREE_KEYS.run(client, &[arg(consumer_id), arg(keys)]);
}
