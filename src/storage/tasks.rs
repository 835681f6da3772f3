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
//! Lease guard: `pull` returns the attempt; calls that name it apply only while the task is
//! still running that attempt, so a worker whose lease ran out can never finish, fail or
//! extend the attempt of the worker that leased the task after it.
//!
//! Key ordering: whoever finishes a key's head hands the key on (storage::keys). Calls of
//! the user's own wait for the key's row; passes that run for everyone (lease rescue) never
//! wait for it.
//!
//! Times that record when something happened (lease, finish, retry) use clock_timestamp():
//! a pull may spend a while draining before it leases, and `now()` is when its transaction
//! began. Checks for what is due use `now()`, which indexes can use.

use super::keys::{self, Busy};
use super::{arg, column, Statement, BIGINT, BIGINT_ARRAY, INT, INT_ARRAY, TEXT, TIMESTAMPTZ};
use crate::core::settings::{BackoffKind, EventRetry};
use crate::datum::Jsonb;
use crate::pull_start;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

/// Lease expiry and due timers of one consumer, done before every pull and by maintenance.
/// Expired leases become available again (the lost attempt is recorded) or are discarded
/// past max_attempts (their event's, published with it, or the consumer's: $2; $5 is the
/// stream); scheduled and retryable tasks whose time has come become available.
/// Times before $4 were dealt with by an earlier pass (see pull_start: the indexes hold a
/// dead entry for every task acked or promoted since the last vacuum). The last column is
/// where the next pass may start if this one was not cut short by its limit.
static RESCUE_AND_PROMOTE: Statement = Statement::indexed(
    "WITH expired AS (
         SELECT t.seq,
                coalesce((SELECT e.max_attempts FROM eventq_internal.events e
                          WHERE e.stream_id = $5 AND e.seq = t.seq), $2) AS max_attempts
         FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'running'
           AND t.lease_until >= $4 AND t.lease_until < pg_catalog.now()
         ORDER BY t.lease_until LIMIT $3
         FOR UPDATE OF t SKIP LOCKED
     ), rescued AS (
         UPDATE eventq_internal.tasks t
         SET state = CASE WHEN t.attempt >= expired.max_attempts THEN 'discarded' ELSE 'available' END
                         ::eventq_internal.task_state,
             run_at = pg_catalog.now(),
             lease_until = NULL,
             finished_at = CASE WHEN t.attempt >= expired.max_attempts THEN pg_catalog.clock_timestamp() END,
             last_error = 'lease expired'
         FROM expired WHERE t.consumer_id = $1 AND t.seq = expired.seq
         RETURNING t.seq, t.attempt, t.started_at, t.lease_until AS expired_at, t.state, t.order_key
     ), lost AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, error, started_at, finished_at)
         SELECT $1, seq, attempt, 'lost', 'lease expired', started_at, pg_catalog.clock_timestamp()
         FROM rescued
     ), due AS (
         SELECT t.seq FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state IN ('scheduled', 'retryable')
           AND t.run_at >= $4 AND t.run_at <= pg_catalog.now()
         ORDER BY t.run_at LIMIT $3
         FOR UPDATE SKIP LOCKED
     ), promoted AS (
         UPDATE eventq_internal.tasks t SET state = 'available'
         FROM due WHERE t.consumer_id = $1 AND t.seq = due.seq
         RETURNING t.seq
     )
     SELECT (SELECT pg_catalog.count(*) FROM rescued WHERE state = 'available'),
            (SELECT pg_catalog.count(*) FROM rescued WHERE state = 'discarded'),
            d.keys, d.seqs,
            (SELECT pg_catalog.count(*) FROM promoted),
            pg_catalog.now() - interval '1 second'
     FROM (SELECT pg_catalog.array_agg(order_key ORDER BY seq) AS keys, pg_catalog.array_agg(seq ORDER BY seq) AS seqs
           FROM rescued WHERE state = 'discarded' AND order_key IS NOT NULL) d",
    &[INT, INT, BIGINT, TIMESTAMPTZ, INT],
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
    stream_id: i32,
    max_attempts: i32,
    limit: i64,
) -> Rescued {
    let (from, full) = pull_start::timers_from(consumer_id);
    let from_arg =
        TimestampWithTimeZone::try_from(from).unwrap_or(TimestampWithTimeZone::negative_infinity());
    let Some(row) = RESCUE_AND_PROMOTE.first_row(
        client,
        &[arg(consumer_id), arg(max_attempts), arg(limit), arg(from_arg), arg(stream_id)],
    ) else {
        return Rescued::default();
    };
    let keys: Vec<String> = column(&row, 3).unwrap_or_default();
    let seqs: Vec<i64> = column(&row, 4).unwrap_or_default();
    keys::advance(client, consumer_id, keys.into_iter().zip(seqs).collect(), Busy::Recheck);
    let rescued = Rescued {
        lost: column(&row, 1).unwrap_or(0),
        discarded: column(&row, 2).unwrap_or(0),
        promoted: column(&row, 5).unwrap_or(0),
    };
    if rescued.lost > 0 || rescued.promoted > 0 {
        pull_start::released(consumer_id);
    }
    if rescued.lost + rescued.discarded < limit && rescued.promoted < limit {
        if let Some(below) = column::<TimestampWithTimeZone>(&row, 6) {
            let changed = rescued.lost + rescued.discarded + rescued.promoted > 0;
            pull_start::timers_passed(consumer_id, full, below.into_inner(), changed);
        }
    }
    rescued
}

// The oldest available tasks, skipping those other workers are leasing right now. The ctid
// list hands the locked rows to the UPDATE without a second index search. Each event is
// read by its key in a LATERAL .. LIMIT 1 that the planner cannot turn into a join: with
// statistics from when the log was small (right after a burst, before autoanalyze), a join
// was planned as a hash of every event of the stream, 150 ms per pull instead of 0.4. A
// task whose event is gone (retention raced a replay) comes back without one: `lease`
// expires it instead of handing it out.
// The limit is written into the text (see Statement::run_with_limit): as `LIMIT $n` the
// plan cache re-planned this statement at every pull. $4 is where the scan starts (see
// pull_start): no available task of the consumer is below it. `lowest_available` is the
// lowest task this statement's snapshot sees available, locked by others or not (the
// UPDATE's own changes are not visible to it): where the next pulls may start.
static LEASE: Statement = Statement::indexed(
    "WITH picked AS (
         SELECT t.ctid FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'available' AND t.seq >= $4
         ORDER BY t.seq LIMIT {limit}
         FOR UPDATE SKIP LOCKED
     ), leased AS (
         UPDATE eventq_internal.tasks t
         SET state = 'running', attempt = t.attempt + 1, started_at = clock.now,
             lease_until = clock.now + $2 * interval '1 microsecond'
         FROM (SELECT pg_catalog.clock_timestamp() AS now) clock
         WHERE t.ctid = ANY (ARRAY (SELECT ctid FROM picked))
         RETURNING t.seq, t.attempt
     )
     SELECT l.seq, e.id, e.subject, e.key, e.payload, e.headers, l.attempt, e.published_at,
            (SELECT t.seq FROM eventq_internal.tasks t
             WHERE t.consumer_id = $1 AND t.state = 'available' AND t.seq >= $4
             ORDER BY t.seq LIMIT 1) AS lowest_available
     FROM leased l
     LEFT JOIN LATERAL (
         SELECT * FROM eventq_internal.events
         WHERE stream_id = $3 AND seq = l.seq
         LIMIT 1
     ) e ON true
     ORDER BY l.seq",
    &[INT, BIGINT, INT, BIGINT],
);

// Tasks found without their event: deleted and counted as expired, as retention would have.
static EXPIRE_ORPHANS: Statement = Statement::indexed(
    "WITH gone AS (
         DELETE FROM eventq_internal.tasks
         WHERE consumer_id = $1 AND seq = ANY ($2)
         RETURNING seq, order_key
     ), counted AS (
         INSERT INTO eventq_internal.expirations (consumer_id, tasks)
         SELECT $1, pg_catalog.count(*) FROM gone HAVING pg_catalog.count(*) > 0
     )
     SELECT pg_catalog.array_agg(order_key ORDER BY seq), pg_catalog.array_agg(seq ORDER BY seq)
     FROM gone WHERE order_key IS NOT NULL",
    &[INT, BIGINT_ARRAY],
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
    let mut orphans = Vec::new();
    let start = pull_start::read(consumer_id);
    let mut lowest_available = None;
    let leased: Vec<Leased> = LEASE
        .run_with_limit(
            client,
            max,
            &[arg(consumer_id), arg(lease_micros), arg(stream_id), arg(start.seq)],
        )
        .filter_map(|row| {
            let seq: i64 = column(&row, 1)?;
            lowest_available = column::<i64>(&row, 9);
            let Some(event_id) = column(&row, 2) else {
                orphans.push(seq);
                return None;
            };
            Some(Leased {
                seq,
                event_id,
                subject: column(&row, 3)?,
                key: column(&row, 4),
                payload: column(&row, 5)?,
                headers: column(&row, 6),
                attempt: column(&row, 7)?,
                published_at: column(&row, 8)?,
            })
        })
        .collect();
    if let Some(lowest) = lowest_available {
        pull_start::raise(start, lowest);
    }
    if !orphans.is_empty() {
        if let Some(row) = EXPIRE_ORPHANS.first_row(client, &[arg(consumer_id), arg(orphans)]) {
            let keys: Vec<String> = column(&row, 1).unwrap_or_default();
            let seqs: Vec<i64> = column(&row, 2).unwrap_or_default();
            keys::advance(client, consumer_id, keys.into_iter().zip(seqs).collect(), Busy::Recheck);
        }
    }
    leased
}

// Tasks named by id are found one primary-key lookup each: planned as one scan with
// `seq = ANY ($2)`, stale statistics turned the array into a filter over every task of the
// consumer (50 ms an ack). Rows are then updated by ctid, and the state guard rechecked;
// a row changed meanwhile has a new ctid and is left alone. $3 holds the attempt each
// task must still be running (the lease guard), or NULL.
static ACK: Statement = Statement::indexed(
    "WITH done AS (
         UPDATE eventq_internal.tasks
         SET state = 'completed', finished_at = pg_catalog.clock_timestamp(), lease_until = NULL
         WHERE ctid = ANY (ARRAY (
                 SELECT task.ctid
                 FROM unnest($2::bigint[], coalesce($3::int[], '{}')) AS id(seq, attempt)
                 CROSS JOIN LATERAL (
                     SELECT ctid FROM eventq_internal.tasks
                     WHERE consumer_id = $1 AND seq = id.seq
                       AND (id.attempt IS NULL OR attempt = id.attempt)
                     LIMIT 1
                 ) task
                 WHERE id.seq IS NOT NULL))
           AND state::text = 'running'
         RETURNING seq, order_key
     )
     SELECT pg_catalog.count(*)::int,
            pg_catalog.array_agg(order_key ORDER BY seq) FILTER (WHERE order_key IS NOT NULL),
            pg_catalog.array_agg(seq ORDER BY seq) FILTER (WHERE order_key IS NOT NULL)
     FROM done",
    &[INT, BIGINT_ARRAY, INT_ARRAY],
);

/// running -> completed; returns how many changed. `attempts`, when given, is parallel to
/// `task_ids` (the lease guard; a NULL element means no guard for that task).
pub fn ack(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_ids: Vec<Option<i64>>,
    attempts: Option<Vec<Option<i32>>>,
) -> i32 {
    let Some(row) = ACK.first_row(client, &[arg(consumer_id), arg(task_ids), arg(attempts)]) else {
        return 0;
    };
    let keys: Vec<String> = column(&row, 2).unwrap_or_default();
    let seqs: Vec<i64> = column(&row, 3).unwrap_or_default();
    keys::advance(client, consumer_id, keys.into_iter().zip(seqs).collect(), Busy::Wait);
    column(&row, 1).unwrap_or(0)
}

static EVENT_RETRY: Statement = Statement::indexed(
    "SELECT e.max_attempts, e.backoff,
            (pg_catalog.date_part('epoch', e.backoff_base) * 1000000)::bigint
     FROM eventq_internal.events e
     WHERE e.stream_id = $1 AND e.seq = $2",
    &[INT, BIGINT],
);

/// The retry settings the task's event was published with (none if its event is gone).
pub fn event_retry(client: &SpiClient<'_>, stream_id: i32, task_id: i64) -> EventRetry {
    let Some(row) = EVENT_RETRY.first_row(client, &[arg(stream_id), arg(task_id)]) else {
        return EventRetry::default();
    };
    EventRetry {
        max_attempts: column(&row, 1),
        backoff: column::<String>(&row, 2).and_then(|b| BackoffKind::parse(&b).ok()),
        backoff_base: column(&row, 3),
    }
}

static RUNNING_ATTEMPT: Statement = Statement::indexed(
    "SELECT attempt FROM eventq_internal.tasks
     WHERE consumer_id = $1 AND seq = $2 AND state::text = 'running'
       AND ($3::int IS NULL OR attempt = $3)
     FOR UPDATE",
    &[INT, BIGINT, INT],
);

/// The attempt number of a running task (running `attempt`, when given), locked for a
/// transition; `None` if it is not.
pub fn running_attempt(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_id: i64,
    attempt: Option<i32>,
) -> Option<i32> {
    super::scalar(&RUNNING_ATTEMPT, client, &[arg(consumer_id), arg(task_id), arg(attempt)])
}

// Ends the running attempt: `failed` (retry; the task goes to $3, retryable or discarded),
// `discarded` (discard) or `ignored` (ignore; the task is completed). The attempt is
// recorded with its error or reason.
static END_ATTEMPT: Statement = Statement::indexed(
    "WITH ended AS (
         UPDATE eventq_internal.tasks t
         SET state = $3::eventq_internal.task_state,
             run_at = CASE WHEN $3 = 'retryable'
                           THEN pg_catalog.clock_timestamp() + $4 * interval '1 microsecond'
                           ELSE t.run_at END,
             finished_at = CASE WHEN $3 IN ('discarded', 'completed') THEN pg_catalog.clock_timestamp() END,
             lease_until = NULL,
             last_error = $5
         WHERE t.consumer_id = $1 AND t.seq = $2 AND t.state::text = 'running'
           AND ($7::int IS NULL OR t.attempt = $7)
         RETURNING t.seq, t.attempt, t.started_at, t.order_key
     ), recorded AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, error, started_at, finished_at)
         SELECT $1, seq, attempt, $6, $5, started_at, pg_catalog.clock_timestamp() FROM ended
     )
     SELECT order_key FROM ended",
    &[INT, BIGINT, TEXT, BIGINT, TEXT, TEXT, INT],
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// retry: the attempt failed; the task is retryable again after the delay.
    Retry { delay_micros: i64 },
    /// retry past max_attempts: the attempt failed and the task is discarded.
    FailAndDiscard,
    /// discard: the worker gives up on the task.
    Discard,
    /// ignore: the handler had nothing to do; the task is completed.
    Ignore,
}

/// Ends a running attempt; `false` if the task was not running.
pub fn end_attempt(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_id: i64,
    outcome: Outcome,
    error: Option<&str>,
    attempt: Option<i32>,
) -> bool {
    let (state, delay, recorded_as) = match outcome {
        Outcome::Retry { delay_micros } => ("retryable", delay_micros, "failed"),
        Outcome::FailAndDiscard => ("discarded", 0, "failed"),
        Outcome::Discard => ("discarded", 0, "discarded"),
        Outcome::Ignore => ("completed", 0, "ignored"),
    };
    let Some(row) = END_ATTEMPT.first_row(
        client,
        &[
            arg(consumer_id),
            arg(task_id),
            arg(state),
            arg(delay),
            arg(error),
            arg(recorded_as),
            arg(attempt),
        ],
    ) else {
        return false;
    };
    if state != "retryable" {
        if let Some(key) = column::<String>(&row, 1) {
            keys::advance(client, consumer_id, vec![(key, task_id)], Busy::Wait);
        }
    }
    true
}

static EXTEND_LEASE: Statement = Statement::indexed(
    "UPDATE eventq_internal.tasks SET lease_until = pg_catalog.clock_timestamp() + $3 * interval '1 microsecond'
     WHERE consumer_id = $1 AND seq = $2 AND state::text = 'running'
       AND ($4::int IS NULL OR attempt = $4)
     RETURNING lease_until",
    &[INT, BIGINT, BIGINT, INT],
);

pub fn extend_lease(
    client: &SpiClient<'_>,
    consumer_id: i32,
    task_id: i64,
    micros: i64,
    attempt: Option<i32>,
) -> Option<TimestampWithTimeZone> {
    super::scalar(
        &EXTEND_LEASE,
        client,
        &[arg(consumer_id), arg(task_id), arg(micros), arg(attempt)],
    )
}

// An operator's "retry now": retryable tasks become available at once, keeping their
// attempt count (a retryable task of a key-ordered consumer is its key's head, and stays so).
static RETRY_NOW: Statement = Statement::indexed(
    "WITH due AS (
         UPDATE eventq_internal.tasks SET state = 'available', run_at = pg_catalog.now()
         WHERE consumer_id = $1 AND state = 'retryable'
           AND ($2::bigint[] IS NULL OR seq = ANY ($2))
         RETURNING seq
     )
     SELECT pg_catalog.count(*)::int FROM due",
    &[INT, BIGINT_ARRAY],
);

pub fn retry_now(client: &SpiClient<'_>, consumer_id: i32, task_ids: Option<Vec<i64>>) -> i32 {
    let due: i32 =
        super::scalar(&RETRY_NOW, client, &[arg(consumer_id), arg(task_ids)]).unwrap_or(0);
    if due > 0 {
        pull_start::released(consumer_id);
    }
    due
}

// An operator's verdict on tasks not yet finished: they end as discarded. A running task's
// attempt is recorded as discarded, and its worker's later ack or retry changes nothing (as
// after a lost lease); but a running task with a key (key ordering) is left to its worker,
// since its key must not move on while it runs. Waiting tasks are left alone too: they are
// not their key's head, and a consumer's sequence counts a subject as finished only when
// its head is settled; discard the head, and the next one moves up. Rows are found and
// locked as ACK finds them (in the order of their ctids), so a bulk cancel and a worker's
// batch ack cannot deadlock; a row that changed meanwhile (a pull leased it) is left out.
static CANCEL: Statement = Statement::indexed(
    "WITH target AS (
         SELECT t.seq, t.state AS was FROM eventq_internal.tasks t
         WHERE t.ctid = ANY (ARRAY (
                   SELECT task.ctid FROM unnest($2::bigint[]) AS id(seq)
                   CROSS JOIN LATERAL (
                       SELECT ctid FROM eventq_internal.tasks
                       WHERE consumer_id = $1 AND seq = id.seq LIMIT 1
                   ) task))
           AND t.consumer_id = $1
           AND (t.state IN ('available', 'scheduled', 'retryable')
                OR (t.state = 'running' AND t.order_key IS NULL))
         FOR UPDATE
     ), ended AS (
         UPDATE eventq_internal.tasks t
         SET state = 'discarded', finished_at = pg_catalog.clock_timestamp(), lease_until = NULL,
             last_error = $3
         FROM target WHERE t.consumer_id = $1 AND t.seq = target.seq
         RETURNING t.seq, t.attempt, t.started_at, t.order_key, target.was
     ), recorded AS (
         INSERT INTO eventq_internal.attempts
             (consumer_id, task_id, attempt, outcome, error, started_at, finished_at)
         SELECT $1, seq, attempt, 'discarded', $3, started_at, pg_catalog.clock_timestamp()
         FROM ended WHERE was = 'running'
     )
     SELECT pg_catalog.count(*)::int,
            pg_catalog.array_agg(order_key ORDER BY seq) FILTER (WHERE order_key IS NOT NULL),
            pg_catalog.array_agg(seq ORDER BY seq) FILTER (WHERE order_key IS NOT NULL)
     FROM ended",
    &[INT, BIGINT_ARRAY, TEXT],
);

pub fn cancel(client: &SpiClient<'_>, consumer_id: i32, task_ids: Vec<i64>, reason: &str) -> i32 {
    let Some(row) = CANCEL.first_row(client, &[arg(consumer_id), arg(task_ids), arg(reason)])
    else {
        return 0;
    };
    let keys: Vec<String> = column(&row, 2).unwrap_or_default();
    let seqs: Vec<i64> = column(&row, 3).unwrap_or_default();
    if !keys.is_empty() {
        keys::advance(client, consumer_id, keys.into_iter().zip(seqs).collect(), Busy::Wait);
    }
    column(&row, 1).unwrap_or(0)
}

// Discarded tasks start over with a fresh attempt budget. Keyed tasks go through `waiting`
// so that their keys are settled in key order (storage::keys).
macro_rules! redrive {
    ($which:literal) => {
        Statement::indexed(
            concat!(
                "WITH redriven AS (
                     UPDATE eventq_internal.tasks
                     SET state = CASE WHEN order_key IS NULL THEN 'available' ELSE 'waiting' END
                                 ::eventq_internal.task_state,
                         attempt = 0, run_at = now(), finished_at = NULL, lease_until = NULL,
                         started_at = NULL
                     WHERE ", $which, "
                     RETURNING order_key
                 )
                 SELECT count(*)::int, array_agg(DISTINCT order_key) FILTER (WHERE order_key IS NOT NULL)
                 FROM redriven"
            ),
            &[INT, BIGINT_ARRAY],
        )
    };
}

// Every discarded task of the consumer, through their index (not the consumer's every
// task). Unlike the statements about given tasks (see the top of this file), this one wants
// what the index holds; the dead entries a redrive leaves in it are as few as the tasks it
// moved.
static REDRIVE_ALL: Statement =
    redrive!("consumer_id = $1 AND $2::bigint[] IS NULL AND state = 'discarded'");
// Looked up by key one at a time, for the reason given at ACK.
static REDRIVE_SOME: Statement = redrive!(
    "ctid = ANY (ARRAY (
         SELECT task.ctid FROM unnest($2::bigint[]) AS id(seq)
         CROSS JOIN LATERAL (
             SELECT ctid FROM eventq_internal.tasks
             WHERE consumer_id = $1 AND seq = id.seq LIMIT 1
         ) task))
     AND state::text = 'discarded'"
);

pub fn redrive(client: &SpiClient<'_>, consumer_id: i32, task_ids: Option<Vec<i64>>) -> i32 {
    let statement = if task_ids.is_some() { &REDRIVE_SOME } else { &REDRIVE_ALL };
    let Some(row) = statement.first_row(client, &[arg(consumer_id), arg(task_ids)]) else {
        return 0;
    };
    let redriven_keys: Vec<String> = column(&row, 2).unwrap_or_default();
    if !redriven_keys.is_empty() {
        keys::settle_keys(client, consumer_id, redriven_keys, Busy::Wait);
    }
    let redriven = column(&row, 1).unwrap_or(0);
    if redriven > 0 {
        pull_start::released(consumer_id);
    }
    redriven
}
