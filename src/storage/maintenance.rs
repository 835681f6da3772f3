//! One maintenance pass: drain, lease rescue and due timers for every task consumer, and
//! truncation of staging slots nobody writes to any more.

use super::drain::{self, Drained};
use super::tasks::{self, Rescued};
use super::{arg, column, scalar, Statement, INT};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

static TASK_CONSUMERS: Statement = Statement::new(
    "SELECT id, max_attempts FROM eventq_internal.consumers WHERE mode = 'task' ORDER BY id",
    &[],
);

// Staging slots other than the current and the next one (see sql/schema.sql) that have
// pages to give back.
static IDLE_SLOTS: Statement = Statement::new(
    "SELECT s, format('eventq_internal.staged_%s', s)::regclass::oid
     FROM generate_series(0, 3) s
     WHERE s <> date_part('epoch', clock_timestamp())::bigint % 4
       AND s <> (date_part('epoch', clock_timestamp())::bigint + 1) % 4
       AND pg_relation_size(format('eventq_internal.staged_%s', s)::regclass) > 0",
    &[],
);

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

/// Rows of expired leases and due timers handled per consumer and pass.
pub const RESCUE_LIMIT: i64 = 10_000;

#[derive(Debug, Default)]
pub struct Pass {
    /// `None` when another session was draining.
    pub drained: Option<Drained>,
    pub rescued: Rescued,
    pub truncated: i64,
}

pub fn run(client: &SpiClient<'_>, batch_size: i64) -> Pass {
    let drained = drain::drain(client, batch_size);
    let mut rescued = Rescued::default();
    let consumers: Vec<(i32, i32)> = TASK_CONSUMERS
        .run(client, &[])
        .map(|row| (column(&row, 1).unwrap_or(0), column(&row, 2).unwrap_or(1)))
        .collect();
    for (id, max_attempts) in consumers {
        rescued += tasks::rescue_and_promote(client, id, max_attempts, RESCUE_LIMIT);
    }
    // Truncating needs the drain lock, which `drain` took unless someone else holds it.
    let truncated = if drained.is_some() && drain::try_lock(client) {
        truncate_idle_slots(client, batch_size)
    } else {
        0
    };
    Pass { drained, rescued, truncated }
}

/// A slot is truncated only while this transaction holds it exclusively: then no publisher
/// has an uncommitted row in it, and once the drain has moved every committed row, nothing
/// in it is needed. A slot that is busy is tried again on the next pass.
fn truncate_idle_slots(client: &SpiClient<'_>, batch_size: i64) -> i64 {
    let idle: Vec<(i32, pg_sys::Oid)> = IDLE_SLOTS
        .run(client, &[])
        .filter_map(|row| Some((column(&row, 1)?, column(&row, 2)?)))
        .collect();
    let mut truncated = 0;
    for (slot, relation) in idle {
        let locked = unsafe {
            // SAFETY: a plain conditional lock request on an existing relation; it is held
            // until the transaction ends.
            pg_sys::ConditionalLockRelationOid(relation, pg_sys::AccessExclusiveLock as i32)
        };
        if !locked {
            continue;
        }
        drain::drain(client, batch_size);
        if scalar::<bool>(&SLOT_IS_EMPTY, client, &[arg(slot)]).unwrap_or(false) {
            TRUNCATE[slot as usize].run(client, &[]);
            truncated += 1;
        }
    }
    truncated
}
