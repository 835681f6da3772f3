//! grant, revoke: who may publish to, consume from or manage a stream (see `access`).

use super::{access, required};
use crate::core::scope::Scope;
use crate::core::settings::Privilege;
use crate::error::{self, OrRaise};
use crate::storage::{grants, streams};
use pgrx::prelude::*;

/// The stream, held until the transaction ends (see streams::find_and_hold).
fn target(stream: &str) -> i32 {
    Spi::connect(|client| streams::find_and_hold(client, stream))
        .unwrap_or_else(|| error::unknown_stream(stream))
}

/// Allows `role` (and the roles that have its privileges) to publish to the stream, to
/// consume from it (create and work its own consumers) or to manage it (every consumer of
/// the stream). `subjects` limits a publish grant to subjects matching those patterns, a
/// consume grant to consumers whose patterns each lie within one of them. Granting again
/// replaces the subjects. Administrators only.
#[pg_extern]
fn grant(
    privilege: Option<&str>,
    stream: Option<&str>,
    role: Option<&str>,
    subjects: default!(Option<Vec<Option<String>>>, "NULL"),
) {
    let call = access::enter();
    let privilege = Privilege::parse(required(privilege, "privilege")).or_raise();
    let stream = required(stream, "stream");
    let role = access::role_oid(required(role, "role"));
    let scope = subjects.map(|list| {
        if privilege == Privilege::Manage {
            error::invalid_argument(
                "subjects limit publish and consume grants; manage covers every consumer of the stream",
            );
        }
        let list = crate::core::subject::pattern_list(list, "subjects").or_raise();
        Scope::parse(&list).or_raise()
    });
    call.require_admin("grant privileges on streams");
    unsafe { pg_sys::PreventCommandIfReadOnly(c"grant()".as_ptr()) };
    let stream_id = target(stream);
    Spi::connect(|client| {
        grants::upsert(client, stream_id, role, privilege, scope.as_ref(), call.caller())
    });
    access::grants_changed();
}

/// Takes back a privilege granted with `grant`. Consumers the role created stay (an
/// administrator or a manager of the stream can drop them). Administrators only.
#[pg_extern]
fn revoke(privilege: Option<&str>, stream: Option<&str>, role: Option<&str>) {
    let call = access::enter();
    let privilege = Privilege::parse(required(privilege, "privilege")).or_raise();
    let stream = required(stream, "stream");
    let role_name = required(role, "role");
    let role = access::role_oid(role_name);
    call.require_admin("revoke privileges on streams");
    unsafe { pg_sys::PreventCommandIfReadOnly(c"revoke()".as_ptr()) };
    let stream_id = target(stream);
    if Spi::connect(|client| grants::delete(client, stream_id, role, privilege)) {
        access::grants_changed();
    } else {
        notice!(
            "role \"{}\" holds no {} grant on stream \"{}\"",
            crate::core::shown(role_name),
            privilege.as_str(),
            crate::core::shown(stream)
        );
    }
}
