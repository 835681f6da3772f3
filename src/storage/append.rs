//! The publisher's fast path: `publish` appends its event to staging with `heap_insert`,
//! without SPI or the executor, after finding the stream through its name index.
//!
//! This is equivalent to an INSERT only while the staging slot table has no index, trigger,
//! rule, row-level security or constraint beyond NOT NULL, as eventq creates it. A DBA may
//! add any of those; `append` then takes the slow path, a plain INSERT, which honours them.
//! Table privileges are checked as an INSERT into `eventq_internal.staged` reading
//! `eventq_internal.streams` would check them (for the storage's owner, as whom the API
//! works; the caller's own privileges are `api::access`'s business). The heap insert toasts large values, writes
//! WAL (logical decoding included) and counts statistics as any insert does.
//!
//! Measured by `make bench`: the SPI form of the same insert (INSERT .. SELECT FROM streams,
//! routed through the partitioned parent) made a single-event publish about 0.8x a plain
//! INSERT; this path is the difference.

use super::{
    arg, isolation, Statement, BIGINT, INT, INTERVAL, JSONB, SMALLINT, TEXT, TIMESTAMPTZ, UUID,
};
use crate::core::staging;
use crate::datum::Jsonb;
use pgrx::datum::{Interval, IntoDatum, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use pgrx::spi::Spi;
use std::ffi::CStr;

const NAMESPACE: &CStr = c"eventq_internal";
const SLOT_TABLES: [&CStr; 4] = [c"staged_0", c"staged_1", c"staged_2", c"staged_3"];
/// Seconds from the Unix epoch to Postgres' epoch (2000-01-01).
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

pub struct Staged<'a> {
    pub id: Uuid,
    pub stream_id: i32,
    pub subject: &'a str,
    pub key: Option<&'a str>,
    pub payload: Jsonb,
    pub headers: Option<Jsonb>,
    pub deliver_at: Option<TimestampWithTimeZone>,
    pub retry: Retry,
}

/// An event's own retry settings, as given to `publish` (validated by the caller).
#[derive(Clone, Copy, Default)]
pub struct Retry {
    pub max_attempts: Option<i32>,
    pub backoff: Option<&'static str>,
    pub backoff_base: Option<Interval>,
}

fn relation(namespace: pg_sys::Oid, name: &CStr) -> pg_sys::Oid {
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        crate::error::damaged_installation(&format!(
            "relation eventq_internal.{} is missing",
            name.to_string_lossy()
        ));
    }
    oid
}

fn require(relid: pg_sys::Oid, mode: u32) {
    unsafe {
        let result = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), mode as pg_sys::AclMode);
        if result != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(
                result,
                pg_sys::ObjectType::OBJECT_TABLE,
                pg_sys::get_rel_name(relid),
            );
        }
    }
}

/// The storage schema, which the caller must be allowed to use, as for any query on it.
fn namespace() -> pg_sys::Oid {
    unsafe {
        let namespace = pg_sys::get_namespace_oid(NAMESPACE.as_ptr(), false);
        let result = pg_sys::pg_namespace_aclcheck(
            namespace,
            pg_sys::GetUserId(),
            pg_sys::ACL_USAGE as pg_sys::AclMode,
        );
        if result != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(result, pg_sys::ObjectType::OBJECT_SCHEMA, NAMESPACE.as_ptr());
        }
        namespace
    }
}

/// The snapshot eventq reads with (see `storage`): the statement's, or the newest one under
/// REPEATABLE READ and SERIALIZABLE.
fn snapshot() -> pg_sys::Snapshot {
    unsafe {
        if isolation::uses_transaction_snapshot() {
            pg_sys::GetLatestSnapshot()
        } else {
            pg_sys::GetActiveSnapshot()
        }
    }
}

/// The id of the named stream.
pub fn stream_id(name: &str) -> Option<i32> {
    let namespace = namespace();
    let streams = relation(namespace, c"streams");
    let by_name = relation(namespace, c"streams_name_key");
    require(streams, pg_sys::ACL_SELECT);
    unsafe {
        // SAFETY: relations are opened and closed here, the scan runs with the active
        // snapshot, and the key's datum outlives the scan. The lock is kept until the
        // transaction ends, as for any table a query reads.
        let rel = pg_sys::table_open(streams, pg_sys::AccessShareLock as i32);
        let name_attno = attribute_number(rel, c"name");
        let id_attno = attribute_number(rel, c"id");
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            name_attno,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            name.into_datum().unwrap_or(pg_sys::Datum::from(0)),
        );
        let scan = pg_sys::systable_beginscan(rel, by_name, true, snapshot(), 1, &mut key);
        let tuple = pg_sys::systable_getnext(scan);
        let id = if tuple.is_null() {
            None
        } else {
            let mut is_null = false;
            let datum = pg_sys::heap_getattr(tuple, id_attno as i32, (*rel).rd_att, &mut is_null);
            (!is_null).then(|| datum.value() as i32)
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        id
    }
}

/// This cluster's system identifier, stored with each staged event (see the `origin`
/// column in sql/schema.sql).
pub fn origin() -> i64 {
    unsafe { pg_sys::GetSystemIdentifier() as i64 }
}

/// The staging slot of this transaction (see core::staging).
pub fn current_slot() -> i64 {
    let start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    staging::slot_at(start.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX_SECONDS)
}

// The slow path, for a staging table a DBA has added triggers, rules, policies or
// constraints to.
static INSERT: Statement = Statement::new(
    "INSERT INTO eventq_internal.staged
         (slot, xid, id, stream_id, subject, key, payload, headers, deliver_at, origin,
          max_attempts, backoff, backoff_base)
     VALUES ($1, pg_catalog.pg_current_xact_id(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    &[SMALLINT, UUID, INT, TEXT, TEXT, JSONB, JSONB, TIMESTAMPTZ, BIGINT, INT, TEXT, INTERVAL],
);

/// Whether an INSERT into the relation would do more than store the row.
unsafe fn is_plain(rel: pg_sys::Relation) -> bool {
    unsafe {
        let class = (*rel).rd_rel;
        let constr = (*(*rel).rd_att).constr;
        !(*class).relhasindex
            && !(*class).relhastriggers
            && !(*class).relhasrules
            && !(*class).relrowsecurity
            && (constr.is_null() || (*constr).num_check == 0)
    }
}

/// Appends the event to staging, in the current transaction.
pub fn append(event: Staged<'_>) {
    let namespace = namespace();
    require(relation(namespace, c"staged"), pg_sys::ACL_INSERT);
    let slot = current_slot();
    let relid = relation(namespace, SLOT_TABLES[slot as usize]);
    unsafe {
        // SAFETY: the relation is opened with the lock an INSERT takes and kept until the
        // transaction ends; values and nulls are built for exactly its attributes.
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let parent =
            pg_sys::table_open(relation(namespace, c"staged"), pg_sys::AccessShareLock as i32);
        let plain = is_plain(rel) && is_plain(parent);
        pg_sys::table_close(parent, pg_sys::NoLock as i32);
        if !plain {
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            return append_with_insert(slot, event);
        }
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let published_at = pg_sys::GetCurrentTransactionStartTimestamp();
        let xid = pg_sys::GetTopFullTransactionId().value;
        for i in 0..natts {
            let attr = (*desc).attrs.as_slice(natts)[i];
            if attr.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(attr.attname.data.as_ptr());
            let value: Option<pg_sys::Datum> = match name.to_bytes() {
                b"slot" => (slot as i16).into_datum(),
                b"xid" => Some(pg_sys::Datum::from(xid)),
                b"id" => event.id.into_datum(),
                b"stream_id" => event.stream_id.into_datum(),
                b"subject" => event.subject.into_datum(),
                b"key" => event.key.and_then(|k| k.into_datum()),
                b"payload" => event.payload.into_datum(),
                b"headers" => event.headers.and_then(|h| h.into_datum()),
                b"deliver_at" => event.deliver_at.and_then(|d| d.into_datum()),
                b"published_at" => Some(pg_sys::Datum::from(published_at)),
                b"origin" => origin().into_datum(),
                b"max_attempts" => event.retry.max_attempts.and_then(|n| n.into_datum()),
                b"backoff" => event.retry.backoff.and_then(|b| b.into_datum()),
                b"backoff_base" => event.retry.backoff_base.and_then(|b| b.into_datum()),
                other => crate::error::damaged_installation(&format!(
                    "unexpected column {} in the staging table",
                    String::from_utf8_lossy(other)
                )),
            };
            if let Some(v) = value {
                values[i] = v;
                nulls[i] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}

fn append_with_insert(slot: i64, e: Staged<'_>) {
    Spi::connect(|client| {
        INSERT.run(
            client,
            &[
                arg(slot as i16),
                arg(e.id),
                arg(e.stream_id),
                arg(e.subject),
                arg(e.key),
                arg(e.payload),
                arg(e.headers),
                arg(e.deliver_at),
                arg(origin()),
                arg(e.retry.max_attempts),
                arg(e.retry.backoff),
                arg(e.retry.backoff_base),
            ],
        );
    });
}

/// Whether staging holds an event another transaction committed (and no drain has moved
/// yet), read with the newest snapshot. Unlike a query, it releases its locks on the
/// staging tables at once: a caller inside a long transaction must not keep idle slots from
/// being truncated.
pub fn has_committed_events() -> bool {
    let namespace = namespace();
    SLOT_TABLES.iter().any(|table| unsafe {
        // SAFETY: a plain heap scan with a registered snapshot; the relation is closed, and
        // its lock released, before returning.
        let rel = pg_sys::table_open(relation(namespace, table), pg_sys::AccessShareLock as i32);
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let scan = pg_sys::table_beginscan(rel, snapshot, 0, std::ptr::null_mut());
        let mut found = false;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let xmin = pg_sys::HeapTupleHeaderGetXmin((*tuple).t_data);
            if !pg_sys::TransactionIdIsCurrentTransactionId(xmin) {
                found = true;
                break;
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        found
    })
}

unsafe fn attribute_number(rel: pg_sys::Relation, name: &CStr) -> pg_sys::AttrNumber {
    let attno = unsafe { pg_sys::attnameAttNum(rel, name.as_ptr(), false) };
    if attno <= 0 {
        crate::error::damaged_installation(&format!(
            "column {} is missing",
            name.to_string_lossy()
        ));
    }
    attno as pg_sys::AttrNumber
}
