//! Every error eventq raises, with its SQLSTATE. No other module picks an error code.
//!
//! A Rust panic reaches the user as XX000 (internal_error), which is always a bug; these
//! helpers raise the SQLSTATE a client can act on and name the object involved.

use crate::core::{shown, Invalid};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// 22023: a name, subject, pattern or argument eventq refuses.
pub fn invalid(err: Invalid) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, err.0);
}

pub fn invalid_argument(message: impl Into<String>) -> ! {
    invalid(Invalid(message.into()))
}

/// 42704
pub fn unknown_stream(name: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("stream \"{}\" does not exist", shown(name))
    );
}

/// 42704
pub fn unknown_consumer(name: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("consumer \"{}\" does not exist", shown(name))
    );
}

/// 42710
pub fn duplicate(kind: &str, name: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
        format!("{kind} \"{}\" already exists", shown(name))
    );
}

/// 55000: e.g. `pull` on a log consumer.
pub fn wrong_mode(consumer: &str, mode: &str, call: &str, needed: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("consumer \"{consumer}\" is a {mode} consumer; {call} needs a {needed} consumer")
    );
}

/// 2BP01: `drop_stream` while consumers read it.
pub fn stream_has_consumers(stream: &str, consumers: &[String]) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!("cannot drop stream \"{stream}\" because consumers read it"),
        format!(
            "consumers: {}. Drop them first, or call drop_stream('{stream}', force => true).",
            consumers.join(", ")
        )
    );
}

/// XX000 for a failure of SPI itself (not of the statement, whose own error propagates with
/// its own SQLSTATE). Seeing this means eventq has a bug.
pub fn spi_failure(context: &str, err: SpiError) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("eventq: {context}: {err}"));
}

/// XX000 for an SPI call that returned a failure status instead of raising an error.
pub fn spi_status(sql: &str, status: i32) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("eventq: SPI failed with status {status} on: {sql}")
    );
}

/// XX000 for something that cannot happen unless eventq has a bug.
pub fn internal(message: &str) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("eventq: {message}"));
}

/// Turns pure-logic and SPI results into raised errors.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Invalid> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| invalid(e))
    }
}

impl<T> OrRaise<T> for Result<T, SpiError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| spi_failure("SPI", e))
    }
}

/// 42501: the caller may not do this; the message names the object, the hint the
/// privilege that would allow it.
pub fn permission_denied(message: String, hint: &str) -> ! {
    raise_with_hint(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message, hint)
}

/// 42704
pub fn unknown_role(name: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("role \"{}\" does not exist", shown(name))
    );
}

/// 55000: the extension's SQL in this database is of another version than the library.
pub fn version_mismatch(installed: &str, library: &str) -> ! {
    raise_with_hint(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("eventq's SQL in this database is version {installed}, but its library is version {library}"),
        "Run ALTER EXTENSION eventq UPDATE in this database (the worker resumes by itself).",
    )
}

/// 25001: the call must see rows committed after its transaction's snapshot was taken.
pub fn needs_read_committed(call: &str) -> ! {
    raise_with_hint(
        PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
        format!("{call} must run in a READ COMMITTED transaction"),
        "Call it in a transaction of its own: SET TRANSACTION ISOLATION LEVEL READ COMMITTED, or outside BEGIN.",
    )
}

/// 55P03: locks the call needs are held by others, who did not let go in time.
pub fn busy(message: &str, hint: &str) -> ! {
    raise_with_hint(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, message.into(), hint)
}

fn raise_with_hint(code: PgSqlErrorCode, message: String, hint: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "eventq")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// XX000 for an installation whose tables are not what this version of eventq created.
pub fn damaged_installation(detail: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("eventq: the installation is damaged: {detail}"),
        "Reinstall the extension (DROP EXTENSION eventq CASCADE; CREATE EXTENSION eventq)."
    );
}
