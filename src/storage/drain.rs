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
//! Publication order within a transaction: all of a transaction's events are in one staging
//! slot (the slot follows the transaction's start time), and a slot is moved whole, its
//! events numbered in id order. Ids from one backend increase, so they keep the order they
//! were published in. Moving whole slots, rather than the N oldest events, also keeps the
//! cost linear in what is staged: finding the N oldest would need an index the publisher
//! would pay for, or a sort of all of staging per batch.
//!
//! Hazard: the drain lock is a transaction-level advisory lock. A drain that runs inside a
//! long transaction holds back every other drain until it commits; `pull` and `fetch`
//! therefore only try the lock, and never wait for it.

use super::{
    arg, column, Statement, BIGINT, BIGINT_ARRAY, BOOL_ARRAY, INT, INT_ARRAY, TEXT_ARRAY,
    TIMESTAMPTZ_ARRAY,
};
use crate::core::settings::Mode;
use crate::core::staging;
use crate::core::subject::{Filter, Router};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Advisory lock key (two int4 keys): "evtq", 1.
static LOCK: Statement = Statement::new("SELECT pg_advisory_xact_lock(1702261873, 1)", &[]);
static TRY_LOCK: Statement = Statement::new("SELECT pg_try_advisory_xact_lock(1702261873, 1)", &[]);

/// Waits for the drain lock; held until the transaction ends.
pub fn lock(client: &SpiClient<'_>) {
    LOCK.run(client, &[]);
}

/// Takes the drain lock if nobody holds it; held until the transaction ends.
fn try_lock(client: &SpiClient<'_>) -> bool {
    super::scalar::<bool>(&TRY_LOCK, client, &[]).unwrap_or(false)
}

static ANYTHING_STAGED: Statement =
    Statement::new("SELECT EXISTS (SELECT 1 FROM eventq_internal.staged)", &[]);

/// Whether any staged row is visible (committed, or this transaction's own).
fn anything_staged(client: &SpiClient<'_>) -> bool {
    super::scalar::<bool>(&ANYTHING_STAGED, client, &[]).unwrap_or(false)
}

// Of the idle staging slots (core::staging), those that still have pages: their rows are
// drained, or dead, and the pages should go. Cheap: it reads relation sizes, not rows.
static SLOTS_WITH_PAGES: Statement = Statement::new(
    "SELECT s, format('eventq_internal.staged_%s', s)::regclass::oid
     FROM unnest($1::int[]) s
     WHERE pg_relation_size(format('eventq_internal.staged_%s', s)::regclass) > 0",
    &[INT_ARRAY],
);

fn idle_slots() -> Vec<i32> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (0..staging::SLOTS).filter(|&s| staging::is_idle(s, now)).map(|s| s as i32).collect()
}

static SLOT_IS_EMPTY: Statement = Statement::new(
    "SELECT NOT EXISTS (SELECT 1 FROM eventq_internal.staged WHERE slot = $1)",
    &[INT],
);

static TRUNCATE: [Statement; 4] = [
    Statement::new("TRUNCATE eventq_internal.staged_0", &[]),
    Statement::new("TRUNCATE eventq_internal.staged_1", &[]),
    Statement::new("TRUNCATE eventq_internal.staged_2", &[]),
    Statement::new("TRUNCATE eventq_internal.staged_3", &[]),
];

/// Moves every visible event of one staging slot into the log. Events of dropped streams
/// are deleted without a trace. Numbers are reserved with one setval under the drain lock;
/// an aborted drain leaves a gap, never a reuse. Returns, per stream, the range of seq
/// numbers given out (each range holds only this drain's events of that stream).
macro_rules! move_slot {
    ($slot:literal) => {
        Statement::new(
            concat!(
                "WITH moved AS (
                     DELETE FROM eventq_internal.staged_", $slot, "
                     RETURNING id, stream_id, subject, key, payload, headers, deliver_at, published_at
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
                 ), logged AS (
                     INSERT INTO eventq_internal.events
                         (stream_id, seq, id, subject, key, payload, headers, published_at, deliver_at)
                     SELECT k.stream_id, numbers.before_first + k.n, k.id, k.subject, k.key, k.payload,
                            k.headers, k.published_at, k.deliver_at
                     FROM kept k CROSS JOIN numbers
                     RETURNING stream_id, seq
                 )
                 SELECT stream_id, min(seq), max(seq), count(*) FROM logged GROUP BY stream_id"
            ),
            &[],
        )
    };
}

static MOVE_SLOT: [Statement; 4] =
    [move_slot!("0"), move_slot!("1"), move_slot!("2"), move_slot!("3")];

// What routing needs of the events just moved, read back in chunks.
static MOVED_EVENTS: Statement = Statement::new(
    "SELECT seq, subject, key, deliver_at FROM eventq_internal.events
     WHERE stream_id = $1 AND seq BETWEEN $2 AND $3
     ORDER BY seq",
    &[INT, BIGINT, BIGINT],
);

static ROUTES: Statement = Statement::new(
    "SELECT id, name, mode, subjects, exclude, ordering = 'key'
     FROM eventq_internal.consumers WHERE stream_id = $1",
    &[INT],
);

// The first task of each key in a drain claims the key (see sql/schema.sql). The no-op
// DO UPDATE locks an existing row, so a finisher that holds it is waited for, and one that
// comes later sees this drain's tasks. Rows are locked in key order, as finishers do.
static CLAIM_KEYS: Statement = Statement::new(
    "INSERT INTO eventq_internal.key_heads AS h (consumer_id, order_key, head_seq)
     SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[]) ORDER BY 1, 2
     ON CONFLICT (consumer_id, order_key) DO UPDATE SET head_seq = h.head_seq
     RETURNING consumer_id, head_seq",
    &[INT_ARRAY, TEXT_ARRAY, BIGINT_ARRAY],
);

// One row per (task consumer, event): waiting unless it heads its key.
static INSERT_TASKS: Statement = Statement::new(
    "INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
     SELECT u.consumer_id, u.seq,
            CASE
              WHEN u.order_key IS NOT NULL AND NOT u.heads_key THEN 'waiting'
              WHEN u.deliver_at > now() THEN 'scheduled'
              ELSE 'available'
            END::eventq_internal.task_state,
            coalesce(u.deliver_at, now()),
            u.order_key
     FROM unnest($1::int[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bool[])
          AS u(consumer_id, seq, order_key, deliver_at, heads_key)",
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
    /// Staging slots truncated.
    pub truncated: i64,
}

/// Drains every committed staged event, fanning out `chunk` events at a time, and truncates
/// idle staging slots, if the drain lock is free; `None` when another session holds it (it
/// is draining). Consumers that received something are notified once, on channel
/// `eventq_<consumer>`, when this transaction commits.
///
/// Truncating is part of draining, whoever drains: a drained slot's dead rows would
/// otherwise make every "anything staged?" check walk them until vacuum came by.
pub fn drain(client: &SpiClient<'_>, chunk: i64) -> Option<Drained> {
    // Lock first: only the session that can drain looks at staging at all. Looking takes
    // ACCESS SHARE on every slot (even reading a slot's size does) until the transaction
    // ends, and a crowd of readers holding it would keep idle slots from ever being
    // truncated; they would then walk dead rows on every call.
    if !try_lock(client) {
        return None;
    }
    let idle: Vec<(i32, pg_sys::Oid)> = SLOTS_WITH_PAGES
        .run(client, &[arg(idle_slots())])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect();
    if idle.is_empty() && !anything_staged(client) {
        return Some(Drained::default());
    }
    let mut total = move_all(client, chunk);
    for (slot, relation) in idle {
        // Exclusively held, a slot has no uncommitted rows; once every committed row has
        // been moved, nothing in it is needed. A slot in use is tried again next time.
        let locked = unsafe {
            // SAFETY: a conditional lock request on an existing relation, held until the
            // transaction ends.
            pg_sys::ConditionalLockRelationOid(relation, pg_sys::AccessExclusiveLock as i32)
        };
        if !locked {
            continue;
        }
        let late = move_all(client, chunk);
        total.events += late.events;
        total.tasks += late.tasks;
        if super::scalar::<bool>(&SLOT_IS_EMPTY, client, &[arg(slot)]).unwrap_or(false) {
            TRUNCATE[slot as usize].run(client, &[]);
            total.truncated += 1;
        }
    }
    Some(total)
}

/// Moves and fans out every visible staged event; needs the drain lock.
fn move_all(client: &SpiClient<'_>, chunk: i64) -> Drained {
    let mut total = Drained::default();
    let mut fan_out = FanOut::default();
    for statement in &MOVE_SLOT {
        let moved: Vec<(i32, i64, i64, i64)> = statement
            .run(client, &[])
            .filter_map(|row| {
                Some((column(&row, 1)?, column(&row, 2)?, column(&row, 3)?, column(&row, 4)?))
            })
            .collect();
        for (stream_id, first, last, count) in moved {
            total.events += count;
            total.tasks += fan_out.stream(client, stream_id, first, last, chunk);
        }
    }
    fan_out.notify(client);
    total
}

struct Route {
    consumer_id: i32,
    name: String,
    mode: Mode,
    keyed: bool,
}

/// Routing state of one drain: consumers per stream, keys claimed so far, and how many
/// events each consumer received.
#[derive(Default)]
struct FanOut {
    routers: HashMap<i32, (Router, Vec<Route>)>,
    keys_seen: HashSet<(i32, String)>,
    received: BTreeMap<String, i64>,
}

#[derive(Default)]
struct Tasks {
    consumer: Vec<i32>,
    seq: Vec<i64>,
    key: Vec<Option<String>>,
    deliver_at: Vec<Option<TimestampWithTimeZone>>,
    /// (consumer, key, seq) of the first task of each key in the drain.
    claims: Vec<(i32, String, i64)>,
}

impl FanOut {
    fn routes(&mut self, client: &SpiClient<'_>, stream_id: i32) -> &(Router, Vec<Route>) {
        self.routers.entry(stream_id).or_insert_with(|| {
            let mut router = Router::default();
            let mut routes = Vec::new();
            for row in ROUTES.run(client, &[arg(stream_id)]) {
                let include: Vec<String> = column(&row, 4).unwrap_or_default();
                let exclude: Vec<String> = column(&row, 5).unwrap_or_default();
                // Stored filters were validated when the consumer was created or altered.
                let Ok(filter) = Filter::parse(&include, &exclude) else { continue };
                router.add(&filter);
                routes.push(Route {
                    consumer_id: column(&row, 1).unwrap_or(0),
                    name: column(&row, 2).unwrap_or_default(),
                    mode: Mode::parse(&column::<String>(&row, 3).unwrap_or_default())
                        .unwrap_or(Mode::Task),
                    keyed: column(&row, 6).unwrap_or(false),
                });
            }
            (router, routes)
        })
    }

    /// Creates the tasks for the events `first..=last` of a stream; returns how many.
    fn stream(
        &mut self,
        client: &SpiClient<'_>,
        stream_id: i32,
        first: i64,
        last: i64,
        chunk: i64,
    ) -> i64 {
        if self.routes(client, stream_id).0.is_empty() {
            return 0;
        }
        let mut created = 0;
        let mut cursor = MOVED_EVENTS.cursor(client, &[arg(stream_id), arg(first), arg(last)]);
        loop {
            let rows =
                cursor.fetch(chunk).unwrap_or_else(|e| crate::error::spi_failure("fetch", e));
            if rows.is_empty() {
                break;
            }
            let events: Vec<(i64, String, Option<String>, Option<TimestampWithTimeZone>)> = rows
                .filter_map(|row| {
                    Some((column(&row, 1)?, column(&row, 2)?, column(&row, 3), column(&row, 4)))
                })
                .collect();
            created += self.chunk(client, stream_id, events);
        }
        created
    }

    fn chunk(
        &mut self,
        client: &SpiClient<'_>,
        stream_id: i32,
        events: Vec<(i64, String, Option<String>, Option<TimestampWithTimeZone>)>,
    ) -> i64 {
        let Some((router, routes)) = self.routers.get(&stream_id) else { return 0 };
        let mut tasks = Tasks::default();
        let mut hits = Vec::new();
        for (seq, subject, key, deliver_at) in events {
            hits.clear();
            router.route(&subject, &mut hits);
            for &hit in &hits {
                let route = &routes[hit];
                *self.received.entry(route.name.clone()).or_default() += 1;
                if route.mode != Mode::Task {
                    continue;
                }
                let key = if route.keyed { key.clone() } else { None };
                if let Some(k) = &key {
                    if self.keys_seen.insert((route.consumer_id, k.clone())) {
                        tasks.claims.push((route.consumer_id, k.clone(), seq));
                    }
                }
                tasks.consumer.push(route.consumer_id);
                tasks.seq.push(seq);
                tasks.key.push(key);
                tasks.deliver_at.push(deliver_at);
            }
        }
        let created = tasks.consumer.len() as i64;
        if created > 0 {
            let heads = claim_keys(client, &mut tasks.claims);
            let heads_key: Vec<bool> = tasks
                .consumer
                .iter()
                .zip(&tasks.seq)
                .map(|(c, seq)| heads.contains(&(*c, *seq)))
                .collect();
            INSERT_TASKS.run(
                client,
                &[
                    arg(tasks.consumer),
                    arg(tasks.seq),
                    arg(tasks.key),
                    arg(tasks.deliver_at),
                    arg(heads_key),
                ],
            );
        }
        created
    }

    fn notify(self, client: &SpiClient<'_>) {
        if !self.received.is_empty() {
            let (names, counts): (Vec<String>, Vec<i64>) = self.received.into_iter().unzip();
            NOTIFY.run(client, &[arg(names), arg(counts)]);
        }
    }
}

/// Claims the keys; returns (consumer, seq) of the tasks that now head their key: those
/// whose claim found the key free.
fn claim_keys(client: &SpiClient<'_>, claims: &mut [(i32, String, i64)]) -> HashSet<(i32, i64)> {
    if claims.is_empty() {
        return HashSet::new();
    }
    claims.sort();
    let consumers: Vec<i32> = claims.iter().map(|c| c.0).collect();
    let keys: Vec<String> = claims.iter().map(|c| c.1.clone()).collect();
    let seqs: Vec<i64> = claims.iter().map(|c| c.2).collect();
    CLAIM_KEYS
        .run(client, &[arg(consumers), arg(keys), arg(seqs)])
        .filter_map(|row| Some((column::<i32>(&row, 1)?, column::<i64>(&row, 2)?)))
        .collect()
}
