//! The tables (see `sql/schema.sql`) and every statement that touches them.
//!
//! Each statement is a [`Statement`] constant. A backend prepares it the first time it runs
//! and keeps the plan for the rest of its life, so no hot path parses or plans SQL per call.
//! Postgres' plan cache re-plans a kept statement by itself when the tables change.
//!
//! Every statement reads the newest committed state, whatever the caller's isolation
//! level. In READ COMMITTED that is what a statement does anyway. Under REPEATABLE READ and
//! SERIALIZABLE a statement would otherwise read the transaction's snapshot, taken when it
//! began: a drain would then not see what committed since, a `pull` would miss the tasks a
//! drain made after it began, and a drain that truncates staging could throw away events
//! its old snapshot could not see. A queue's operations are about the queue as it is now,
//! as `SELECT ... FOR UPDATE` in READ COMMITTED is; the caller's own reads of its own
//! tables keep their snapshot. See `isolation` for what that means for conflicts.

pub mod append;
pub mod consumers;
pub mod counts;
pub mod drain;
pub mod grants;
pub mod isolation;
pub mod keys;
pub mod locks;
pub mod log;
pub mod maintenance;
pub mod planning;
pub mod publish;
pub mod retention;
pub mod streams;
pub mod tasks;

use crate::error;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use pgrx::{FromDatum, IntoDatum};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;

pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [pg_sys::Oid],
    /// How the planner is held to indexes (see `planning`).
    planning: planning::Held,
}

/// A plan prepared with SPI_prepare and kept with SPI_keepplan for the backend's life.
#[derive(Clone, Copy)]
struct Plan(pg_sys::SPIPlanPtr);

thread_local! {
    static PLANS: RefCell<HashMap<usize, Plan>> = RefCell::new(HashMap::new());
    static LIMITED: RefCell<HashMap<(usize, i64), Plan>> = RefCell::new(HashMap::new());
}

/// The rows a statement returned, valid until the SPI connection closes.
pub struct Rows<'c> {
    table: *mut pg_sys::SPITupleTable,
    rows: usize,
    processed: u64,
    next: usize,
    _client: PhantomData<&'c ()>,
}

impl<'c> Rows<'c> {
    /// Rows returned, or for a statement without RETURNING, rows inserted, updated or deleted.
    pub fn len(&self) -> usize {
        self.processed as usize
    }

    pub fn is_empty(&self) -> bool {
        self.processed == 0
    }

    /// Frees the rows now instead of when the SPI connection closes: for loops that run
    /// many statements in one connection (a drain over a large backlog). Values read from
    /// the rows before are copies and stay valid.
    pub fn free(self) {
        if !self.table.is_null() {
            unsafe { pg_sys::SPI_freetuptable(self.table) };
        }
    }
}

impl<'c> Iterator for Rows<'c> {
    type Item = SpiHeapTupleData<'c>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.rows {
            return None;
        }
        let i = self.next;
        self.next += 1;
        unsafe {
            // SAFETY: `table` is the SPI tuple table of the statement just executed, which
            // holds `rows` tuples and outlives this iterator (it is freed with the SPI
            // connection, whose lifetime 'c bounds ours).
            let tuple = *(*self.table).vals.add(i);
            SpiHeapTupleData::new((*self.table).tupdesc, tuple).ok().flatten()
        }
    }
}

impl Statement {
    pub const fn new(sql: &'static str, args: &'static [pg_sys::Oid]) -> Statement {
        Statement { sql, args, planning: planning::Held::No }
    }

    /// A statement that reaches its rows through an index whatever the table's size: its
    /// kept plan is made with sequential scans disabled (see `planning`).
    pub const fn indexed(sql: &'static str, args: &'static [pg_sys::Oid]) -> Statement {
        Statement { sql, args, planning: planning::Held::ToIndexes }
    }

    /// An indexed statement that must also get its order from an index: its kept plan is
    /// made with bitmap scans and sorts disabled too, so that a `LIMIT` stops the scan
    /// after the rows it returns.
    pub const fn index_ordered(sql: &'static str, args: &'static [pg_sys::Oid]) -> Statement {
        Statement { sql, args, planning: planning::Held::ToIndexOrder }
    }

    /// Runs the statement read-write, with a snapshot of everything committed before it
    /// started (see the module comment). It does not force a transaction id on the caller:
    /// a statement that changes nothing leaves the transaction read-only, so an empty
    /// `pull` commits without a WAL flush.
    pub fn run<'c>(&'static self, client: &SpiClient<'c>, args: &[DatumWithOid<'_>]) -> Rows<'c> {
        self.execute(client, self.plan(), args)
    }

    /// Runs a query read-only in the caller's snapshot, as a view reads: for what must
    /// agree with the views inside the caller's transaction (a REPEATABLE READ transaction
    /// sees the log as it was when it began, page after page).
    pub fn read_as_of_caller<'c>(
        &'static self,
        client: &SpiClient<'c>,
        args: &[DatumWithOid<'_>],
    ) -> Rows<'c> {
        self.execute_in(client, self.plan(), args, true)
    }

    /// Runs a statement whose text says `LIMIT {limit}`, with that placeholder replaced by
    /// `limit`. Postgres plans a `LIMIT $n` as if it took a tenth of the rows, so a generic
    /// plan of it always looks worse than a custom one and the plan cache re-plans it at
    /// every call (a third of a millisecond for a pull of 10). With the number in the text,
    /// the kept plan is as good as a custom one and is reused. One plan per distinct limit a
    /// backend uses, up to a few; beyond them the statement is planned at each call.
    pub fn run_with_limit<'c>(
        &'static self,
        client: &SpiClient<'c>,
        limit: i64,
        args: &[DatumWithOid<'_>],
    ) -> Rows<'c> {
        const KEPT_LIMITS: usize = 8;
        let key = (self as *const Statement as usize, limit);
        let kept = LIMITED.with(|plans| plans.borrow().get(&key).copied());
        let plan = match kept {
            Some(plan) => plan,
            None => {
                let plan = self.prepare(&self.sql.replace("{limit}", &limit.to_string()));
                let keep = LIMITED.with(|plans| {
                    let mut plans = plans.borrow_mut();
                    let n = plans.keys().filter(|(s, _)| *s == key.0).count();
                    if n < KEPT_LIMITS {
                        plans.insert(key, plan);
                    }
                    n < KEPT_LIMITS
                });
                if !keep {
                    let _free = FreePlan(plan);
                    return self.execute(client, plan, args);
                }
                plan
            }
        };
        self.execute(client, plan, args)
    }

    fn execute<'c>(
        &'static self,
        client: &SpiClient<'c>,
        plan: Plan,
        args: &[DatumWithOid<'_>],
    ) -> Rows<'c> {
        self.execute_in(client, plan, args, false)
    }

    fn execute_in<'c>(
        &'static self,
        _client: &SpiClient<'c>,
        plan: Plan,
        args: &[DatumWithOid<'_>],
        callers_snapshot: bool,
    ) -> Rows<'c> {
        let (mut values, nulls) = datums(args, self.args.len(), self.sql);
        let _planning = planning::running(self.sql, self.planning);
        let status = unsafe {
            // SAFETY: the plan is kept and valid; values and nulls hold one entry per
            // argument; SPI is connected (the client proves it).
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            if callers_snapshot {
                pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), true, 0)
            } else if isolation::uses_transaction_snapshot() {
                pg_sys::SPI_execute_snapshot(
                    plan.0,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    false,
                    true,
                    0,
                )
            } else {
                pg_sys::SPI_execute_plan(plan.0, values.as_mut_ptr(), nulls.as_ptr(), false, 0)
            }
        };
        if status < 0 {
            error::spi_status(self.sql, status);
        }
        unsafe {
            // SAFETY: set by the execution above; null for statements that return no rows.
            let table = pg_sys::SPI_tuptable;
            Rows {
                table,
                rows: if table.is_null() { 0 } else { (*table).numvals as usize },
                processed: pg_sys::SPI_processed,
                next: 0,
                _client: PhantomData,
            }
        }
    }

    /// Runs the statement and returns its first row, if any.
    pub fn first_row<'c>(
        &'static self,
        client: &SpiClient<'c>,
        args: &[DatumWithOid<'_>],
    ) -> Option<SpiHeapTupleData<'c>> {
        self.run(client, args).next()
    }

    fn plan(&'static self) -> Plan {
        let key = self as *const Statement as usize;
        if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).copied()) {
            return plan;
        }
        let plan = self.prepare(self.sql);
        PLANS.with(|plans| plans.borrow_mut().insert(key, plan));
        plan
    }

    fn prepare(&'static self, text: &str) -> Plan {
        let sql = CString::new(text).unwrap_or_default();
        let mut types: Vec<pg_sys::Oid> = self.args.to_vec();
        unsafe {
            // SAFETY: a valid statement text and argument types; SPI_keepplan moves the plan
            // out of the SPI procedure's memory so that it survives the connection.
            let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                error::spi_status(self.sql, pg_sys::SPI_result);
            }
            pg_sys::SPI_keepplan(plan);
            Plan(plan)
        }
    }
}

/// A plan used once, freed however its execution ends.
struct FreePlan(Plan);

impl Drop for FreePlan {
    fn drop(&mut self) {
        // SAFETY: the plan was kept by `prepare` and is not used again.
        unsafe { pg_sys::SPI_freeplan(self.0 .0) };
    }
}

fn datums(args: &[DatumWithOid<'_>], expected: usize, sql: &str) -> (Vec<pg_sys::Datum>, Vec<i8>) {
    if args.len() != expected {
        error::internal(&format!(
            "statement takes {expected} arguments, got {}: {sql}",
            args.len()
        ));
    }
    args.iter()
        .map(|a| match a.datum() {
            Some(d) => (d.sans_lifetime(), b' ' as i8),
            None => (pg_sys::Datum::from(0usize), b'n' as i8),
        })
        .unzip()
}

/// A statement argument.
pub fn arg<'a, T: IntoDatum>(value: T) -> DatumWithOid<'a> {
    DatumWithOid::from(value)
}

/// Frees the values of arguments passed by reference (arrays, text) once the statement
/// that used them has run, for loops that would otherwise pile them up until the SPI
/// connection closes.
pub fn release(args: Vec<DatumWithOid<'_>>) {
    for a in args {
        if let Some(d) = a.datum() {
            unsafe {
                if !pg_sys::get_typbyval(a.oid()) {
                    pg_sys::pfree(d.sans_lifetime().cast_mut_ptr());
                }
            }
        }
    }
}

/// Column `ordinal` (1-based) of a row, NULL as `None`.
pub fn column<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, ordinal: usize) -> Option<T> {
    row.get::<T>(ordinal).unwrap_or_else(|e| error::internal(&format!("column {ordinal}: {e}")))
}

/// The single value of a statement that always returns one row of one column.
pub fn scalar<T: FromDatum + IntoDatum>(
    statement: &'static Statement,
    client: &SpiClient<'_>,
    args: &[DatumWithOid<'_>],
) -> Option<T> {
    statement.first_row(client, args).and_then(|row| column(&row, 1))
}

pub use pg_sys::{
    BOOLARRAYOID as BOOL_ARRAY, BOOLOID as BOOL, INT2OID as SMALLINT, INT4ARRAYOID as INT_ARRAY,
    INT4OID as INT, INT8ARRAYOID as BIGINT_ARRAY, INT8OID as BIGINT, INTERVALOID as INTERVAL,
    JSONBARRAYOID as JSONB_ARRAY, JSONBOID as JSONB, OIDOID as OID, TEXTARRAYOID as TEXT_ARRAY,
    TEXTOID as TEXT, TIMESTAMPTZARRAYOID as TIMESTAMPTZ_ARRAY, TIMESTAMPTZOID as TIMESTAMPTZ,
    UUIDARRAYOID as UUID_ARRAY, UUIDOID as UUID,
};
