//! Plans of `indexed` statements (see `Statement::indexed`) are made with sequential scans
//! disabled; those of `index_ordered` ones with bitmap scans and sorts disabled too.
//!
//! A kept plan lives as long as the session, and Postgres makes it again only when the
//! table's statistics change, not when the table grows. A lease or an ack planned while the
//! task table was nearly empty (a new consumer, the first pulls after CREATE EXTENSION) read
//! every task at each call once the table had grown, until autovacuum next analyzed it:
//! under a held snapshot, which keeps the table from being cleaned up, delivery fell to a
//! fifth for tens of seconds. Only for statements whose every table access has an index to
//! use: disabling scans for all statements made the drain's plans (staging has no index)
//! far worse.
//!
//! The setting is changed inside the planner, for the statement's own query only: a query
//! planned while the statement runs (a trigger a DBA put on a table) is planned as usual,
//! and the session's setting is never seen changed, so nothing can save and later restore
//! the changed value.

use pgrx::pg_guard;
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::CStr;

/// How a statement's plan is held to indexes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Held {
    No,
    /// Sequential scans disabled.
    ToIndexes,
    /// Sequential scans, bitmap scans and sorts disabled: the rows come in the order of
    /// an index. Right after a burst, before the table is analyzed, Postgres takes a
    /// stream to hold a few rows and would sort them after a bitmap scan: all of them.
    ToIndexOrder,
}

thread_local! {
    /// The text of the held statement this backend is running, and how it is held.
    static RUNNING: Cell<Option<(&'static str, Held)>> = const { Cell::new(None) };
}

static mut PREVIOUS_PLANNER: pg_sys::planner_hook_type = None;

/// Installs the planner hook; from `_PG_init`.
pub fn install_hook() {
    unsafe {
        PREVIOUS_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
}

/// Marks `sql` as the statement being run until the guard is dropped.
pub fn running(sql: &'static str, held: Held) -> Option<Running> {
    (held != Held::No).then(|| Running(RUNNING.replace(Some((sql, held)))))
}

pub struct Running(Option<(&'static str, Held)>);

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.set(self.0);
    }
}

/// Whether `text` is the query of statement `sql` (whose `{limit}`, if any, was filled in).
fn is_statement(sql: &str, text: &[u8]) -> bool {
    let fixed = sql.split("{limit}").next().unwrap_or(sql).as_bytes();
    text.starts_with(fixed)
}

struct Restore {
    seqscan: bool,
    bitmapscan: bool,
    sort: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: planner globals of this backend, set below for this planning only.
        unsafe {
            pg_sys::enable_seqscan = self.seqscan;
            pg_sys::enable_bitmapscan = self.bitmapscan;
            pg_sys::enable_sort = self.sort;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // An error while planning (`1/0` is folded there) becomes a Rust panic at either call:
    // pgrx guards its own bindings; another extension's hook is a bare C function.
    let plan = || unsafe {
        match PREVIOUS_PLANNER {
            Some(previous) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
                previous(parse, query_string, cursor_options, bound_params)
            }),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    };
    let held = RUNNING.get().and_then(|(sql, held)| {
        (!query_string.is_null()
            && is_statement(sql, unsafe { CStr::from_ptr(query_string) }.to_bytes()))
        .then_some(held)
    });
    let Some(held) = held else {
        return plan();
    };
    let _restore = unsafe {
        Restore {
            seqscan: pg_sys::enable_seqscan,
            bitmapscan: pg_sys::enable_bitmapscan,
            sort: pg_sys::enable_sort,
        }
    };
    unsafe {
        pg_sys::enable_seqscan = false;
        if held == Held::ToIndexOrder {
            pg_sys::enable_bitmapscan = false;
            pg_sys::enable_sort = false;
        }
    }
    plan()
}

#[cfg(test)]
mod tests {
    use super::is_statement;

    #[test]
    fn a_statement_is_known_by_its_text_up_to_its_limit() {
        let sql = "SELECT 1 FROM t ORDER BY x LIMIT {limit} FOR UPDATE";
        assert!(is_statement(sql, b"SELECT 1 FROM t ORDER BY x LIMIT 10 FOR UPDATE"));
        assert!(is_statement("SELECT 2", b"SELECT 2"));
        assert!(!is_statement("SELECT 2", b"SELECT 3"));
        assert!(!is_statement(sql, b"INSERT INTO audit VALUES (1)"));
    }
}
