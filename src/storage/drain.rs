//! The drain: moves committed events from staging into the log, numbers them, and fans them
//! out into tasks.
//!
//! Why this gives commit order: a drain sees only rows whose publishing transaction has
//! committed, and drains run one at a time, each holding the drain lock until it commits.
//! Each takes its numbers from `event_seq` after the previous drain committed, so every
//! event that becomes visible later gets a larger `seq`. A reader that has seen `seq = N`
//! can never be shown a new event with `seq <= N`. A transaction that published early and
//! commits late is simply drained by the first drain after its commit: it is never skipped,
//! because staging rows leave staging only by being drained (or with their stream).
//!
//! Within one batch, events are numbered in id order. Ids from one backend increase, so
//! the events of one transaction keep the order they were published in.
//!
//! Hazard: the drain lock is a transaction-level advisory lock. A drain that runs inside a
//! long transaction holds back every other drain until it commits; `pull` and `fetch`
//! therefore only try the lock, and never wait for it.

use super::{arg, column, Statement, BIGINT, BIGINT_ARRAY, BOOL_ARRAY, INT_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY};
use crate::core::settings::Mode;
use crate::core::subject::{Filter, Router};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use std::collections::{BTreeMap, HashMap};

/// Advisory lock key (two int4 keys): "evtq", 1.
static LOCK: Statement = Statement::new("SELECT pg_advisory_xact_lock(1702261873, 1)", &[]);
static TRY_LOCK: Statement =
    Statement::new("SELECT pg_try_advisory_xact_lock(1702261873, 1)", &[]);

/// Waits for the drain lock; held until the transaction ends.
pub fn lock(client: &SpiClient<'_>) {
    LOCK.run(client, &[]);
}

/// Takes the drain lock if nobody holds it; held until the transaction ends.
pub fn try_lock(client: &SpiClient<'_>) -> bool {
    super::scalar::<bool>(&TRY_LOCK, client, &[]).unwrap_or(false)
}

static ANYTHING_STAGED: Statement =
    Statement::new("SELECT EXISTS (SELECT 1 FROM eventq_internal.staged)", &[]);

/// Whether any staged row is visible (committed, or this transaction's own).
pub fn anything_staged(client: &SpiClient<'_>) -> bool {
    super::scalar::<bool>(&ANYTHING_STAGED, client, &[]).unwrap_or(false)
}

// Moves the `$1` oldest visible staged events into the log. `upto` bounds the batch by id:
// every visible row at or below it is in the batch (ids are unique), and DELETE only sees
// the same committed rows. Events of dropped streams are deleted without a trace.
// Numbers are reserved with one setval under the drain lock; an aborted drain leaves a
// gap, never a reuse.
static MOVE: Statement = Statement::new(
    "WITH bound AS (
         SELECT id AS upto
         FROM (SELECT id FROM eventq_internal.staged ORDER BY id LIMIT $1) oldest
         ORDER BY id DESC LIMIT 1
     ), moved AS (
         DELETE FROM eventq_internal.staged s USING bound WHERE s.id <= bound.upto
         RETURNING s.id, s.stream_id, s.subject, s.key, s.payload, s.headers,
                   s.deliver_at, s.published_at
     ), kept AS (
         SELECT m.*, row_number() OVER (ORDER BY m.id) AS n
         FROM moved m
         WHERE EXISTS (SELECT 1 FROM eventq_internal.streams st WHERE st.id = m.stream_id)
     ), numbers AS (
         SELECT CASE WHEN count(*) > 0 THEN
                    setval('eventq_internal.event_seq',
                           pg_sequence_last_value('eventq_internal.event_seq') + count(*))
                    - count(*)
                END AS before_first
         FROM kept
     )
     INSERT INTO eventq_internal.events
         (stream_id, seq, id, subject, key, payload, headers, published_at, deliver_at)
     SELECT k.stream_id, numbers.before_first + k.n, k.id, k.subject, k.key, k.payload,
            k.headers, k.published_at, k.deliver_at
     FROM kept k CROSS JOIN numbers
     RETURNING stream_id, seq, subject, key, deliver_at",
    &[BIGINT],
);

static ROUTES: Statement = Statement::new(
    "SELECT id, name, stream_id, mode, subjects, exclude, ordering = 'key'
     FROM eventq_internal.consumers WHERE stream_id = ANY($1)",
    &[INT_ARRAY],
);

// One row per (task consumer, event). A keyed task waits when an older task of its key is
// unfinished, either already in the table or earlier in this batch (`first_of_key` false).
static INSERT_TASKS: Statement = Statement::new(
    "INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
     SELECT u.consumer_id, u.seq,
            CASE
              WHEN u.order_key IS NOT NULL AND (NOT u.first_of_key OR EXISTS (
                     SELECT 1 FROM eventq_internal.tasks o
                     WHERE o.consumer_id = u.consumer_id AND o.order_key = u.order_key
                       AND o.state NOT IN ('completed', 'discarded')))
                THEN 'waiting'
              WHEN u.deliver_at > now() THEN 'scheduled'
              ELSE 'available'
            END::eventq_internal.task_state,
            coalesce(u.deliver_at, now()),
            u.order_key
     FROM unnest($1::int[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bool[])
          AS u(consumer_id, seq, order_key, deliver_at, first_of_key)",
    &[INT_ARRAY, BIGINT_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY, BOOL_ARRAY],
);

static NOTIFY: Statement = Statement::new(
    "SELECT pg_notify('eventq_' || u.name, u.n::text)
     FROM unnest($1::text[], $2::bigint[]) AS u(name, n)",
    &[TEXT_ARRAY, BIGINT_ARRAY],
);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub events: i64,
    pub tasks: i64,
}

impl std::ops::AddAssign for Drained {
    fn add_assign(&mut self, other: Drained) {
        self.events += other.events;
        self.tasks += other.tasks;
    }
}

struct Route {
    consumer_id: i32,
    name: String,
    mode: Mode,
    keyed: bool,
}

/// Drains up to `max_batches` batches of `batch_size` events, if the drain lock is free.
/// `None` when another session holds the lock (it is draining). Consumers that received
/// something are notified once, on channel `eventq_<consumer>`, when this transaction
/// commits.
pub fn drain(client: &SpiClient<'_>, batch_size: i64, max_batches: usize) -> Option<Drained> {
    if !anything_staged(client) {
        return Some(Drained::default());
    }
    if !try_lock(client) {
        return None;
    }
    let mut total = Drained::default();
    let mut received: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..max_batches {
        let batch = drain_batch(client, batch_size, &mut received);
        total += batch;
        if batch.events < batch_size {
            break;
        }
    }
    if !received.is_empty() {
        let (names, counts): (Vec<String>, Vec<i64>) = received.into_iter().unzip();
        NOTIFY.run(client, &[arg(names), arg(counts)]);
    }
    Some(total)
}

struct MovedEvent {
    stream_id: i32,
    seq: i64,
    subject: String,
    key: Option<String>,
    deliver_at: Option<TimestampWithTimeZone>,
}

fn drain_batch(client: &SpiClient<'_>, batch_size: i64, received: &mut BTreeMap<String, i64>) -> Drained {
    let mut events: Vec<MovedEvent> = MOVE
        .run(client, &[arg(batch_size)])
        .map(|row| MovedEvent {
            stream_id: column(&row, 1).unwrap_or(0),
            seq: column(&row, 2).unwrap_or(0),
            subject: column(&row, 3).unwrap_or_default(),
            key: column(&row, 4),
            deliver_at: column(&row, 5),
        })
        .collect();
    if events.is_empty() {
        return Drained::default();
    }
    events.sort_by_key(|e| e.seq);

    let mut streams: Vec<i32> = events.iter().map(|e| e.stream_id).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut routes: Vec<Route> = Vec::new();
    let mut routers: HashMap<i32, (Router, Vec<usize>)> = HashMap::new();
    for row in ROUTES.run(client, &[arg(streams)]) {
        let include: Vec<String> = column(&row, 5).unwrap_or_default();
        let exclude: Vec<String> = column(&row, 6).unwrap_or_default();
        // Stored filters were validated when the consumer was created or altered.
        let Ok(filter) = Filter::parse(&include, &exclude) else { continue };
        let stream_id: i32 = column(&row, 3).unwrap_or(0);
        let (router, members) = routers.entry(stream_id).or_default();
        router.add(&filter);
        members.push(routes.len());
        routes.push(Route {
            consumer_id: column(&row, 1).unwrap_or(0),
            name: column(&row, 2).unwrap_or_default(),
            mode: Mode::parse(&column::<String>(&row, 4).unwrap_or_default()).unwrap_or(Mode::Task),
            keyed: column(&row, 7).unwrap_or(false),
        });
    }

    let mut task_consumer = Vec::new();
    let mut task_seq = Vec::new();
    let mut task_key: Vec<Option<String>> = Vec::new();
    let mut task_deliver_at = Vec::new();
    let mut task_first_of_key = Vec::new();
    let mut keys_seen: std::collections::HashSet<(i32, String)> = Default::default();
    let mut hits = Vec::new();
    for event in &events {
        let Some((router, members)) = routers.get(&event.stream_id) else { continue };
        hits.clear();
        router.route(&event.subject, &mut hits);
        for &hit in &hits {
            let route = &routes[members[hit]];
            *received.entry(route.name.clone()).or_default() += 1;
            if route.mode != Mode::Task {
                continue;
            }
            let consumer_id = route.consumer_id;
            let key = if route.keyed { event.key.clone() } else { None };
            let first_of_key = match &key {
                Some(k) => keys_seen.insert((consumer_id, k.clone())),
                None => true,
            };
            task_consumer.push(consumer_id);
            task_seq.push(event.seq);
            task_key.push(key);
            task_deliver_at.push(event.deliver_at);
            task_first_of_key.push(first_of_key);
        }
    }
    let tasks = task_consumer.len() as i64;
    if tasks > 0 {
        INSERT_TASKS.run(
            client,
            &[
                arg(task_consumer),
                arg(task_seq),
                arg(task_key),
                arg(task_deliver_at),
                arg(task_first_of_key),
            ],
        );
    }
    Drained { events: events.len() as i64, tasks }
}
