//! The tables (see `sql/schema.sql`) and every statement that touches them.
//!
//! Each statement is a [`Statement`] constant. A backend prepares it the first time it runs
//! and keeps the plan for the rest of its life, so no hot path parses or plans SQL per call.
//! Postgres' plan cache re-plans a kept statement by itself when the tables change.

pub mod append;
pub mod consumers;
pub mod drain;
pub mod log;
pub mod maintenance;
pub mod publish;
pub mod retention;
pub mod streams;
pub mod tasks;

use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiCursor, SpiHeapTupleData, SpiTupleTable};
use pgrx::{FromDatum, IntoDatum};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub struct Statement {
    pub sql: &'static str,
    pub args: &'static [pg_sys::Oid],
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

impl Statement {
    pub const fn new(sql: &'static str, args: &'static [pg_sys::Oid]) -> Statement {
        Statement { sql, args }
    }

    /// Runs the statement read-write: it takes a fresh snapshot (so it sees everything
    /// committed before it started, in READ COMMITTED), yet, unlike pgrx's `update`, does not
    /// force a transaction id on the caller. A statement that changes nothing leaves the
    /// transaction read-only, so an empty `pull` commits without a WAL flush.
    pub fn run<'c>(
        &'static self,
        client: &SpiClient<'c>,
        args: &[DatumWithOid<'_>],
    ) -> SpiTupleTable<'c> {
        let plan = self.plan(client);
        client.select(&*plan, None, args).or_raise()
    }

    /// Opens a cursor over the statement's rows, fetched in chunks with `SpiCursor::fetch`.
    pub fn cursor<'c>(
        &'static self,
        client: &SpiClient<'c>,
        args: &[DatumWithOid<'_>],
    ) -> SpiCursor<'c> {
        let plan = self.plan(client);
        client.try_open_cursor(&*plan, args).or_raise()
    }

    /// Runs the statement and returns its first row, if any.
    pub fn first_row<'c>(
        &'static self,
        client: &SpiClient<'c>,
        args: &[DatumWithOid<'_>],
    ) -> Option<SpiHeapTupleData<'c>> {
        self.run(client, args).next()
    }

    fn plan(&'static self, client: &SpiClient<'_>) -> Rc<OwnedPreparedStatement> {
        let key = self as *const Statement as usize;
        if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).cloned()) {
            return plan;
        }
        let types: Vec<PgOid> = self.args.iter().map(|&oid| PgOid::from(oid)).collect();
        // `prepare_mut` marks the plan read-write; `run` relies on that for fresh snapshots.
        let plan = Rc::new(client.prepare_mut(self.sql, &types).or_raise().keep());
        PLANS.with(|plans| plans.borrow_mut().insert(key, plan.clone()));
        plan
    }
}

/// A statement argument.
pub fn arg<'a, T: IntoDatum>(value: T) -> DatumWithOid<'a> {
    DatumWithOid::from(value)
}

/// Column `ordinal` (1-based) of a row, NULL as `None`.
pub fn column<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, ordinal: usize) -> Option<T> {
    row.get::<T>(ordinal).or_raise()
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
    JSONBARRAYOID as JSONB_ARRAY, JSONBOID as JSONB, TEXTARRAYOID as TEXT_ARRAY, TEXTOID as TEXT,
    TIMESTAMPTZARRAYOID as TIMESTAMPTZ_ARRAY, TIMESTAMPTZOID as TIMESTAMPTZ,
    UUIDARRAYOID as UUID_ARRAY, UUIDOID as UUID,
};
