//! The SQL API: thin `#[pg_extern]` functions, one file per part of the API. Each validates
//! its arguments (core), calls storage, and turns "not found" into the right error.

pub mod consumer;
pub mod log;
pub mod maintenance;
pub mod publish;
pub mod stream;
pub mod task;

use crate::core::settings::Mode;
use crate::error::{self, OrRaise};
use crate::storage::consumers::{self, Consumer};
use pgrx::datum::Interval;
use pgrx::spi::SpiClient;

/// A required argument; SQL NULL is refused with 22023.
pub fn required<T>(value: Option<T>, what: &str) -> T {
    value.unwrap_or_else(|| error::invalid_argument(format!("{what} must not be NULL")))
}

/// An interval in microseconds, months counted as 30 days (as Postgres does for epochs).
pub fn micros(interval: Interval) -> i64 {
    interval.as_micros().clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// An optional interval argument that must be positive (and at most 100 years), in
/// microseconds.
pub fn duration_micros(interval: Option<Interval>, what: &str) -> Option<i64> {
    interval.map(|i| {
        let us = micros(i);
        crate::core::settings::positive(what, us).or_raise();
        us
    })
}

/// An optional interval argument that must not be negative (and at most 100 years), in
/// microseconds.
pub fn non_negative_micros(interval: Option<Interval>, what: &str) -> Option<i64> {
    interval.map(|i| {
        let us = micros(i);
        crate::core::settings::not_negative(what, us).or_raise();
        us
    })
}

/// The named consumer, which must be in `mode` for `call`.
pub fn consumer_for(client: &SpiClient<'_>, name: &str, mode: Mode, call: &str) -> Consumer {
    let consumer = consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
    if consumer.mode != mode {
        error::wrong_mode(name, consumer.mode.as_str(), call, mode.as_str());
    }
    consumer
}

/// How long a reader waits for a drain that covers what committed before it started (the
/// worker's, or a helper's), before it reads what there is.
const READ_AFTER_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

static GAPS_PENDING: crate::storage::Statement = crate::storage::Statement::new(
    "SELECT EXISTS (SELECT 1 FROM eventq_internal.routing_gaps)",
    &[],
);

/// Read after commit: before `pull` and `fetch` read, every event that committed before
/// they started must be in the log. With shared memory (eventq preloaded) two counters
/// tell whether a drain has covered that already (see `wakeup`); if not, or without shared
/// memory, the reader drains by itself when its transaction is its own statement, or else
/// waits for the worker or starts a helper process that drains in a transaction of its
/// own: in a transaction block or a read-only transaction, where a drain would hold the
/// drain lock until the transaction ended (storage::drain), and in a SERIALIZABLE one,
/// where a drain's reads of staging would take part in serializable conflict detection and
/// could make publishers' own transactions fail. On a standby there is nothing to drain:
/// readers see what has been replicated.
pub fn drain_before_reading(client: &SpiClient<'_>) {
    use crate::storage::drain;
    use crate::wakeup;
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        return;
    }
    let own_transaction = unsafe {
        !pgrx::pg_sys::IsTransactionBlock()
            && !pgrx::pg_sys::XactReadOnly
            && pgrx::pg_sys::XactIsoLevel != pgrx::pg_sys::XACT_SERIALIZABLE as i32
    };
    let options = drain::Options { wait: false, truncate: true, chunk: crate::gucs::drain_batch_size() };
    let drain_here = |wait: bool| {
        drain::drain(client, drain::Options { wait, ..options })
            .map(|drained| drain::notify(client, drained.received))
            .is_some()
    };
    match wakeup::published() {
        Some(target) => {
            if wakeup::drained_through(target) {
                return;
            }
            let serving = wakeup::worker_serves_this_database();
            if serving {
                wakeup::wake_worker();
            } else if !own_transaction {
                crate::worker::drain_in_helper();
                return;
            }
            let deadline = std::time::Instant::now() + READ_AFTER_COMMIT_WAIT;
            while !wakeup::drained_through(target) && std::time::Instant::now() < deadline {
                if own_transaction && drain_here(false) {
                    return;
                }
                wakeup::nap();
            }
        }
        None => {
            if own_transaction {
                if !drain_here(false)
                    && (crate::storage::append::has_committed_events()
                        || crate::storage::scalar::<bool>(&GAPS_PENDING, client, &[])
                            .unwrap_or(false))
                {
                    drain_here(true);
                }
            } else if crate::storage::append::has_committed_events()
                || crate::storage::scalar::<bool>(&GAPS_PENDING, client, &[]).unwrap_or(false)
            {
                crate::worker::drain_in_helper();
            }
        }
    }
}
