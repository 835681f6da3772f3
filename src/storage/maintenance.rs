//! Maintenance, in the parts the background worker runs on their own schedules:
//! - draining (storage::drain), whenever a publishing commit wakes the worker;
//! - `timers`: expired leases rescued and due tasks made available, for every task consumer;
//! - `cleanup`: retention, and removal of old finished tasks.
//!
//! `run` is all of it at once: what `run_maintenance()` does.

use super::drain::{self, Drained};
use super::retention::{self, Cleaned};
use super::tasks::{self, Rescued};
use super::{column, Statement};
use pgrx::spi::SpiClient;

static TASK_CONSUMERS: Statement = Statement::new(
    "SELECT id, max_attempts FROM eventq_internal.consumers WHERE mode = 'task' ORDER BY id",
    &[],
);

/// Rows of expired leases and due timers handled per consumer and pass.
pub const RESCUE_LIMIT: i64 = 10_000;

#[derive(Debug, Default)]
pub struct Pass {
    /// `None` when another session was draining.
    pub drained: Option<Drained>,
    pub rescued: Rescued,
    pub cleaned: Cleaned,
}

/// Everything, once: what `run_maintenance()` does.
pub fn run(client: &SpiClient<'_>, chunk: i64, keep_finished_seconds: i64) -> Pass {
    let drained = drain::drain(client, chunk);
    let rescued = timers(client);
    let mut cleaned = retention::expire(client);
    cleaned.removed_tasks = retention::remove_finished(client, keep_finished_seconds);
    Pass { drained, rescued, cleaned }
}

/// Expired leases and due timers of every task consumer.
pub fn timers(client: &SpiClient<'_>) -> Rescued {
    let mut rescued = Rescued::default();
    let consumers: Vec<(i32, i32)> = TASK_CONSUMERS
        .run(client, &[])
        .map(|row| (column(&row, 1).unwrap_or(0), column(&row, 2).unwrap_or(1)))
        .collect();
    for (id, max_attempts) in consumers {
        rescued += tasks::rescue_and_promote(client, id, max_attempts, RESCUE_LIMIT);
    }
    rescued
}
