//! The drain: moves committed events from staging into the log, numbers them, and fans them
//! out into tasks.
//!
//! Why `seq` follows commit order. Drains run one at a time, each holding the drain lock
//! until it commits, and each reads staging with a snapshot taken after it got the lock,
//! so it sees everything the previous drains committed and every event that committed
//! before it. Each takes its numbers from `event_seq` after the previous drain committed.
//! So an event that becomes visible to readers later never gets a lower `seq` than one
//! they could already see: a reader that has seen `seq = N` never meets a new event at or
//! below N. A transaction that published early and commits late is drained by the first
//! drain after its commit; nothing is skipped, because rows leave staging only by being
//! drained.
//!
//! Within one drain, events are numbered in the order of their transactions' ids, then of
//! their ids. A transaction gets its id at its first write, so if transaction A committed
//! before transaction B started, A's id is lower: A's events come first whichever drains
//! see them (happens-before order). Event ids from one backend increase, so the events of
//! one transaction keep the order they were published in. Time stamps could not do this:
//! two backends' clocks and random id bits order events of the same millisecond
//! arbitrarily, and a transaction's start time says nothing about its commit.
//!
//! Where a drain runs. Only in a transaction that ends right away: the background worker's,
//! or the transaction of a single statement (`pull`, `fetch`, `run_maintenance()` called
//! outside a transaction block). A drain inside a longer transaction would hold the drain
//! lock until that transaction ended, and nothing else could drain meanwhile. For the same
//! reason a drain never waits for a lock a user's transaction could hold: it routes around
//! consumers and streams that are being changed (leaving a gap to fill later), and takes
//! key rows with SKIP LOCKED (see `storage::keys`).
//!
//! Staging slots are truncated, not vacuumed: a slot nobody can write to any more is locked
//! exclusively (only if that is possible at once), drained once more with a fresh snapshot
//! (every transaction that could have written into it has ended by then), checked empty,
//! and truncated. TRUNCATE ignores snapshots, so it must never run with a stale one.

use super::{
    arg, column, keys, locks, release, scalar, Statement, BIGINT, BIGINT_ARRAY, BOOL_ARRAY, INT,
    INT_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY,
};
use crate::core::settings::Mode;
use crate::core::staging;
use crate::core::subject::{Filter, Router};
use crate::wakeup;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

static WORK_PENDING: Statement = Statement::new(
    "SELECT EXISTS (SELECT 1 FROM eventq_internal.staged),
            EXISTS (SELECT 1 FROM eventq_internal.routing_gaps),
            EXISTS (SELECT 1 FROM eventq_internal.key_rechecks),
            EXISTS (SELECT 1 FROM eventq_internal.restoring)",
    &[],
);

static STREAM_IDS: Statement =
    Statement::new("SELECT id FROM eventq_internal.streams ORDER BY id", &[]);

// Of the idle staging slots (core::staging), those that still have pages: their rows are
// drained, or dead, and the pages should go. Cheap: it reads relation sizes, not rows.
static SLOTS_WITH_PAGES: Statement = Statement::new(
    "SELECT s, pg_catalog.format('eventq_internal.staged_%s', s)::regclass::oid
     FROM unnest($1::int[]) s
     WHERE pg_catalog.pg_relation_size(pg_catalog.format('eventq_internal.staged_%s', s)::regclass) > 0",
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

static SEQ_HEAD: Statement =
    Statement::new("SELECT pg_catalog.pg_sequence_last_value('eventq_internal.event_seq')", &[]);

// Moves every visible staged event of the streams this drain holds ($1) into the log,
// numbered in (transaction id, id) order, after events restored from another cluster
// (origin <> $2, this cluster's), whose transaction ids mean nothing here. Events of
// dropped streams are deleted without a trace; those of a stream not known at all (which
// only a restore still loading could leave) stay, as do those of a stream created since
// this drain looked (the next drain takes them). Numbers are reserved with one setval
// under the drain lock; an aborted drain leaves a gap, never a reuse. Records the drain;
// returns, per stream, the range of seq numbers given out.
static MOVE: Statement = Statement::new(
    "WITH moved AS (
         DELETE FROM eventq_internal.staged s
         WHERE s.stream_id = ANY ($1::int[])
            OR EXISTS (SELECT 1 FROM eventq_internal.dropped_streams d WHERE d.id = s.stream_id)
         RETURNING xid, id, stream_id, subject, key, payload, headers, deliver_at, published_at,
                   origin, max_attempts, backoff, backoff_base
     ), kept AS (
         SELECT m.*, pg_catalog.row_number() OVER (ORDER BY m.origin = $2, m.xid, m.id) AS n
         FROM moved m
         WHERE EXISTS (SELECT 1 FROM eventq_internal.streams st WHERE st.id = m.stream_id)
     ), numbers AS (
         SELECT CASE WHEN pg_catalog.count(*) > 0 THEN
                    pg_catalog.setval('eventq_internal.event_seq',
                           pg_catalog.pg_sequence_last_value('eventq_internal.event_seq') + pg_catalog.count(*))
                    - pg_catalog.count(*)
                END AS before_first
         FROM kept
     ), logged AS (
         INSERT INTO eventq_internal.events
             (stream_id, seq, id, subject, key, payload, headers, published_at, deliver_at,
              max_attempts, backoff, backoff_base)
         SELECT k.stream_id, numbers.before_first + k.n, k.id, k.subject, k.key, k.payload,
                k.headers, k.published_at, k.deliver_at, k.max_attempts, k.backoff, k.backoff_base
         FROM kept k CROSS JOIN numbers
         RETURNING stream_id, seq
     ), recorded AS (
         INSERT INTO eventq_internal.drains (last_seq, events)
         SELECT pg_catalog.max(seq), pg_catalog.count(*) FROM logged HAVING pg_catalog.count(*) > 0
     )
     SELECT stream_id, pg_catalog.min(seq), pg_catalog.max(seq), pg_catalog.count(*) FROM logged GROUP BY stream_id",
    &[INT_ARRAY, BIGINT],
);

// What routing needs of the events just moved, read back a window of seq numbers at a
// time ($2, $3]: a window costs what it holds, not what the whole drain moved, as long
// as it is read through the primary key, which the plan is held to: right after a first
// burst the statistics say the log is empty, and a kept plan made then would read the
// whole table (a sequential scan and a sort) for every window.
static MOVED_EVENTS: Statement = Statement::index_ordered(
    "SELECT seq, subject, key, deliver_at, published_at FROM eventq_internal.events
     WHERE stream_id = $1 AND seq > $2 AND seq <= $3
     ORDER BY seq",
    &[INT, BIGINT, BIGINT],
);

static ROUTES: Statement = Statement::new(
    "SELECT c.id, c.name, c.mode, c.subjects, c.exclude, c.ordering = 'key', c.start_at,
            EXISTS (SELECT 1 FROM eventq_internal.routing_gaps g WHERE g.consumer_id = c.id)
     FROM eventq_internal.consumers c WHERE c.stream_id = $1 ORDER BY c.id",
    &[INT],
);

static CONSUMERS_WITH_GAPS: Statement = Statement::new(
    "WITH moot AS (
         DELETE FROM eventq_internal.routing_gaps g
         WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.consumers c WHERE c.id = g.consumer_id)
     )
     SELECT DISTINCT g.consumer_id FROM eventq_internal.routing_gaps g
     JOIN eventq_internal.consumers c ON c.id = g.consumer_id
     ORDER BY 1",
    &[],
);

static ADD_GAP: Statement = Statement::new(
    "INSERT INTO eventq_internal.routing_gaps (consumer_id, from_seq, to_seq) VALUES ($1, $2, $3)",
    &[INT, BIGINT, BIGINT],
);

// Tasks for the events of a consumer's gaps (an open gap ends at $2), with the consumer's
// current filter; the gaps go. Keyed tasks start out
// waiting; the keys are settled afterwards (storage::keys).
static FILL_GAPS: Statement = Statement::indexed(
    "WITH gaps AS (
         DELETE FROM eventq_internal.routing_gaps WHERE consumer_id = $1
         RETURNING from_seq, coalesce(to_seq, $2) AS to_seq
     ), c AS (
         SELECT id, stream_id, include_re, exclude_re, ordering = 'key' AS keyed, start_at
         FROM eventq_internal.consumers WHERE id = $1 AND mode = 'task'
     ), filled AS (
         INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
         SELECT c.id, e.seq,
                CASE
                  WHEN c.keyed AND e.key IS NOT NULL THEN 'waiting'
                  WHEN e.deliver_at > pg_catalog.now() THEN 'scheduled'
                  ELSE 'available'
                END::eventq_internal.task_state,
                coalesce(e.deliver_at, pg_catalog.now()),
                CASE WHEN c.keyed THEN e.key END
         FROM c
         CROSS JOIN gaps g
         CROSS JOIN LATERAL (
             SELECT * FROM eventq_internal.events e
             WHERE e.stream_id = c.stream_id AND e.seq >= g.from_seq AND e.seq <= g.to_seq
             ORDER BY e.stream_id, e.seq
         ) e
         WHERE (c.include_re IS NULL OR e.subject ~ c.include_re)
           AND (c.exclude_re IS NULL OR e.subject !~ c.exclude_re)
           AND (c.start_at IS NULL OR e.published_at >= c.start_at)
         ON CONFLICT (consumer_id, seq) DO NOTHING
         RETURNING order_key
     )
     SELECT pg_catalog.count(*), pg_catalog.array_agg(DISTINCT order_key) FILTER (WHERE order_key IS NOT NULL)
     FROM filled",
    &[INT, BIGINT],
);

// One row per (task consumer, event): waiting unless it heads its key.
static INSERT_TASKS: Statement = Statement::new(
    "INSERT INTO eventq_internal.tasks (consumer_id, seq, state, run_at, order_key)
     SELECT u.consumer_id, u.seq,
            CASE
              WHEN u.order_key IS NOT NULL AND NOT u.heads_key THEN 'waiting'
              WHEN u.deliver_at > pg_catalog.now() THEN 'scheduled'
              ELSE 'available'
            END::eventq_internal.task_state,
            coalesce(u.deliver_at, pg_catalog.now()),
            u.order_key
     FROM unnest($1::int[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bool[])
          AS u(consumer_id, seq, order_key, deliver_at, heads_key)",
    &[INT_ARRAY, BIGINT_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY, BOOL_ARRAY],
);

// Listeners are told, unless the notification queue is filling up (a listener that stopped
// reading holds it): a full queue makes the commit of whatever notifies fail, and a drain
// must never fail for a listener's sake. Workers poll besides listening.
static NOTIFY: Statement = Statement::new(
    "SELECT pg_catalog.pg_notify('eventq_' || u.name, u.n::text)
     FROM unnest($1::text[], $2::bigint[]) AS u(name, n)
     WHERE pg_catalog.pg_notification_queue_usage() < 0.5",
    &[TEXT_ARRAY, BIGINT_ARRAY],
);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub events: i64,
    pub tasks: i64,
    /// Staging slots truncated.
    pub truncated: i64,
    /// Tasks created for gaps (events drained while a consumer could not be routed to).
    pub gap_tasks: i64,
    /// Consumers that were busy, so that this drain left a gap for them.
    pub gaps_left: i64,
    /// Keys settled after a recheck.
    pub keys_rechecked: i64,
    /// Per consumer, how many events or tasks it received, to notify listeners.
    pub received: BTreeMap<String, i64>,
}

/// How a drain may behave: whether it waits for the drain lock (or gives up when another
/// drain holds it), and whether it may truncate staging (never under a snapshot that was
/// not taken for it; see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub wait: bool,
    pub truncate: bool,
    pub chunk: i64,
}

/// Drains every committed staged event, fills gaps and settles rechecked keys; `None` when
/// another drain holds the lock and `options.wait` is false. Listeners are not notified
/// here: see `notify`.
pub fn drain(client: &SpiClient<'_>, options: Options) -> Option<Drained> {
    if options.wait {
        locks::lock_drain();
    } else if !locks::try_lock_drain() {
        return None;
    }
    // Everything published so far is visible to the snapshots taken from here on.
    wakeup::draining();
    let idle: Vec<(i32, pg_sys::Oid)> = if options.truncate {
        SLOTS_WITH_PAGES
            .run(client, &[arg(idle_slots())])
            .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
            .collect()
    } else {
        Vec::new()
    };
    let (staged, gaps, rechecks, restoring) = match WORK_PENDING.first_row(client, &[]) {
        Some(row) => (
            column(&row, 1).unwrap_or(true),
            column(&row, 2).unwrap_or(true),
            column(&row, 3).unwrap_or(true),
            column(&row, 4).unwrap_or(false),
        ),
        None => (true, true, true, false),
    };
    let mut total = Drained::default();
    if restoring && super::maintenance::restore_in_progress(client) {
        return Some(total);
    }
    if !staged && !gaps && !rechecks && idle.is_empty() {
        return Some(total);
    }
    // Keys left for a recheck first: a new task must not take a key ahead of older tasks
    // that wait for it.
    if rechecks {
        total.keys_rechecked = keys::recheck(client, 10_000);
    }
    let streams = held_streams(client);
    if staged || gaps {
        move_all(client, options.chunk, &streams, &mut total);
    }
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
        move_all(client, options.chunk, &streams, &mut total);
        if scalar::<bool>(&SLOT_IS_EMPTY, client, &[arg(slot)]).unwrap_or(false) {
            TRUNCATE[slot as usize].run(client, &[]);
            total.truncated += 1;
        }
    }
    Some(total)
}

/// The streams this drain holds (shared): all but those being dropped right now, whose
/// staged events stay where they are, to be drained if the drop rolls back or deleted if it
/// commits.
fn held_streams(client: &SpiClient<'_>) -> Vec<i32> {
    STREAM_IDS
        .run(client, &[])
        .filter_map(|row| column::<i32>(&row, 1))
        .filter(|&id| locks::try_lock_stream(id, locks::Mode::Shared))
        .collect()
}

/// Sends one notification per consumer that received something.
pub fn notify(client: &SpiClient<'_>, received: BTreeMap<String, i64>) {
    if !received.is_empty() {
        let (names, counts): (Vec<String>, Vec<i64>) = received.into_iter().unzip();
        NOTIFY.run(client, &[arg(names), arg(counts)]);
    }
}

/// Moves and fans out every visible staged event, and fills gaps; needs the drain lock.
fn move_all(client: &SpiClient<'_>, chunk: i64, streams: &[i32], total: &mut Drained) {
    let head_before: i64 = scalar(&SEQ_HEAD, client, &[]).unwrap_or(0);
    let moved: Vec<(i32, i64, i64, i64)> = MOVE
        .run(client, &[arg(streams.to_vec()), arg(super::append::origin())])
        .filter_map(|row| {
            Some((column(&row, 1)?, column(&row, 2)?, column(&row, 3)?, column(&row, 4)?))
        })
        .collect();
    let mut fan_out = FanOut { head_before, ..FanOut::default() };
    for (stream_id, first, last, count) in moved {
        total.events += count;
        fan_out.stream(client, stream_id, first, last, chunk);
    }
    // Consumers with gaps that routing did not see: their stream had nothing new, or they
    // became visible (their creation committed) after routing looked. Their open gaps end
    // at the head including this pass: none of its events was routed to them.
    let with_gaps: Vec<i32> =
        CONSUMERS_WITH_GAPS.run(client, &[]).filter_map(|row| column(&row, 1)).collect();
    let head_now: i64 = scalar(&SEQ_HEAD, client, &[]).unwrap_or(head_before);
    for consumer_id in with_gaps {
        if !fan_out.handled.contains(&consumer_id)
            && locks::try_lock_consumer(consumer_id, locks::Mode::Exclusive)
        {
            fan_out.fill_gaps(client, consumer_id, head_now);
        }
    }
    total.tasks += fan_out.created;
    total.gap_tasks += fan_out.gap_tasks;
    total.gaps_left += fan_out.gaps_left;
    for (name, n) in fan_out.received {
        *total.received.entry(name).or_default() += n;
    }
}

struct Route {
    consumer_id: i32,
    name: String,
    mode: Mode,
    keyed: bool,
    start_at: Option<TimestampWithTimeZone>,
}

/// Routing state of one pass: consumers per stream, and how many events each consumer
/// received.
#[derive(Default)]
struct FanOut {
    head_before: i64,
    routers: HashMap<i32, (Router, Vec<Route>)>,
    /// Consumers whose gaps this pass looked at.
    handled: BTreeSet<i32>,
    received: BTreeMap<String, i64>,
    created: i64,
    gap_tasks: i64,
    gaps_left: i64,
}

struct MovedEvent {
    seq: i64,
    subject: String,
    key: Option<String>,
    deliver_at: Option<TimestampWithTimeZone>,
    published_at: Option<TimestampWithTimeZone>,
}

impl FanOut {
    /// The consumers of a stream that this drain can route to. A consumer being changed
    /// (its lock held exclusively) gets a gap for the events `first..=last` instead; a
    /// consumer with gaps has them filled first (under its exclusive lock), so that its
    /// tasks are created in seq order.
    fn routes(&mut self, client: &SpiClient<'_>, stream_id: i32, first: i64, last: i64) {
        // Lock first, then read the settings: a change (which holds the lock exclusively)
        // cannot commit between the read and the routing.
        let candidates: Vec<(i32, bool, bool)> = ROUTES
            .run(client, &[arg(stream_id)])
            .filter_map(|row| {
                let mode = Mode::parse(&column::<String>(&row, 3).unwrap_or_default()).ok()?;
                Some((column(&row, 1)?, mode == Mode::Task, column(&row, 8).unwrap_or(false)))
            })
            .collect();
        let mut held = HashSet::new();
        for (consumer_id, task_mode, has_gaps) in candidates {
            self.handled.insert(consumer_id);
            if !task_mode {
                held.insert(consumer_id);
                continue;
            }
            let lock_mode = if has_gaps { locks::Mode::Exclusive } else { locks::Mode::Shared };
            if locks::try_lock_consumer(consumer_id, lock_mode) {
                held.insert(consumer_id);
            } else {
                ADD_GAP.run(client, &[arg(consumer_id), arg(first), arg(last)]);
                self.gaps_left += 1;
            }
        }
        let mut router = Router::default();
        let mut routes = Vec::new();
        let rows: Vec<_> = ROUTES.run(client, &[arg(stream_id)]).collect();
        for row in rows {
            let consumer_id: i32 = column(&row, 1).unwrap_or(0);
            if !held.contains(&consumer_id) {
                // busy, or created since the first look: the next drain fills its gap
                continue;
            }
            let name: String = column(&row, 2).unwrap_or_default();
            let mode =
                Mode::parse(&column::<String>(&row, 3).unwrap_or_default()).unwrap_or(Mode::Task);
            if mode == Mode::Task && column::<bool>(&row, 8).unwrap_or(false) {
                // before this pass's events, which are routed to it below
                self.fill_gaps(client, consumer_id, self.head_before);
            }
            let include: Vec<String> = column(&row, 4).unwrap_or_default();
            let exclude: Vec<String> = column(&row, 5).unwrap_or_default();
            // The table's CHECK constraint keeps unparseable patterns out of storage.
            let filter = Filter::parse(&include, &exclude).unwrap_or_else(|e| {
                crate::error::damaged_installation(&format!(
                    "consumer \"{name}\" has a filter eventq cannot parse: {e}"
                ))
            });
            router.add(&filter);
            routes.push(Route {
                consumer_id,
                name,
                mode,
                keyed: column(&row, 6).unwrap_or(false),
                start_at: column(&row, 7),
            });
        }
        self.routers.insert(stream_id, (router, routes));
    }

    /// Fills the consumer's gaps; an open gap (a consumer's creation) ends at `open_end`.
    fn fill_gaps(&mut self, client: &SpiClient<'_>, consumer_id: i32, open_end: i64) {
        self.handled.insert(consumer_id);
        let Some(row) = FILL_GAPS.first_row(client, &[arg(consumer_id), arg(open_end)]) else {
            return;
        };
        let filled = column::<i64>(&row, 1).unwrap_or(0);
        self.gap_tasks += filled;
        if filled > 0 {
            // Tasks of older events, below where pulls start.
            crate::pull_start::released(consumer_id);
        }
        let keys: Vec<String> = column(&row, 2).unwrap_or_default();
        if !keys.is_empty() {
            keys::settle_keys(client, consumer_id, keys, keys::Busy::Recheck);
        }
    }

    /// Creates the tasks for the events `first..=last` of a stream.
    fn stream(
        &mut self,
        client: &SpiClient<'_>,
        stream_id: i32,
        first: i64,
        last: i64,
        chunk: i64,
    ) {
        self.routes(client, stream_id, first, last);
        if self.routers.get(&stream_id).is_none_or(|(router, _)| router.is_empty()) {
            return;
        }
        let mut after = first - 1;
        while after < last {
            let until = last.min(after.saturating_add(chunk));
            let mut rows = MOVED_EVENTS.run(client, &[arg(stream_id), arg(after), arg(until)]);
            let events: Vec<MovedEvent> = rows
                .by_ref()
                .filter_map(|row| {
                    Some(MovedEvent {
                        seq: column(&row, 1)?,
                        subject: column(&row, 2)?,
                        key: column(&row, 3),
                        deliver_at: column(&row, 4),
                        published_at: column(&row, 5),
                    })
                })
                .collect();
            // A drain over a large backlog must not keep every chunk until it ends.
            rows.free();
            after = until;
            if !events.is_empty() {
                self.chunk(client, stream_id, events);
            }
        }
    }

    fn chunk(&mut self, client: &SpiClient<'_>, stream_id: i32, events: Vec<MovedEvent>) {
        let Some((router, routes)) = self.routers.get(&stream_id) else { return };
        let mut consumer = Vec::new();
        let mut seq = Vec::new();
        let mut key = Vec::new();
        let mut deliver_at = Vec::new();
        // The first task of each key in this chunk claims the key. Every chunk claims anew:
        // a key its earlier chunks left without a head (a sequence held their tasks back)
        // is settled again once this chunk's tasks are in, which may have brought the one
        // it waits for.
        let mut claims: Vec<(i32, String, i64)> = Vec::new();
        let mut keys_seen: HashSet<(i32, String)> = HashSet::new();
        let mut hits = Vec::new();
        for event in &events {
            hits.clear();
            router.route(&event.subject, &mut hits);
            for &hit in &hits {
                let route = &routes[hit];
                if let (Some(start), Some(published)) = (route.start_at, event.published_at) {
                    if published < start {
                        continue;
                    }
                }
                *self.received.entry(route.name.clone()).or_default() += 1;
                if route.mode != Mode::Task {
                    continue;
                }
                let task_key = if route.keyed { event.key.clone() } else { None };
                if let Some(k) = &task_key {
                    if keys_seen.insert((route.consumer_id, k.clone())) {
                        claims.push((route.consumer_id, k.clone(), event.seq));
                    }
                }
                consumer.push(route.consumer_id);
                seq.push(event.seq);
                key.push(task_key);
                deliver_at.push(event.deliver_at);
            }
        }
        if consumer.is_empty() {
            return;
        }
        self.created += consumer.len() as i64;
        let claimed = keys::claim(client, &mut claims);
        let heads_key: Vec<bool> =
            consumer.iter().zip(&seq).map(|(c, s)| claimed.heads.contains(&(*c, *s))).collect();
        let args = vec![arg(consumer), arg(seq), arg(key), arg(deliver_at), arg(heads_key)];
        INSERT_TASKS.run(client, &args);
        release(args);
        keys::settle_held(client, claimed.to_settle);
    }
}
