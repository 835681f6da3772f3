//! The advisory locks that keep drains, retention and changes to consumers and streams from
//! stepping on each other, held until the transaction ends. They are ordinary advisory locks
//! on two int4 keys (visible in `pg_locks`; a session may take them with
//! `pg_advisory_xact_lock(key1, key2)`), taken here through the lock manager directly.
//!
//! - the drain lock, `(1702261873, 1)`: one drain at a time, so that `seq` follows commit
//!   order. Only ever held by a short transaction (the worker's, or one SQL statement that
//!   drains before it reads); see `storage::drain`.
//! - the fold lock, `(1702261873, 2)`: one fold of the task and event counts at a time
//!   (`storage::counts`).
//! - a consumer's lock, `(1702261874, consumer id)`: shared by drains routing events to it
//!   and by retention; exclusive while the consumer is created, altered, replayed, redriven
//!   or dropped, and while a drain fills a gap in its tasks. A drain never waits for it:
//!   it routes to a consumer it cannot lock later (a gap, see `storage::drain`), and
//!   retention skips the consumer's stream until the next pass.
//! - a stream's lock, `(1702261875, stream id)`: shared by drains and retention, exclusive
//!   while the stream is dropped; again, drains and retention leave such a stream alone.
//!
//! Hazard: these keys are taken from the advisory lock space of the database. An
//! application that uses the same two-key pairs for its own advisory locks would contend
//! with eventq.

use pgrx::pg_sys;
use pgrx::spi::SpiClient;

const DRAIN: (u32, u32) = (1_702_261_873, 1);
const FOLD: (u32, u32) = (1_702_261_873, 2);
const CONSUMER: u32 = 1_702_261_874;
const STREAM: u32 = 1_702_261_875;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

fn tag(key1: u32, key2: u32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: key1,
        locktag_field3: key2,
        // 2: the two-int4-key form of pg_advisory_lock
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

fn acquire(key: (u32, u32), mode: Mode, wait: bool) -> bool {
    let tag = tag(key.0, key.1);
    let lockmode = match mode {
        Mode::Shared => pg_sys::ShareLock,
        Mode::Exclusive => pg_sys::ExclusiveLock,
    } as pg_sys::LOCKMODE;
    let result = unsafe {
        // SAFETY: a valid advisory lock tag; a transaction lock, released when the
        // transaction (or the subtransaction that took it) ends.
        pg_sys::LockAcquire(&tag, lockmode, false, !wait)
    };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Waits for the drain lock.
pub fn lock_drain() {
    acquire(DRAIN, Mode::Exclusive, true);
}

/// Takes the drain lock if nobody holds it.
pub fn try_lock_drain() -> bool {
    acquire(DRAIN, Mode::Exclusive, false)
}

/// Waits for the fold lock.
pub fn lock_fold() {
    acquire(FOLD, Mode::Exclusive, true);
}

/// Takes the fold lock if nobody holds it.
pub fn try_lock_fold() -> bool {
    acquire(FOLD, Mode::Exclusive, false)
}

pub fn lock_consumer(id: i32, mode: Mode) {
    acquire((CONSUMER, id as u32), mode, true);
}

pub fn try_lock_consumer(id: i32, mode: Mode) -> bool {
    acquire((CONSUMER, id as u32), mode, false)
}

pub fn lock_stream(id: i32, mode: Mode) {
    acquire((STREAM, id as u32), mode, true);
}

pub fn try_lock_stream(id: i32, mode: Mode) -> bool {
    acquire((STREAM, id as u32), mode, false)
}

// Whether another transaction (or a prepared one) holds or awaits the consumer's lock
// exclusively: the consumer is being created, changed or dropped, or a drain fills its gap.
static CONSUMER_HELD_EXCLUSIVELY: super::Statement = super::Statement::new(
    "SELECT EXISTS (
         SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.mode = 'ExclusiveLock'
           AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                             WHERE d.datname = pg_catalog.current_database())
           AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid())",
    &[super::BIGINT, super::BIGINT],
);

/// Whether someone else holds or waits for the consumer's lock exclusively (a slow look at
/// the lock table: only for a reader about to wait for that lock).
pub fn consumer_being_changed(client: &SpiClient<'_>, id: i32) -> bool {
    super::scalar::<bool>(
        &CONSUMER_HELD_EXCLUSIVELY,
        client,
        &[super::arg(CONSUMER as i64), super::arg(id as i64)],
    )
    .unwrap_or(false)
}
