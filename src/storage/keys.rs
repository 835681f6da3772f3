//! Key ordering: among the unfinished tasks of one (consumer, key), one is in flight (the
//! key's head, in `key_heads`) and the others wait, to go one at a time in `seq` order.
//!
//! Two parties touch a key's row: the drain, which adds tasks to the key, and whoever
//! finishes its head (an ack, a discard, a retry that gives up, lease expiry, retention).
//! Each must see the other's work, or a task waits forever. The finisher locks the row
//! (FOR UPDATE) before it looks for the next waiting task, in a statement of its own, so
//! it sees every task of a drain that held the row before it; the drain locks the rows it
//! claims until it commits. So far a classic lock hand-over.
//!
//! But the drain must never wait for a worker's transaction: a worker that acks inside a
//! long transaction would otherwise hold up delivery for everyone. So the drain takes the
//! rows with SKIP LOCKED. A row it cannot lock belongs to a head being finished right now;
//! its new tasks wait, and the key goes into `key_rechecks`. The next drain (a few
//! milliseconds later with the worker) locks it again, now that the finisher is done, and
//! settles it: if the head is no longer in flight, the oldest waiting task takes over.
//! Background passes (lease rescue, retention) finish heads the same way, skipping busy
//! rows and leaving a recheck. A user's own ack or discard waits for the row, as any row
//! lock would make it wait; it only ever waits for a drain (which is short) or for another
//! transaction that is finishing the same key.
//!
//! A new task takes an idle key (no head) only when nothing of the key waits: a key can be
//! idle with tasks waiting while a recheck is pending, and the oldest waiting task must go
//! first. Settling promotes a waiting task first and only then names it the head, so a
//! task that vanished meanwhile (retention) never becomes a head; the key is settled again.
//!
//! Rows of idle keys keep `head_seq = NULL` instead of being deleted, so that a drain never
//! has to insert a key a finisher is deleting (an insert would wait on it); cleanup removes
//! idle rows under the drain lock. `key_rechecks` has no unique key for the same reason.

use super::{arg, column, release, Statement, BIGINT, BIGINT_ARRAY, INT, INT_ARRAY, TEXT_ARRAY};
use pgrx::spi::SpiClient;
use std::collections::{BTreeMap, HashSet};

/// Whether to wait for a key row another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Wait: the caller is a user's own call (ack, discard, redrive, alter).
    Wait,
    /// Leave the key for a recheck: the caller is the drain or a background pass.
    Recheck,
}

// The drain's claims: the first new task of each (consumer, key) in this drain. Of the
// rows it can lock, those of idle keys with nothing waiting are taken by the claim's task
// (if its consumer's sequence lets it go: otherwise it waits, and the key is settled);
// the others (idle with tasks waiting, or a head no longer in flight) are returned to be
// settled once the new tasks are in. A busy row gets a recheck; a missing row is created
// with the claim's task as head (if a concurrent insert beat it, a recheck).
// Each claim's readiness is joined, never looked up per row in `ready`: a lookup is a scan
// of all the claims, and 10k new keys in one drain took 10 s. The plan is held to indexes:
// whether a head is still in flight is a lookup by primary key, not a pass over every
// unfinished task of every consumer.
static CLAIM: Statement = Statement::indexed(
    "WITH wanted AS (
         SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[]) AS w(consumer_id, order_key, seq)
     ), present AS (
         SELECT h.consumer_id, h.order_key
         FROM eventq_internal.key_heads h
         JOIN wanted w ON w.consumer_id = h.consumer_id AND w.order_key = h.order_key
     ), locked AS (
         SELECT h.consumer_id, h.order_key, h.head_seq
         FROM eventq_internal.key_heads h
         WHERE (h.consumer_id, h.order_key) IN (SELECT consumer_id, order_key FROM present)
         ORDER BY h.consumer_id, h.order_key
         FOR UPDATE OF h SKIP LOCKED
     ), ready AS (
         -- each claim, and whether its task may go now as far as its consumer's sequence
         -- goes, for a key that has finished `done` of it (none, for a key without a row)
         SELECT w.consumer_id, w.order_key, w.seq,
                c.sequence IS NULL
                  OR eventq_internal.sequence_ready(c.sequence,
                         coalesce((SELECT h.sequence_done FROM eventq_internal.key_heads h
                                   WHERE h.consumer_id = w.consumer_id AND h.order_key = w.order_key), 0),
                         (SELECT e.subject FROM eventq_internal.events e
                          WHERE e.stream_id = c.stream_id AND e.seq = w.seq)) AS ok
         FROM wanted w JOIN eventq_internal.consumers c ON c.id = w.consumer_id
     ), judged AS (
         SELECT l.consumer_id, l.order_key, r.seq,
                l.head_seq IS NULL
                  AND NOT EXISTS (SELECT 1 FROM eventq_internal.tasks t
                                  WHERE t.consumer_id = l.consumer_id AND t.order_key = l.order_key
                                    AND t.state = 'waiting')
                  AND r.ok AS free,
                l.head_seq IS NULL
                  OR NOT EXISTS (SELECT 1 FROM eventq_internal.tasks t
                                 WHERE t.consumer_id = l.consumer_id AND t.seq = l.head_seq
                                   AND t.state IN ('available', 'scheduled', 'running', 'retryable'))
                  AS stale
         FROM locked l
         JOIN ready r ON r.consumer_id = l.consumer_id AND r.order_key = l.order_key
     ), claimed AS (
         UPDATE eventq_internal.key_heads h SET head_seq = j.seq, blocked_until = NULL
         FROM judged j
         WHERE j.free AND h.consumer_id = j.consumer_id AND h.order_key = j.order_key
         RETURNING h.consumer_id, h.order_key, h.head_seq
     ), inserted AS (
         INSERT INTO eventq_internal.key_heads (consumer_id, order_key, head_seq)
         SELECT r.consumer_id, r.order_key, CASE WHEN r.ok THEN r.seq END
         FROM ready r
         WHERE NOT EXISTS (SELECT 1 FROM present p
                           WHERE p.consumer_id = r.consumer_id AND p.order_key = r.order_key)
         ORDER BY 1, 2
         ON CONFLICT DO NOTHING
         RETURNING consumer_id, order_key, head_seq
     ), busy AS (
         INSERT INTO eventq_internal.key_rechecks (consumer_id, order_key)
         SELECT p.consumer_id, p.order_key FROM present p
         WHERE NOT EXISTS (SELECT 1 FROM locked l
                           WHERE l.consumer_id = p.consumer_id AND l.order_key = p.order_key)
         UNION ALL
         SELECT w.consumer_id, w.order_key FROM wanted w
         WHERE NOT EXISTS (SELECT 1 FROM present p
                           WHERE p.consumer_id = w.consumer_id AND p.order_key = w.order_key)
           AND NOT EXISTS (SELECT 1 FROM inserted i
                           WHERE i.consumer_id = w.consumer_id AND i.order_key = w.order_key)
     )
     SELECT consumer_id, order_key, head_seq, true FROM claimed
     UNION ALL
     SELECT consumer_id, order_key, head_seq, true FROM inserted WHERE head_seq IS NOT NULL
     UNION ALL
     SELECT consumer_id, order_key, seq, false FROM judged WHERE NOT free AND stale
     UNION ALL
     SELECT i.consumer_id, i.order_key, w.seq, false FROM inserted i
     JOIN wanted w ON w.consumer_id = i.consumer_id AND w.order_key = i.order_key
     WHERE i.head_seq IS NULL",
    &[INT_ARRAY, TEXT_ARRAY, BIGINT_ARRAY],
);

/// What the drain's claims came to.
#[derive(Default)]
pub struct Claimed {
    /// `(consumer, seq)` of the new tasks that head their key.
    pub heads: HashSet<(i32, i64)>,
    /// Keys the drain holds whose head is not in flight although tasks wait: to be settled
    /// once the new tasks are in (`settle_held`).
    pub to_settle: Vec<(i32, String)>,
}

/// The drain's claims, `(consumer, key, seq)` of the first new task of each key.
pub fn claim(client: &SpiClient<'_>, claims: &mut [(i32, String, i64)]) -> Claimed {
    let mut result = Claimed::default();
    if claims.is_empty() {
        return result;
    }
    claims.sort();
    let consumers: Vec<i32> = claims.iter().map(|c| c.0).collect();
    let keys: Vec<String> = claims.iter().map(|c| c.1.clone()).collect();
    let seqs: Vec<i64> = claims.iter().map(|c| c.2).collect();
    let args = vec![arg(consumers), arg(keys), arg(seqs)];
    let mut rows = CLAIM.run(client, &args);
    for row in rows.by_ref() {
        let (Some(consumer), Some(key), Some(seq), Some(heads)) = (
            column::<i32>(&row, 1),
            column::<String>(&row, 2),
            column::<i64>(&row, 3),
            column::<bool>(&row, 4),
        ) else {
            continue;
        };
        if heads {
            result.heads.insert((consumer, seq));
        } else {
            result.to_settle.push((consumer, key));
        }
    }
    rows.free();
    release(args);
    result
}

/// Settles keys whose rows this transaction already holds (see `Claimed::to_settle`).
pub fn settle_held(client: &SpiClient<'_>, keys: Vec<(i32, String)>) {
    let mut by_consumer: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (consumer, key) in keys {
        by_consumer.entry(consumer).or_default().push(key);
    }
    for (consumer, keys) in by_consumer {
        settle(client, consumer, keys);
    }
}

// Rows of keys whose head is one of the given (just finished) tasks, locked in key order.
static LOCK_FINISHED: Statement = Statement::new(
    "SELECT h.order_key
     FROM eventq_internal.key_heads h
     JOIN unnest($2::text[], $3::bigint[]) AS f(order_key, seq)
       ON h.order_key = f.order_key AND h.head_seq = f.seq
     WHERE h.consumer_id = $1
     ORDER BY h.order_key
     FOR UPDATE OF h",
    &[INT, TEXT_ARRAY, BIGINT_ARRAY],
);

static LOCK_FINISHED_OR_RECHECK: Statement = Statement::new(
    "WITH present AS (
         SELECT h.order_key
         FROM eventq_internal.key_heads h
         JOIN unnest($2::text[], $3::bigint[]) AS f(order_key, seq)
           ON h.order_key = f.order_key AND h.head_seq = f.seq
         WHERE h.consumer_id = $1
     ), locked AS (
         SELECT h.order_key FROM eventq_internal.key_heads h
         WHERE h.consumer_id = $1 AND h.order_key IN (SELECT order_key FROM present)
         ORDER BY h.order_key
         FOR UPDATE OF h SKIP LOCKED
     ), busy AS (
         INSERT INTO eventq_internal.key_rechecks (consumer_id, order_key)
         SELECT $1, order_key FROM present
         WHERE order_key NOT IN (SELECT order_key FROM locked)
     )
     SELECT order_key FROM locked",
    &[INT, TEXT_ARRAY, BIGINT_ARRAY],
);

// Rows for keys that have none yet (idle, head NULL), so that they can be locked. Keys
// with a row are left out before the insert: its unique check would otherwise wait for a
// transaction that is updating the row.
static ENSURE_ROWS: Statement = Statement::new(
    "INSERT INTO eventq_internal.key_heads (consumer_id, order_key, head_seq)
     SELECT $1, k, NULL FROM unnest($2::text[]) AS k
     WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.key_heads h
                       WHERE h.consumer_id = $1 AND h.order_key = k)
     ORDER BY k
     ON CONFLICT DO NOTHING",
    &[INT, TEXT_ARRAY],
);

static LOCK_KEYS: Statement = Statement::new(
    "SELECT order_key FROM eventq_internal.key_heads
     WHERE consumer_id = $1 AND order_key = ANY ($2)
     ORDER BY order_key
     FOR UPDATE",
    &[INT, TEXT_ARRAY],
);

static LOCK_KEYS_OR_SKIP: Statement = Statement::new(
    "SELECT order_key FROM eventq_internal.key_heads
     WHERE consumer_id = $1 AND order_key = ANY ($2)
     ORDER BY order_key
     FOR UPDATE SKIP LOCKED",
    &[INT, TEXT_ARRAY],
);

static LOCK_KEYS_OR_RECHECK: Statement = Statement::new(
    "WITH locked AS (
         SELECT order_key FROM eventq_internal.key_heads
         WHERE consumer_id = $1 AND order_key = ANY ($2)
         ORDER BY order_key
         FOR UPDATE SKIP LOCKED
     ), busy AS (
         INSERT INTO eventq_internal.key_rechecks (consumer_id, order_key)
         SELECT $1, k FROM unnest($2::text[]) AS k
         WHERE k NOT IN (SELECT order_key FROM locked)
     )
     SELECT order_key FROM locked",
    &[INT, TEXT_ARRAY],
);

// Keys (locked by the caller) whose head is no longer in flight get their oldest waiting
// task as head, or none. Runs as its own statement after the rows were locked, so that its
// snapshot includes every task added by whoever held them before. The task is promoted
// first and the head named from what was promoted: a task deleted meanwhile (retention)
// never becomes a head. Returns the keys left without a head although tasks still wait
// (their first candidate vanished): the caller settles them again.
static SETTLE: Statement = Statement::new(
    "WITH heads AS (
         SELECT h.order_key, h.head_seq FROM eventq_internal.key_heads h
         WHERE h.consumer_id = $1 AND h.order_key = ANY ($2)
     ), stale AS (
         SELECT hd.order_key FROM heads hd
         WHERE hd.head_seq IS NULL
            OR NOT EXISTS (SELECT 1 FROM eventq_internal.tasks t
                           WHERE t.consumer_id = $1 AND t.seq = hd.head_seq
                             AND t.state IN ('available', 'scheduled', 'running', 'retryable'))
     ), next AS (
         SELECT DISTINCT ON (t.order_key) t.order_key, t.seq
         FROM eventq_internal.tasks t
         WHERE t.consumer_id = $1 AND t.state = 'waiting'
           AND t.order_key IN (SELECT order_key FROM stale)
         ORDER BY t.order_key, t.seq
     ), promoted AS (
         UPDATE eventq_internal.tasks t
         SET state = CASE WHEN t.run_at > pg_catalog.now() THEN 'scheduled' ELSE 'available' END
                     ::eventq_internal.task_state
         FROM next n
         WHERE t.consumer_id = $1 AND t.seq = n.seq AND t.state = 'waiting'
         RETURNING t.order_key, t.seq
     ), named AS (
         UPDATE eventq_internal.key_heads h SET head_seq = p.seq
         FROM stale s LEFT JOIN promoted p ON p.order_key = s.order_key
         WHERE h.consumer_id = $1 AND h.order_key = s.order_key
     )
     SELECT n.order_key FROM next n
     WHERE NOT EXISTS (SELECT 1 FROM promoted p WHERE p.order_key = n.order_key)",
    &[INT, TEXT_ARRAY],
);

// SETTLE for a consumer with a sequence. The head that finished adds its subject to the
// key's finished ones; the next head is the oldest waiting task that its sequence lets go,
// or that has waited `sequence_timeout` (released: the task says so in `last_error`). A key
// whose waiting tasks all wait for their sequence keeps no head, and with a timeout, the
// time the oldest of them is released (`blocked_until`, see `release_timed_out`). Only
// the waiting tasks of the keys being settled are read.
static SETTLE_SEQUENCED: Statement = Statement::new(
    "WITH cfg AS (
         SELECT c.stream_id, c.sequence, c.sequence_timeout
         FROM eventq_internal.consumers c WHERE c.id = $1
     ), heads AS (
         SELECT h.order_key, h.head_seq, h.sequence_done FROM eventq_internal.key_heads h
         WHERE h.consumer_id = $1 AND h.order_key = ANY ($2)
     ), stale AS (
         SELECT hd.order_key,
                hd.sequence_done
                  | coalesce((SELECT eventq_internal.sequence_bit(cfg.sequence, e.subject)
                              FROM eventq_internal.tasks t
                              JOIN eventq_internal.events e
                                ON e.stream_id = cfg.stream_id AND e.seq = t.seq
                              WHERE t.consumer_id = $1 AND t.seq = hd.head_seq
                                AND t.state IN ('completed', 'discarded')), 0) AS done
         FROM heads hd CROSS JOIN cfg
         WHERE hd.head_seq IS NULL
            OR NOT EXISTS (SELECT 1 FROM eventq_internal.tasks t
                           WHERE t.consumer_id = $1 AND t.seq = hd.head_seq
                             AND t.state IN ('available', 'scheduled', 'running', 'retryable'))
     ), next AS (
         SELECT DISTINCT ON (t.order_key) t.order_key, t.seq,
                NOT eventq_internal.sequence_ready(cfg.sequence, s.done, e.subject) AS released
         FROM stale s
         CROSS JOIN cfg
         JOIN eventq_internal.tasks t
           ON t.consumer_id = $1 AND t.order_key = s.order_key AND t.state = 'waiting'
         LEFT JOIN eventq_internal.events e ON e.stream_id = cfg.stream_id AND e.seq = t.seq
         WHERE eventq_internal.sequence_ready(cfg.sequence, s.done, e.subject)
            OR t.created_at <= pg_catalog.now() - cfg.sequence_timeout
         ORDER BY t.order_key, t.seq
     ), promoted AS (
         UPDATE eventq_internal.tasks t
         SET state = CASE WHEN t.run_at > pg_catalog.now() THEN 'scheduled' ELSE 'available' END
                     ::eventq_internal.task_state,
             last_error = CASE WHEN n.released THEN 'released by sequence_timeout'
                               ELSE t.last_error END
         FROM next n
         WHERE t.consumer_id = $1 AND t.seq = n.seq AND t.state = 'waiting'
         RETURNING t.order_key, t.seq
     ), named AS (
         UPDATE eventq_internal.key_heads h
         SET head_seq = p.seq,
             sequence_done = s.done,
             blocked_until = CASE WHEN p.seq IS NULL THEN
                                 (SELECT pg_catalog.min(t.created_at) FROM eventq_internal.tasks t
                                  WHERE t.consumer_id = $1 AND t.order_key = s.order_key
                                    AND t.state = 'waiting') + cfg.sequence_timeout
                             END
         FROM stale s CROSS JOIN cfg LEFT JOIN promoted p ON p.order_key = s.order_key
         WHERE h.consumer_id = $1 AND h.order_key = s.order_key
     )
     SELECT n.order_key FROM next n
     WHERE NOT EXISTS (SELECT 1 FROM promoted p WHERE p.order_key = n.order_key)",
    &[INT, TEXT_ARRAY],
);

static SEQUENCED: Statement = Statement::new(
    "SELECT sequence IS NOT NULL FROM eventq_internal.consumers WHERE id = $1",
    &[INT],
);

/// Settles keys whose rows the caller holds.
fn settle(client: &SpiClient<'_>, consumer_id: i32, mut locked: Vec<String>) {
    if locked.is_empty() {
        return;
    }
    // A waiting task made available may lie below where pulls start.
    crate::pull_start::released(consumer_id);
    let sequenced = super::scalar::<bool>(&SEQUENCED, client, &[arg(consumer_id)]).unwrap_or(false);
    let statement = if sequenced { &SETTLE_SEQUENCED } else { &SETTLE };
    // Each round promotes a waiting task or finds it gone; rounds end when none vanished.
    for _ in 0..1000 {
        if locked.is_empty() {
            break;
        }
        locked = statement
            .run(client, &[arg(consumer_id), arg(locked)])
            .filter_map(|row| column(&row, 1))
            .collect();
    }
}

// Keys whose waiting tasks all wait for the sequence and the oldest has waited its
// `sequence_timeout`: locked (skipping busy ones) to be settled, which releases it.
static TIMED_OUT: Statement = Statement::new(
    "SELECT order_key FROM eventq_internal.key_heads
     WHERE consumer_id = $1 AND blocked_until <= pg_catalog.now()
     ORDER BY order_key LIMIT 1000
     FOR UPDATE SKIP LOCKED",
    &[INT],
);

/// Releases tasks that have waited their consumer's `sequence_timeout` (before pulls, and
/// in every maintenance pass). Returns how many keys it settled.
pub fn release_timed_out(client: &SpiClient<'_>, consumer_id: i32) -> usize {
    let keys: Vec<String> =
        TIMED_OUT.run(client, &[arg(consumer_id)]).filter_map(|row| column(&row, 1)).collect();
    let n = keys.len();
    settle(client, consumer_id, keys);
    n
}

static LOCK_ALL_KEYS: Statement = Statement::new(
    "SELECT order_key FROM eventq_internal.key_heads WHERE consumer_id = $1
     ORDER BY order_key FOR UPDATE",
    &[INT],
);

// A new sequence ($2 the old one). What each key had finished moves to its subjects' new
// places, together with the finished tasks still kept (a key's finished tasks may be long
// cleaned up: its bits are the only memory of them). Runs after the rows were locked, in a
// statement of its own, so that it sees every finisher that held them.
static RESEQUENCE: Statement = Statement::new(
    "WITH cfg AS (
         SELECT c.stream_id, c.sequence FROM eventq_internal.consumers c WHERE c.id = $1
     )
     UPDATE eventq_internal.key_heads h
     SET sequence_done =
             coalesce((SELECT pg_catalog.bit_or(eventq_internal.sequence_bit(cfg.sequence, o.subject))
                       FROM pg_catalog.unnest($2::text[]) WITH ORDINALITY AS o(subject, i)
                       WHERE h.sequence_done & (1::bigint << (o.i::int - 1)) <> 0), 0)
           | coalesce((SELECT pg_catalog.bit_or(eventq_internal.sequence_bit(cfg.sequence, e.subject))
                       FROM eventq_internal.tasks t
                       JOIN eventq_internal.events e ON e.stream_id = cfg.stream_id AND e.seq = t.seq
                       WHERE t.consumer_id = $1 AND t.order_key = h.order_key
                         AND t.state IN ('completed', 'discarded')), 0)
     FROM cfg
     WHERE h.consumer_id = $1",
    &[INT, TEXT_ARRAY],
);

// Heads not yet leased that the (new) sequence holds back go back to waiting; and every
// key with tasks waiting and no head in flight is returned, to be settled under the new
// order (which also sets or clears when its oldest task is released).
static REHEAD: Statement = Statement::new(
    "WITH cfg AS (
         SELECT c.stream_id, c.sequence FROM eventq_internal.consumers c WHERE c.id = $1
     ), held_back AS (
         UPDATE eventq_internal.tasks t SET state = 'waiting'
         FROM eventq_internal.key_heads h, cfg, eventq_internal.events e
         WHERE h.consumer_id = $1 AND t.consumer_id = $1 AND t.seq = h.head_seq
           AND t.state IN ('available', 'scheduled')
           AND e.stream_id = cfg.stream_id AND e.seq = t.seq
           AND NOT eventq_internal.sequence_ready(cfg.sequence, h.sequence_done, e.subject)
         RETURNING t.order_key
     ), unheaded AS (
         UPDATE eventq_internal.key_heads h SET head_seq = NULL
         WHERE h.consumer_id = $1 AND h.order_key IN (SELECT order_key FROM held_back)
     )
     SELECT order_key FROM held_back
     UNION
     SELECT DISTINCT order_key FROM eventq_internal.tasks
     WHERE consumer_id = $1 AND state = 'waiting'",
    &[INT],
);

/// After the consumer's sequence or its timeout changed (`old`: the sequence before, if
/// it changed); the caller holds the consumer's lock.
pub fn resequence(client: &SpiClient<'_>, consumer_id: i32, old: Option<Option<Vec<String>>>) {
    LOCK_ALL_KEYS.run(client, &[arg(consumer_id)]).for_each(drop);
    if let Some(old) = old {
        RESEQUENCE.run(client, &[arg(consumer_id), arg(old.unwrap_or_default())]);
    }
    let keys: Vec<String> =
        REHEAD.run(client, &[arg(consumer_id)]).filter_map(|row| column(&row, 1)).collect();
    settle_keys(client, consumer_id, keys, Busy::Wait);
}

/// Heads of a consumer finished: `(key, seq)` of each. Hands every such key to its next
/// waiting task.
pub fn advance(client: &SpiClient<'_>, consumer_id: i32, finished: Vec<(String, i64)>, busy: Busy) {
    if finished.is_empty() {
        return;
    }
    let (keys, seqs): (Vec<String>, Vec<i64>) = finished.into_iter().unzip();
    let statement = match busy {
        Busy::Wait => &LOCK_FINISHED,
        Busy::Recheck => &LOCK_FINISHED_OR_RECHECK,
    };
    let locked: Vec<String> = statement
        .run(client, &[arg(consumer_id), arg(keys), arg(seqs)])
        .filter_map(|row| column(&row, 1))
        .collect();
    settle(client, consumer_id, locked);
}

/// Like `advance`, for heads of several consumers: `(consumer, key, seq)`.
pub fn advance_all(client: &SpiClient<'_>, finished: Vec<(i32, String, i64)>, busy: Busy) {
    let mut by_consumer: BTreeMap<i32, Vec<(String, i64)>> = BTreeMap::new();
    for (consumer, key, seq) in finished {
        by_consumer.entry(consumer).or_default().push((key, seq));
    }
    for (consumer, heads) in by_consumer {
        advance(client, consumer, heads, busy);
    }
}

/// Makes sure each of `keys` has a head if it has waiting tasks and nothing in flight.
/// Returns the keys it could settle; with `Busy::Recheck`, busy ones are left for a recheck.
pub fn settle_keys(
    client: &SpiClient<'_>,
    consumer_id: i32,
    keys: Vec<String>,
    busy: Busy,
) -> Vec<String> {
    if keys.is_empty() {
        return keys;
    }
    ENSURE_ROWS.run(client, &[arg(consumer_id), arg(keys.clone())]);
    let statement = match busy {
        Busy::Wait => &LOCK_KEYS,
        Busy::Recheck => &LOCK_KEYS_OR_RECHECK,
    };
    let locked: Vec<String> = statement
        .run(client, &[arg(consumer_id), arg(keys)])
        .filter_map(|row| column(&row, 1))
        .collect();
    settle(client, consumer_id, locked.clone());
    locked
}

// Rechecks of consumers that are gone or no longer ordered by key need nothing.
static RECHECKS: Statement = Statement::new(
    "WITH moot AS (
         DELETE FROM eventq_internal.key_rechecks r
         WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.consumers c
                           WHERE c.id = r.consumer_id AND c.ordering = 'key')
     )
     SELECT DISTINCT r.consumer_id, r.order_key FROM eventq_internal.key_rechecks r
     JOIN eventq_internal.consumers c ON c.id = r.consumer_id AND c.ordering = 'key'
     ORDER BY 1, 2 LIMIT $1",
    &[BIGINT],
);

static RECHECKS_OF: Statement = Statement::new(
    "SELECT DISTINCT order_key FROM eventq_internal.key_rechecks WHERE consumer_id = $1
     ORDER BY order_key LIMIT 1000",
    &[INT],
);

static RECHECKED: Statement = Statement::new(
    "DELETE FROM eventq_internal.key_rechecks WHERE consumer_id = $1 AND order_key = ANY ($2)",
    &[INT, TEXT_ARRAY],
);

/// Settles the keys of one consumer left for a recheck; the caller holds the consumer's
/// lock (shared), so that no change of the consumer is under way. Returns how many.
pub fn recheck_for(client: &SpiClient<'_>, consumer_id: i32) -> i64 {
    let keys: Vec<String> =
        RECHECKS_OF.run(client, &[arg(consumer_id)]).filter_map(|r| column(&r, 1)).collect();
    recheck_keys(client, consumer_id, keys)
}

fn recheck_keys(client: &SpiClient<'_>, consumer_id: i32, keys: Vec<String>) -> i64 {
    if keys.is_empty() {
        return 0;
    }
    let done = settle_keys(client, consumer_id, keys, Busy::Recheck);
    if !done.is_empty() {
        RECHECKED.run(client, &[arg(consumer_id), arg(done.clone())]);
    }
    done.len() as i64
}

/// Settles keys left for a recheck, of every consumer whose lock (shared) can be had at
/// once. Keys still busy stay for the next time. Returns how many were settled.
pub fn recheck(client: &SpiClient<'_>, limit: i64) -> i64 {
    let mut by_consumer: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for row in RECHECKS.run(client, &[arg(limit)]) {
        if let (Some(consumer), Some(key)) = (column::<i32>(&row, 1), column::<String>(&row, 2)) {
            by_consumer.entry(consumer).or_default().push(key);
        }
    }
    let mut settled = 0;
    for (consumer, keys) in by_consumer {
        if super::locks::try_lock_consumer(consumer, super::locks::Mode::Shared) {
            settled += recheck_keys(client, consumer, keys);
        }
    }
    settled
}

/// Settles a consumer's keys left for a recheck from inside a worker's own transaction
/// (before it pulls), so that a key never waits for the next drain. It only settles rows it
/// can lock at once and writes nothing else: a recheck row or a new key row that a
/// worker's long transaction held would make a drain wait for it. Drains and background
/// passes remove the rechecks.
pub fn settle_rechecked(client: &SpiClient<'_>, consumer_id: i32) {
    let keys: Vec<String> =
        RECHECKS_OF.run(client, &[arg(consumer_id)]).filter_map(|r| column(&r, 1)).collect();
    if keys.is_empty() {
        return;
    }
    let locked: Vec<String> = LOCK_KEYS_OR_SKIP
        .run(client, &[arg(consumer_id), arg(keys)])
        .filter_map(|row| column(&row, 1))
        .collect();
    settle(client, consumer_id, locked);
}
