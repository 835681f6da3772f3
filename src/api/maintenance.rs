//! run_maintenance, subject_matches.

use crate::core::subject;
use crate::error::OrRaise;
use crate::gucs;
use crate::storage::maintenance;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

/// One pass of everything the background worker does: drain committed events, rescue
/// expired leases, make due retries available, truncate idle staging, apply retention and
/// remove old finished tasks. Returns counts. Safe to call concurrently (with itself and
/// with the worker), e.g. from pg_cron.
#[pg_extern]
fn run_maintenance() -> JsonB {
    let pass = Spi::connect(|client| {
        maintenance::run(client, gucs::drain_batch_size(), gucs::keep_finished_tasks_seconds())
    });
    let drained = pass.drained.unwrap_or_default();
    JsonB(json!({
        "drained_events": drained.events,
        "created_tasks": drained.tasks,
        "drain_busy": pass.drained.is_none(),
        "lost_leases": pass.rescued.lost,
        "discarded_after_lost_lease": pass.rescued.discarded,
        "due_tasks": pass.rescued.promoted,
        "truncated_staging": drained.truncated,
        "expired_events": pass.cleaned.expired_events,
        "expired_tasks": pass.cleaned.expired_tasks,
        "removed_finished_tasks": pass.cleaned.removed_tasks,
    }))
}

/// Whether a NATS-style pattern (`*` one token, `>` one or more trailing tokens) matches a
/// subject.
#[pg_extern(immutable, parallel_safe)]
fn subject_matches(pattern: &str, subject: &str) -> bool {
    subject::subject_matches(pattern, subject).or_raise()
}
