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

/// An optional interval argument that must be positive, in microseconds.
pub fn positive_micros(interval: Option<Interval>, what: &str) -> Option<i64> {
    interval.map(|i| {
        let us = micros(i);
        crate::core::settings::positive(what, us).or_raise();
        us
    })
}

/// An optional interval argument that must not be negative, in microseconds.
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

/// Without a background worker, `pull` and `fetch` drain what has committed before they
/// read, so that a consumer never waits for a worker that is not running. They only try the
/// drain lock (whoever holds it is draining), and they drain only in READ COMMITTED: a
/// REPEATABLE READ snapshot could not see newly drained events anyway, and its drain could
/// fail to serialize.
pub fn drain_before_reading(client: &SpiClient<'_>) {
    let read_committed =
        unsafe { pgrx::pg_sys::XactIsoLevel } == pgrx::pg_sys::XACT_READ_COMMITTED as i32;
    if read_committed && !crate::wakeup::worker_serves_this_database() {
        crate::storage::drain::drain(client, crate::gucs::drain_batch_size());
    }
}
