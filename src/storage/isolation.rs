//! Isolation levels. eventq's statements always read the newest committed state (see the
//! module comment of `storage`), so REPEATABLE READ and SERIALIZABLE callers see committed
//! events and tasks as READ COMMITTED callers do.
//!
//! One difference remains: when a statement meets a row that a concurrent transaction
//! changed after the statement's snapshot (two workers leasing the same task, an ack racing
//! a lease rescue), Postgres re-checks the row in READ COMMITTED, but raises a
//! serialization failure (40001) under the other levels. Such a conflict says nothing about
//! the caller's own data, so `retrying` runs the work in a subtransaction and tries again
//! with a newer snapshot; only after many lost races does the caller get the 40001.
//!
//! SERIALIZABLE transactions also take part in serializable conflict detection (SSI) with
//! eventq's reads and writes, as with any table: a pull or an ack can then fail with 40001
//! ("read/write dependencies among transactions"), and, as for any serializable
//! transaction, the client retries it. Nothing is lost: a failed ack leaves the task
//! running until its lease runs out, a failed pull leases nothing.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// Retries before a serialization failure reaches the caller.
const ATTEMPTS: u32 = 20;

/// Whether statements would read the transaction's snapshot (REPEATABLE READ, SERIALIZABLE).
pub fn uses_transaction_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Runs `work`, retrying it in a fresh subtransaction after a serialization failure when the
/// transaction does not read committed (see the module comment). In READ COMMITTED it just
/// runs `work`.
pub fn retrying<R>(mut work: impl FnMut() -> R) -> R {
    if !uses_transaction_snapshot() {
        return work();
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= ATTEMPTS;
        let (context, owner) =
            unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
        unsafe {
            // SAFETY: the pattern of a PL/pgSQL exception block: the subtransaction is
            // released or rolled back below, and the caller's memory context and resource
            // owner are restored either way.
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
        }
        let restore = || unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Some(work())))
            .catch_others(|error| {
                unsafe {
                    pg_sys::MemoryContextSwitchTo(context);
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                }
                restore();
                if is_serialization_failure(&error) && !last {
                    return None;
                }
                error.rethrow()
            })
            .execute();
        if result.is_some() {
            unsafe {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::ReleaseCurrentSubTransaction();
            }
            restore();
        }
        if let Some(value) = result {
            return value;
        }
    }
}

fn code(error: &pg_sys::panic::CaughtError) -> Option<PgSqlErrorCode> {
    use pg_sys::panic::CaughtError::*;
    match error {
        PostgresError(e) | ErrorReport(e) => Some(e.sql_error_code()),
        RustPanic { .. } => None,
    }
}

/// A row changed by a concurrent transaction ("could not serialize access due to
/// concurrent update"), which a newer snapshot resolves. Not a serializable anomaly found
/// by SSI ("... due to read/write dependencies ..."): that dooms the whole transaction,
/// and only the client can retry it.
fn is_serialization_failure(error: &pg_sys::panic::CaughtError) -> bool {
    code(error) == Some(PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE)
        && message(error).contains("due to concurrent")
}

/// Runs `work` in a subtransaction: an error rolls back `work` alone and comes back as its
/// message, so that one stream's or consumer's failure (a retention that overflows a
/// timestamp, say) cannot stop maintenance for the others.
pub fn contained<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        // SAFETY: as in `retrying`.
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(work())))
        .catch_others(|error| {
            unsafe {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
            }
            // A cancel (statement_timeout, pg_cancel_backend) ends the whole call.
            if code(&error) == Some(PgSqlErrorCode::ERRCODE_QUERY_CANCELED) {
                error.rethrow()
            }
            Err(message(&error))
        })
        .execute();
    if result.is_ok() {
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    }
    result
}

/// Runs `work` in a subtransaction that is then rolled back, whether it succeeds (its
/// result is returned) or fails (the error goes on): a dry run.
pub fn rolled_back<R>(work: impl FnOnce() -> R) -> R {
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    let undo = || unsafe {
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    };
    unsafe {
        // SAFETY: as in `retrying`.
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(work))
        .catch_others(|error| {
            undo();
            error.rethrow()
        })
        .execute();
    undo();
    result
}

/// The message of a caught error.
pub fn message(error: &pg_sys::panic::CaughtError) -> String {
    use pg_sys::panic::CaughtError::*;
    match error {
        PostgresError(e) | ErrorReport(e) => e.message().to_string(),
        RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}
