//! `#[pg_test]`s: each SQL function, its effects and every error it raises, inside one
//! rolled-back transaction per test. Concurrency, timing and the background worker are
//! tested against a real server in `tests/`.
//!
//! Inside one transaction `now()` stands still, so tests that need time to pass (a lease
//! running out) move the stored times back instead.

mod apply;
mod consumer;
mod log;
mod maintenance;
mod publish;
mod stream;
mod task;

use pgrx::prelude::*;

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// `run_maintenance()` without its refusal to run inside a transaction block: each
    /// #[pg_test] is one transaction, so tests drain with this instead.
    #[pg_extern]
    fn maintain() -> pgrx::JsonB {
        crate::api::maintenance::pass_report()
    }
}

/// Outside a transaction block `pull` and `fetch` drain what committed before they read; a
/// #[pg_test] is one transaction, where they leave draining to the worker or a helper, which
/// cannot see this transaction's own events. So the helpers drain here first, in place.
fn drain_before(sql: &str) {
    if sql.contains("eventq.pull(") || sql.contains("eventq.fetch(") {
        crate::api::maintenance::pass_report();
    }
}

pub fn run(sql: &str) {
    drain_before(sql);
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The first column of the first row; `None` for NULL or no row.
pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    drain_before(sql);
    Spi::connect_mut(|client| {
        let table = client.update(sql, None, &[])?;
        if table.is_empty() {
            Ok(None)
        } else {
            table.first().get_one::<T>()
        }
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows of the log read so far in this transaction, by index or by scan.
pub fn log_rows_read() -> i64 {
    one::<i64>(
        "SELECT pg_stat_get_xact_tuples_fetched('eventq_internal.events'::regclass)
              + pg_stat_get_xact_tuples_returned('eventq_internal.events'::regclass)",
    )
    .unwrap_or(0)
}

pub fn count(sql: &str) -> i64 {
    one::<i64>(&format!("SELECT count(*) FROM ({sql}) q")).unwrap_or(0)
}

/// Runs `sql` in a subtransaction and returns the SQLSTATE and message it failed with, or
/// `None` when it succeeded (its effects then stay).
pub fn error_of(sql: &str) -> Option<(String, String)> {
    drain_before(sql);
    run(
        "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text, OUT state text, OUT message text)
         LANGUAGE plpgsql AS $$
         BEGIN EXECUTE q; EXCEPTION WHEN OTHERS THEN state := SQLSTATE; message := SQLERRM; END $$",
    );
    let (state, message) = Spi::get_two_with_args::<String, String>(
        "SELECT state, message FROM pg_temp.error_of($1)",
        &[sql.into()],
    )
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
    state.map(|s| (s, message.unwrap_or_default()))
}

/// Asserts that `sql` fails with `sqlstate` and a message containing `message`.
pub fn assert_error(sql: &str, sqlstate: &str, message: &str) {
    match error_of(sql) {
        None => panic!("expected {sqlstate} from {sql}, but it succeeded"),
        Some((state, text)) => {
            assert_eq!(state, sqlstate, "{sql} failed with {state}: {text}");
            assert!(text.contains(message), "{sql}: message {text:?} lacks {message:?}");
        }
    }
}

/// A stream `s` with one task consumer `c` of every subject.
pub fn stream_with_consumer(s: &str, c: &str, options: &str) {
    run(&format!("SELECT eventq.create_stream('{s}')"));
    run(&format!("SELECT eventq.create_consumer('{c}', '{s}'{options})"));
}
