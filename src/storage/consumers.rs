//! Consumers: their settings, and the tasks or cursor position they start with.

use super::{
    arg, column, drain, scalar, tasks, Statement, BIGINT, BOOL, INT, INTERVAL, TEXT, TEXT_ARRAY,
    TIMESTAMPTZ,
};
use crate::core::settings::{BackoffKind, KeyOrdering, Mode, RetryPolicy};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::spi::SpiClient;

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
}

static FIND: Statement = Statement::new(
    "SELECT id, stream_id, mode, paused, ordering, max_attempts, backoff,
            (extract(epoch FROM backoff_base) * 1000000)::bigint,
            (extract(epoch FROM backoff_max) * 1000000)::bigint,
            (extract(epoch FROM lease) * 1000000)::bigint,
            include_re, exclude_re, cursor_seq
     FROM eventq_internal.consumers WHERE name = $1",
    &[TEXT],
);

pub fn find(client: &SpiClient<'_>, name: &str) -> Option<Consumer> {
    let row = FIND.first_row(client, &[arg(name)])?;
    let text = |i| column::<String>(&row, i).unwrap_or_default();
    let micros = |i| column::<i64>(&row, i).unwrap_or(0);
    Some(Consumer {
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
    })
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
}

static INSERT: Statement = Statement::new(
    "INSERT INTO eventq_internal.consumers
         (name, stream_id, mode, subjects, exclude, include_re, exclude_re, ordering,
          max_attempts, backoff, backoff_base, backoff_max, lease, cursor_seq)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
             pg_sequence_last_value('eventq_internal.event_seq'))
     ON CONFLICT (name) DO NOTHING RETURNING id",
    &[
        TEXT, INT, TEXT, TEXT_ARRAY, TEXT_ARRAY, TEXT, TEXT, TEXT, INT, TEXT, INTERVAL, INTERVAL,
        INTERVAL,
    ],
);

/// Creates the consumer, reading from the stream's head; `None` if the name is taken.
/// The drain lock is held until commit so that no drain runs with a half-made consumer.
pub fn insert(client: &SpiClient<'_>, c: NewConsumer<'_>) -> Option<i32> {
    drain::lock(client);
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
         lease = coalesce($12, lease)
     WHERE id = $1",
    &[INT, TEXT_ARRAY, TEXT_ARRAY, BOOL, TEXT, TEXT, TEXT, INT, TEXT, INTERVAL, INTERVAL, INTERVAL],
);

pub fn update(client: &SpiClient<'_>, id: i32, c: Changes) {
    drain::lock(client);
    let (new_regexes, (include_re, exclude_re)) = match c.regexes {
        Some(pair) => (true, pair),
        None => (false, (None, None)),
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
         DELETE FROM eventq_internal.consumers WHERE name = $1 RETURNING id
     ), gone_tasks AS (
         DELETE FROM eventq_internal.tasks WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_attempts AS (
         DELETE FROM eventq_internal.attempts WHERE consumer_id IN (SELECT id FROM gone)
     ), gone_keys AS (
         DELETE FROM eventq_internal.key_heads WHERE consumer_id IN (SELECT id FROM gone)
     )
     SELECT id FROM gone",
    &[TEXT],
);

/// `false` if there is no such consumer.
pub fn delete(client: &SpiClient<'_>, name: &str) -> bool {
    drain::lock(client);
    DELETE.first_row(client, &[arg(name)]).is_some()
}

// Tasks for events already in the log, published at or after $3. The filter is the
// consumer's regex form (see core::subject). Keyed tasks start out waiting; `backfill` then
// lets each free key's oldest task go first.
static BACKFILL: Statement = Statement::new(
    "INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
     SELECT $1, e.seq,
            CASE
              WHEN $4 AND e.key IS NOT NULL THEN 'waiting'
              WHEN e.deliver_at > now() THEN 'scheduled'
              ELSE 'available'
            END::eventq_internal.task_state,
            coalesce(e.deliver_at, now()),
            CASE WHEN $4 THEN e.key END
     FROM eventq_internal.events e
     WHERE e.stream_id = $2 AND e.published_at > '-infinity' AND e.published_at >= $3
       AND ($5::text IS NULL OR e.subject ~ $5)
       AND ($6::text IS NULL OR e.subject !~ $6)
     ON CONFLICT (consumer_id, seq) DO NOTHING",
    &[INT, INT, TIMESTAMPTZ, BOOL, TEXT, TEXT],
);

/// Creates tasks for the retained events published at or after `since` that the consumer
/// has no task for yet. Returns how many were created.
pub fn backfill(client: &SpiClient<'_>, c: &Consumer, since: TimestampWithTimeZone) -> usize {
    let keyed = c.ordering == KeyOrdering::Key;
    let created = BACKFILL
        .run(
            client,
            &[
                arg(c.id),
                arg(c.stream_id),
                arg(since),
                arg(keyed),
                arg(c.include_re.clone()),
                arg(c.exclude_re.clone()),
            ],
        )
        .len();
    if keyed && created > 0 {
        tasks::claim_free_keys(client, c.id, None);
    }
    created
}

// The cursor position from which a log reader sees the events published at or after $2:
// just before the oldest such event, or the head when there is none. Commit order and
// publish time differ, so a few events published earlier may follow; none published later
// is skipped.
static POSITION_AT: Statement = Statement::new(
    "SELECT coalesce(
         (SELECT min(seq) - 1 FROM eventq_internal.events
          WHERE stream_id = $1 AND published_at > '-infinity' AND published_at >= $2),
         pg_sequence_last_value('eventq_internal.event_seq'))",
    &[INT, TIMESTAMPTZ],
);

pub fn position_at(client: &SpiClient<'_>, stream_id: i32, at: TimestampWithTimeZone) -> i64 {
    scalar(&POSITION_AT, client, &[arg(stream_id), arg(at)]).unwrap_or(0)
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

// Turning key ordering off: nothing waits any more, and unfinished tasks forget their key.
static FORGET_KEY_ORDER: Statement = Statement::new(
    "WITH freed AS (
         DELETE FROM eventq_internal.key_heads WHERE consumer_id = $1
     )
     UPDATE eventq_internal.tasks
     SET state = CASE WHEN state <> 'waiting' THEN state
                      WHEN run_at > now() THEN 'scheduled'
                      ELSE 'available' END::eventq_internal.task_state,
         order_key = NULL
     WHERE consumer_id = $1 AND order_key IS NOT NULL
       AND state NOT IN ('completed', 'discarded')",
    &[INT],
);

pub fn forget_key_order(client: &SpiClient<'_>, id: i32) {
    FORGET_KEY_ORDER.run(client, &[arg(id)]);
}
