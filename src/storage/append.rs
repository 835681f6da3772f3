//! The publisher's fast path: `publish` appends its event to staging with `heap_insert`,
//! without SPI or the executor, after finding the stream through its name index.
//!
//! This is equivalent to an INSERT only because the staging slot tables have no index,
//! trigger, rule or constraint beyond NOT NULL (sql/schema.sql says so where they are
//! defined); `append` refuses a slot that has an index. Privileges are checked as an INSERT
//! into `eventq_internal.staged` reading `eventq_internal.streams` would check them. The
//! heap insert toasts large values, writes WAL and counts statistics as any insert does.
//!
//! Measured by `make bench`: the SPI form of the same insert (INSERT .. SELECT FROM streams,
//! routed through the partitioned parent) made a single-event publish about 0.8x a plain
//! INSERT; this path is the difference.

use crate::core::staging;
use crate::datum::Jsonb;
use pgrx::datum::{IntoDatum, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
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

/// The id of the named stream, read with the calling statement's snapshot.
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
        let scan = pg_sys::systable_beginscan(
            rel,
            by_name,
            true,
            pg_sys::GetActiveSnapshot(),
            1,
            &mut key,
        );
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

/// The staging slot of this transaction (see core::staging).
pub fn current_slot() -> i64 {
    let start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    staging::slot_at(start.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX_SECONDS)
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
        if (*(*rel).rd_rel).relhasindex {
            crate::error::damaged_installation(&format!(
                "eventq_internal.{} has an index; staging tables must have none",
                SLOT_TABLES[slot as usize].to_string_lossy()
            ));
        }
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let published_at = pg_sys::GetCurrentTransactionStartTimestamp();
        for i in 0..natts {
            let attr = (*desc).attrs.as_slice(natts)[i];
            if attr.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(attr.attname.data.as_ptr());
            let value: Option<pg_sys::Datum> = match name.to_bytes() {
                b"slot" => (slot as i16).into_datum(),
                b"id" => event.id.into_datum(),
                b"stream_id" => event.stream_id.into_datum(),
                b"subject" => event.subject.into_datum(),
                b"key" => event.key.and_then(|k| k.into_datum()),
                b"payload" => event.payload.into_datum(),
                b"headers" => event.headers.and_then(|h| h.into_datum()),
                b"deliver_at" => event.deliver_at.and_then(|d| d.into_datum()),
                b"published_at" => Some(pg_sys::Datum::from(published_at)),
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
