//! Grants: which roles may publish to, consume from or manage a stream (`sql/schema.sql`,
//! table `grants`). Who holds what is decided in `api::access`; this is the table.

use super::{arg, column, Statement, INT, OID, TEXT, TEXT_ARRAY};
use crate::core::scope::Scope;
use crate::core::settings::Privilege;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

/// One grant, as the privilege checks need it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub grantee: pg_sys::Oid,
    pub privilege: Privilege,
    /// `None`: every subject.
    pub scope: Option<Scope>,
}

static OF_STREAM: Statement = Statement::new(
    "SELECT grantee::oid, privilege, subjects FROM eventq_internal.grants WHERE stream_id = $1",
    &[INT],
);

static UPSERT: Statement = Statement::new(
    "INSERT INTO eventq_internal.grants
         (stream_id, grantee, privilege, subjects, subjects_re, granted_by)
     VALUES ($1, $2::regrole, $3, $4, $6, $5::regrole)
     ON CONFLICT (stream_id, grantee, privilege) DO UPDATE
        SET subjects = excluded.subjects, subjects_re = excluded.subjects_re,
            granted_by = excluded.granted_by, granted_at = excluded.granted_at",
    &[INT, OID, TEXT, TEXT_ARRAY, OID, TEXT],
);

static DELETE: Statement = Statement::new(
    "DELETE FROM eventq_internal.grants
     WHERE stream_id = $1 AND grantee = $2::regrole AND privilege = $3",
    &[INT, OID, TEXT],
);

/// The grants on a stream, to any role.
pub fn of_stream(client: &SpiClient<'_>, stream_id: i32) -> Vec<Grant> {
    OF_STREAM
        .run(client, &[arg(stream_id)])
        .filter_map(|row| {
            let privilege = Privilege::parse(&column::<String>(&row, 2)?).ok()?;
            // The table's CHECK constraint keeps unparseable patterns out.
            let scope = column::<Vec<String>>(&row, 3).map(|s| {
                Scope::parse(&s).unwrap_or_else(|e| {
                    crate::error::damaged_installation(&format!("a grant has a bad scope: {e}"))
                })
            });
            Some(Grant { grantee: column(&row, 1)?, privilege, scope })
        })
        .collect()
}

/// Grants `privilege` on the stream to the role, or changes the subjects of that grant.
pub fn upsert(
    client: &SpiClient<'_>,
    stream_id: i32,
    role: pg_sys::Oid,
    privilege: Privilege,
    scope: Option<&Scope>,
    granted_by: pg_sys::Oid,
) {
    let subjects: Option<Vec<String>> =
        scope.map(|s| s.patterns().iter().map(|p| p.as_str().to_string()).collect());
    let regex = scope.and_then(Scope::regex);
    UPSERT.run(
        client,
        &[
            arg(stream_id),
            arg(role),
            arg(privilege.as_str()),
            arg(subjects),
            arg(granted_by),
            arg(regex),
        ],
    );
}

/// Whether there was such a grant.
pub fn delete(
    client: &SpiClient<'_>,
    stream_id: i32,
    role: pg_sys::Oid,
    privilege: Privilege,
) -> bool {
    !DELETE.run(client, &[arg(stream_id), arg(role), arg(privilege.as_str())]).is_empty()
}

/// The grants table.
pub fn relation() -> pg_sys::Oid {
    let relid = unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventq_internal".as_ptr(), true);
        pg_sys::get_relname_relid(c"grants".as_ptr(), namespace)
    };
    if relid == pg_sys::InvalidOid {
        crate::error::damaged_installation("table eventq_internal.grants is missing");
    }
    relid
}

/// Tells every backend that grants changed (see api::access): an invalidation of the
/// table's relcache entry, sent when this transaction commits (and seen by this backend at
/// its next command).
pub fn announce_change() {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relation()) };
}
