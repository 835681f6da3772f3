//! Task consumers: pull, ack, retry, discard, extend_lease, redrive.

use super::{consumer_for, non_negative_micros, required};
use crate::core::backoff::Backoff;
use crate::core::settings::KeyOrdering;
use crate::core::settings::{batch_size, Mode};
use crate::datum::Jsonb;
use crate::error::OrRaise;
use crate::storage::isolation::retrying;
use crate::storage::maintenance::RESCUE_LIMIT;
use crate::storage::tasks::{self, Outcome};
use crate::storage::{consumers, keys, locks};
use pgrx::datum::{Interval, TimestampWithTimeZone, Uuid};
use pgrx::prelude::*;

const MAX_PULL: i32 = 10_000;

/// Leases up to `max` due tasks, oldest first. Concurrent pullers never get the same task.
/// The lease defaults to the consumer's; an expired lease makes the task due again.
// pgrx needs the row type written out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn pull(
    consumer: Option<&str>,
    max: default!(Option<i32>, 1),
    lease: default!(Option<Interval>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(task_id, i64),
        name!(event_id, Uuid),
        name!(seq, i64),
        name!(subject, String),
        name!(key, Option<String>),
        name!(payload, Jsonb),
        name!(headers, Option<Jsonb>),
        name!(attempt, i32),
        name!(published_at, TimestampWithTimeZone),
    ),
> {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let max = batch_size("max", max.unwrap_or(1), MAX_PULL).or_raise();
    let lease = super::duration_micros(lease, "lease");
    let nested = super::called_from_a_function();
    let leased = retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "pull");
            if c.paused {
                return Vec::new();
            }
            super::drain_before_reading(client, c.id, nested);
            // Expired leases and due retries of this consumer; skipped while the consumer
            // is being changed (its lock is held), and never waiting for anyone.
            if locks::try_lock_consumer(c.id, locks::Mode::Shared) {
                tasks::rescue_and_promote(
                    client,
                    c.id,
                    c.stream_id,
                    c.policy.max_attempts,
                    RESCUE_LIMIT,
                );
                if c.ordering == KeyOrdering::Key {
                    keys::settle_rechecked(client, c.id);
                    if c.sequence.is_some() {
                        keys::release_timed_out(client, c.id);
                    }
                }
            }
            tasks::lease(client, c.id, c.stream_id, max, lease.unwrap_or(c.policy.lease))
        })
    });
    TableIterator::new(leased.into_iter().map(|t| {
        (
            t.seq,
            t.event_id,
            t.seq,
            t.subject,
            t.key,
            t.payload,
            t.headers,
            t.attempt,
            t.published_at,
        )
    }))
}

/// running -> completed. Returns how many tasks changed; ids of tasks that are not running
/// (any more) are not counted. `attempts`, parallel to `task_ids`, is the lease guard: a
/// task is completed only while it still runs the attempt its worker pulled.
#[pg_extern(name = "ack")]
fn ack_with_attempts(
    consumer: Option<&str>,
    task_ids: Option<Vec<Option<i64>>>,
    attempts: default!(Option<Vec<Option<i32>>>, "NULL"),
) -> i32 {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let ids = required(task_ids, "task_ids");
    if let Some(attempts) = &attempts {
        if attempts.len() != ids.len() {
            crate::error::invalid_argument(format!(
                "attempts must be parallel to task_ids: task_ids has {}, attempts has {}",
                ids.len(),
                attempts.len()
            ));
        }
    }
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "ack");
            if ids.iter().all(Option::is_none) {
                return 0;
            }
            tasks::ack(client, c.id, ids.clone(), attempts.clone())
        })
    })
}

/// The attempt failed. The task becomes `retryable` after `delay` (default: the consumer's
/// backoff), or `discarded` when it has used up max_attempts. Returns the new state, or
/// NULL if the task was not running.
#[pg_extern(name = "retry")]
fn retry_with_attempt(
    consumer: Option<&str>,
    task_id: Option<i64>,
    error: default!(Option<&str>, "NULL"),
    delay: default!(Option<Interval>, "NULL"),
    attempt: default!(Option<i32>, "NULL"),
) -> Option<String> {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let task_id = required(task_id, "task_id");
    let delay = non_negative_micros(delay, "delay");
    let guard = attempt;
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "retry");
            let attempt = tasks::running_attempt(client, c.id, task_id, guard)?;
            let policy = tasks::event_retry(client, c.stream_id, task_id).applied_to(&c.policy);
            let (outcome, state) = if attempt >= policy.max_attempts {
                (Outcome::FailAndDiscard, "discarded")
            } else {
                let backoff = Backoff {
                    kind: policy.backoff,
                    base_micros: policy.backoff_base,
                    max_micros: policy.backoff_max,
                };
                let delay_micros =
                    delay.unwrap_or_else(|| backoff.delay_micros(attempt, rand::random()));
                (Outcome::Retry { delay_micros }, "retryable")
            };
            tasks::end_attempt(client, c.id, task_id, outcome, error, Some(attempt))
                .then(|| state.to_string())
        })
    })
}

/// Ends the running attempt of a task with a worker's verdict (`discard`, `ignore`);
/// `false` if the task was not running (the attempt given).
fn end_running(
    call_name: &str,
    consumer: Option<&str>,
    task_id: Option<i64>,
    outcome: Outcome,
    reason: Option<&str>,
    attempt: Option<i32>,
) -> bool {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let task_id = required(task_id, "task_id");
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, call_name);
            tasks::end_attempt(client, c.id, task_id, outcome, reason, attempt)
        })
    })
}

/// running -> discarded. `false` if the task was not running (the attempt given).
#[pg_extern(name = "discard")]
fn discard_with_attempt(
    consumer: Option<&str>,
    task_id: Option<i64>,
    reason: default!(Option<&str>, "NULL"),
    attempt: default!(Option<i32>, "NULL"),
) -> bool {
    end_running("discard", consumer, task_id, Outcome::Discard, reason, attempt)
}

/// running -> completed, recorded in the task's history as `ignored`: the handler had
/// nothing to do. `false` if the task was not running (the attempt given).
#[pg_extern(name = "ignore")]
fn ignore(
    consumer: Option<&str>,
    task_id: Option<i64>,
    reason: default!(Option<&str>, "NULL"),
    attempt: default!(Option<i32>, "NULL"),
) -> bool {
    end_running("ignore", consumer, task_id, Outcome::Ignore, reason, attempt)
}

/// Keeps a running task leased for `lease` from now (NULL: the consumer's lease). Returns
/// the new expiry, or NULL if the task was not running.
#[pg_extern(name = "extend_lease")]
fn extend_lease_with_attempt(
    consumer: Option<&str>,
    task_id: Option<i64>,
    lease: default!(Option<Interval>, "NULL"),
    attempt: default!(Option<i32>, "NULL"),
) -> Option<TimestampWithTimeZone> {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let task_id = required(task_id, "task_id");
    let lease = super::duration_micros(lease, "lease");
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "extend_lease");
            tasks::extend_lease(client, c.id, task_id, lease.unwrap_or(c.policy.lease), attempt)
        })
    })
}

/// discarded -> available with a fresh attempt budget (NULL: every discarded task).
/// Returns how many tasks changed.
#[pg_extern]
fn redrive(consumer: Option<&str>, task_ids: default!(Option<Vec<Option<i64>>>, "NULL")) -> i32 {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let ids = task_ids.map(|ids| ids.into_iter().flatten().collect::<Vec<i64>>());
    let count = retrying(|| {
        Spi::connect(|client| {
            let seen = consumer_for(&call, client, name, Mode::Task, "redrive");
            // Keys may get rows again: drains must route around the consumer meanwhile.
            let c = consumers::find_for_change(client, name)
                .unwrap_or_else(|| crate::error::unknown_consumer(name));
            if c.id != seen.id {
                consumer_for(&call, client, name, Mode::Task, "redrive");
            }
            tasks::redrive(client, c.id, ids.clone())
        })
    });
    crate::wakeup::published_in_this_transaction();
    count
}

/// retryable -> available at once, for an operator who will not wait for the backoff
/// (NULL: every retryable task). Returns how many tasks changed.
#[pg_extern]
fn retry_now(consumer: Option<&str>, task_ids: default!(Option<Vec<Option<i64>>>, "NULL")) -> i32 {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let ids = task_ids.map(|ids| ids.into_iter().flatten().collect::<Vec<i64>>());
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "retry_now");
            tasks::retry_now(client, c.id, ids.clone())
        })
    })
}

/// available, scheduled, retryable or running -> discarded: an operator's verdict on tasks
/// not yet finished (waiting tasks are left to their key's head, running tasks with a key
/// to their workers). Returns how many changed.
#[pg_extern]
fn cancel(
    consumer: Option<&str>,
    task_ids: Option<Vec<Option<i64>>>,
    reason: default!(Option<&str>, "NULL"),
) -> i32 {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let ids: Vec<i64> = required(task_ids, "task_ids").into_iter().flatten().collect();
    let reason = reason.unwrap_or("cancelled");
    retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Task, "cancel");
            tasks::cancel(client, c.id, ids.clone(), reason)
        })
    })
}

// The entry points the SQL of version 0.1.0 calls, by these symbol names and with these
// arguments, for as long as a database still has that SQL installed: a call then reaches
// `check_installed_version`, which asks for ALTER EXTENSION eventq UPDATE. (The functions
// gained the lease guard's argument since; a C function called with fewer arguments than
// it reads would read past them.)

#[pg_extern(sql = false)]
fn ack(consumer: Option<&str>, task_ids: Option<Vec<Option<i64>>>) -> i32 {
    ack_with_attempts(consumer, task_ids, None)
}

#[pg_extern(sql = false)]
fn retry(
    consumer: Option<&str>,
    task_id: Option<i64>,
    error: Option<&str>,
    delay: Option<Interval>,
) -> Option<String> {
    retry_with_attempt(consumer, task_id, error, delay, None)
}

#[pg_extern(sql = false)]
fn discard(consumer: Option<&str>, task_id: Option<i64>, reason: Option<&str>) -> bool {
    discard_with_attempt(consumer, task_id, reason, None)
}

#[pg_extern(sql = false)]
fn extend_lease(
    consumer: Option<&str>,
    task_id: Option<i64>,
    lease: Option<Interval>,
) -> Option<TimestampWithTimeZone> {
    extend_lease_with_attempt(consumer, task_id, lease, None)
}
