//! The SQL API: thin `#[pg_extern]` functions, one file per part of the API. Each starts
//! with `access::enter` (version check, caller noted, work as the storage's owner),
//! validates its arguments (core), checks the caller's privileges (`access`), calls
//! storage, and turns "not found" into the right error. While `access::enter`'s guard
//! lives, the search path is `pg_catalog` alone.

pub mod access;
pub mod apply;
pub mod consumer;
pub mod log;
pub mod maintenance;
pub mod privileges;
pub mod publish;
pub mod stream;
pub mod task;

use crate::core::settings::Mode;
use crate::error::{self, OrRaise};
use crate::storage::consumers::{self, Consumer};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// The version of this library; the installed SQL must match it.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

static INSTALLED_VERSION: crate::storage::Statement = crate::storage::Statement::new(
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eventq'",
    &[],
);

thread_local! {
    static VERSION_CHECKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Every call starts here: the SQL installed in this database must be of this library's
/// version. After a new build is installed and the server restarted, a database whose
/// extension has not been updated yet gets a clear error naming the command to run, never
/// a call into code written for another schema. Checked once per session once it holds
/// (extension versions only move forward, to the library's).
pub fn check_installed_version() {
    if VERSION_CHECKED.with(std::cell::Cell::get) {
        return;
    }
    // (through storage's statements: pgrx's own helpers would force a transaction id,
    // which a standby cannot give)
    let installed =
        Spi::connect(|client| crate::storage::scalar::<String>(&INSTALLED_VERSION, client, &[]));
    match installed {
        Some(v) if v == LIBRARY_VERSION => VERSION_CHECKED.with(|c| c.set(true)),
        Some(v) => crate::error::version_mismatch(&v, LIBRARY_VERSION),
        // not created (yet): nothing to check against
        None => {}
    }
}

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

/// The named consumer, which the caller must be allowed to work, and which must be in
/// `mode` for `call`.
pub fn consumer_for(
    caller: &access::Call,
    client: &SpiClient<'_>,
    name: &str,
    mode: Mode,
    call: &str,
) -> Consumer {
    let consumer = consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
    caller.require_consumer(client, &consumer, name, None);
    if consumer.mode != mode {
        error::wrong_mode(name, consumer.mode.as_str(), call, mode.as_str());
    }
    consumer
}

/// How long a reader waits for a drain that covers what committed before it started (the
/// worker's, a helper's, or another statement's), before it reads what there is.
const READ_AFTER_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

static GAPS_PENDING: crate::storage::Statement = crate::storage::Statement::new(
    "SELECT EXISTS (SELECT 1 FROM eventq_internal.routing_gaps)",
    &[],
);

static GAPS_OF: crate::storage::Statement = crate::storage::Statement::new(
    "SELECT EXISTS (SELECT 1 FROM eventq_internal.routing_gaps WHERE consumer_id = $1)",
    &[crate::storage::INT],
);

/// Whether this call runs inside another function or procedure that executes SQL (PL/pgSQL,
/// a DO block): its statement may go on for long after the call returns. Such code runs
/// its statements through SPI, whose executor memory ("SPI Exec") is then an ancestor of
/// the memory the call starts in. Checked before the call opens its own SPI connection.
pub fn called_from_a_function() -> bool {
    unsafe {
        let mut context = pgrx::pg_sys::CurrentMemoryContext;
        while !context.is_null() {
            let name = (*context).name;
            if !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == b"SPI Exec" {
                return true;
            }
            context = (*context).parent;
        }
    }
    false
}

/// Whether a drain may run in this transaction: it is one statement's own (not a
/// transaction block, not inside a function whose statement may go on), writable, and
/// not SERIALIZABLE (where a drain's reads of staging would take part in serializable
/// conflict detection and could make publishers' own transactions fail).
pub fn may_drain_here(nested: bool) -> bool {
    use pgrx::pg_sys;
    unsafe {
        !nested
            && !pg_sys::IsTransactionBlock()
            && !pg_sys::XactReadOnly
            && pg_sys::XactIsoLevel != pg_sys::XACT_SERIALIZABLE as i32
    }
}

/// Read after commit: before `pull` and `fetch` read, every event that committed before
/// they started must be in the log, and the consumer (`consumer_id`) must have its tasks
/// for them. With shared memory (eventq preloaded) two counters tell whether a drain has
/// covered that already (see `wakeup`); if not, or without shared memory, the reader
/// drains by itself when it may (`may_drain_here`; a drain elsewhere would hold the drain
/// lock until its transaction ended, see storage::drain), or else waits for the worker or
/// starts a helper process that drains in a transaction of its own. Waits are bounded. On
/// a standby there is nothing to drain: readers see what has been replicated.
pub fn drain_before_reading(client: &SpiClient<'_>, consumer_id: i32, nested: bool) {
    use crate::storage::drain;
    use crate::wakeup;
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        return;
    }
    let own_transaction = may_drain_here(nested);
    let options =
        drain::Options { wait: false, truncate: true, chunk: crate::gucs::drain_batch_size() };
    let drain_here = || {
        drain::drain(client, options)
            .map(|drained| drain::notify(client, drained.received))
            .is_some()
    };
    // Drains this consumer missed while it was being changed: the next drain fills them.
    let has_gaps = || {
        crate::storage::scalar::<bool>(&GAPS_OF, client, &[crate::storage::arg(consumer_id)])
            .unwrap_or(false)
    };
    let pending = match wakeup::published() {
        Some(target) => {
            if wakeup::drained_through(target) {
                if !has_gaps() {
                    return;
                }
                None
            } else {
                Some(target)
            }
        }
        None => {
            let pending = crate::storage::append::has_committed_events()
                || crate::storage::scalar::<bool>(&GAPS_PENDING, client, &[]).unwrap_or(false);
            if !pending {
                return;
            }
            None
        }
    };
    if !own_transaction {
        match pending {
            Some(target) if wakeup::worker_serves_this_database() => {
                wakeup::wake_worker();
                let deadline = std::time::Instant::now() + READ_AFTER_COMMIT_WAIT;
                while !wakeup::drained_through(target) && std::time::Instant::now() < deadline {
                    wakeup::nap();
                }
            }
            _ => {
                if !crate::worker::drain_in_helper() {
                    warning!(
                        "eventq: no background worker slot for a helper to drain; reading what is drained (raise max_worker_processes)"
                    );
                }
            }
        }
        return;
    }
    // A consumer with a routing gap (its creation, or drains that routed around a change)
    // gets its tasks only from a drain that holds its lock exclusively, and a maintenance
    // pass or another worker's pull may hold that lock shared for a moment. So take it here
    // first, waiting those out, but not while this transaction holds the drain lock (which
    // would stop every drain meanwhile), and not for a consumer being changed (its lock held
    // or awaited exclusively by a transaction that may go on for long). Holding it, this
    // transaction's own drain is the one that fills the gap.
    let deadline = std::time::Instant::now() + READ_AFTER_COMMIT_WAIT;
    let mut holding = false;
    if has_gaps() {
        use crate::storage::locks;
        holding = loop {
            if locks::try_lock_consumer(consumer_id, locks::Mode::Exclusive) {
                break true;
            }
            if locks::consumer_being_changed(client, consumer_id)
                || std::time::Instant::now() >= deadline
            {
                break false;
            }
            wakeup::nap();
        };
    }
    // Drain here; while another drain holds the lock, wait for it to cover us (unless we
    // hold the consumer's lock: then only our drain can fill its gap), or for the lock.
    loop {
        if drain_here() {
            return;
        }
        let covered = pending.is_some_and(wakeup::drained_through) && !(holding && has_gaps());
        if covered || std::time::Instant::now() >= deadline {
            return;
        }
        wakeup::nap();
    }
}
