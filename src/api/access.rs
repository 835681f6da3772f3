//! Who may do what, and as whom eventq works.
//!
//! Every function of the API starts with [`enter`]. It notes the caller, the current user
//! at the moment of the call, and from then on, until the function returns or fails, works
//! as the owner of eventq's storage, which no other role can touch. That is what SECURITY
//! DEFINER does, except for one thing SECURITY DEFINER would lose: who called. Inside a
//! SECURITY DEFINER function the caller is gone (Postgres keeps it on the C stack of the
//! function manager), and the session's role (GetOuterUserId) is the wrong answer when an
//! application's own SECURITY DEFINER function calls eventq: privileges are those of the
//! role the call runs as, as for any SQL statement. The switch marks the user change as
//! local (SECURITY_LOCAL_USERID_CHANGE), as SECURITY DEFINER does, and is undone when the
//! function ends, normally or by an error (the [`Call`] guard, and transaction abort).
//!
//! For the same span the search path is pinned to `pg_catalog` alone (an override pushed
//! here and popped by the guard), so no statement eventq runs as that owner can resolve a
//! name, an operator or a function to an object a caller or the database owner created;
//! the background worker sets `search_path = pg_catalog, pg_temp` for its session. Not a
//! `SET search_path` clause on the functions: Postgres then saves and restores every
//! setting around each call, and for a set-returning function around each row it returns
//! (measured: 14% of `publish_batch`'s time, and 10-15% of a single `publish`).
//!
//! The rules (README "Permissions"): superusers, the storage's owner and members of
//! `eventq_admin` may do everything. Otherwise, per stream, `publish` (optionally limited
//! to subjects), `consume` (one's own consumers, optionally only ones selecting within
//! subjects) and `manage` (every consumer of the stream), held directly or through roles
//! one has the privileges of (as for table privileges: membership with INHERIT).
//!
//! The grants of each stream are cached per backend. `grant` and `revoke` invalidate the
//! grants table's relcache entry; every backend drops its cache when that invalidation
//! arrives (at its next transaction start at the latest), so a revoke is in force for
//! every transaction that starts after it committed.

use crate::core::scope::Scope;
use crate::core::settings::Privilege;
use crate::core::subject::Filter;
use crate::error;
use crate::storage::consumers::{self, Consumer};
use crate::storage::grants::{self, Grant};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

const STORAGE_SCHEMA: &CStr = c"eventq_internal";
const ADMIN_ROLE: &CStr = c"eventq_admin";

/// The search path pinned to `pg_catalog` alone until dropped: held by every call of the
/// API (`Call`), and by `apply`, which works as its caller but must not resolve names
/// through the caller's path either.
pub struct PinnedSearchPath {
    pushed_at: i32,
}

#[must_use]
pub fn pin_search_path() -> PinnedSearchPath {
    unsafe {
        // SAFETY: Postgres copies the path; pg_catalog only, not even pg_temp.
        let mut path = pg_sys::OverrideSearchPath {
            schemas: std::ptr::null_mut(),
            addCatalog: true,
            addTemp: false,
            generation: 0,
        };
        pg_sys::PushOverrideSearchPath(&mut path);
        PinnedSearchPath { pushed_at: pg_sys::GetCurrentTransactionNestLevel() }
    }
}

impl Drop for PinnedSearchPath {
    fn drop(&mut self) {
        unsafe {
            // On an error raised inside a subtransaction that is still open, the abort
            // that follows removes the override instead (popping it from another level
            // would be an error of its own, raised while unwinding).
            if pg_sys::GetCurrentTransactionNestLevel() == self.pushed_at {
                pg_sys::PopOverrideSearchPath();
            }
        }
    }
}

/// A call in progress: who called, and the identity to return to.
pub struct Call {
    caller: pg_sys::Oid,
    owner: pg_sys::Oid,
    saved_context: i32,
    /// Popped after the identity is restored (fields drop after `Drop::drop`).
    _path: PinnedSearchPath,
}

/// Starts a call of the API: pins the search path, checks the installed version, notes the
/// caller, and switches to the storage's owner, until the returned guard is dropped.
#[must_use]
pub fn enter() -> Call {
    let path = pin_search_path();
    let (mut caller, mut context) = (pg_sys::InvalidOid, 0);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut caller, &mut context) };
    // Built before anything can fail, so that the guard undoes the push.
    let mut call = Call { caller, owner: pg_sys::InvalidOid, saved_context: context, _path: path };
    super::check_installed_version();
    call.owner = storage_owner();
    unsafe {
        // SAFETY: a write of the backend's current user, undone by the guard.
        pg_sys::SetUserIdAndSecContext(
            call.owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    call
}

impl Drop for Call {
    fn drop(&mut self) {
        unsafe { pg_sys::SetUserIdAndSecContext(self.caller, self.saved_context) };
    }
}

fn role_name(role: pg_sys::Oid) -> String {
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            format!("{}", role.to_u32())
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// The role a name stands for; 42704 if there is none.
pub fn role_oid(name: &str) -> pg_sys::Oid {
    let Ok(c_name) = std::ffi::CString::new(name) else { error::unknown_role(name) };
    let oid = unsafe { pg_sys::get_role_oid(c_name.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        error::unknown_role(name);
    }
    oid
}

impl Call {
    pub fn caller(&self) -> pg_sys::Oid {
        self.caller
    }

    pub fn caller_name(&self) -> String {
        role_name(self.caller)
    }

    fn has_privs_of(&self, role: pg_sys::Oid) -> bool {
        role != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(self.caller, role) }
    }

    /// A superuser, the storage's owner (or a member of it), or a member of eventq_admin.
    pub fn is_admin(&self) -> bool {
        let superuser = unsafe { pg_sys::superuser_arg(self.caller) };
        superuser
            || self.has_privs_of(self.owner)
            || self.has_privs_of(unsafe { pg_sys::get_role_oid(ADMIN_ROLE.as_ptr(), true) })
    }

    /// Whether the caller sees the consumer in the views: administrators, members of its
    /// owner, and managers of its stream (as `eventq_internal.caller_consumers` decides).
    pub fn sees_consumer(&self, consumer: &Consumer) -> bool {
        self.is_admin()
            || self.has_privs_of(consumer.owner)
            || self.held(consumer.stream_id, Privilege::Manage).is_some()
    }

    /// Streams, grants and maintenance: administrators only.
    pub fn require_admin(&self, action: &str) {
        if !self.is_admin() {
            error::permission_denied(
                format!("permission denied to {action}"),
                "Only superusers, the extension's owner and members of eventq_admin may.",
            );
        }
    }

    /// The caller's grants of `privilege` on the stream: `None` if it has none, else the
    /// union of their scopes (`Some(None)`: every subject).
    fn held(&self, stream_id: i32, privilege: Privilege) -> Option<Option<Scope>> {
        let mut held: Option<Option<Scope>> = None;
        for g in grants_of(stream_id).iter() {
            if g.privilege == privilege && self.has_privs_of(g.grantee) {
                held = Some(match held {
                    None => g.scope.clone(),
                    Some(scope) => Scope::union(scope, g.scope.clone()),
                });
            }
        }
        held
    }

    /// Which events of the stream the caller may read, as the view `eventq.events` decides:
    /// all (`Some(None)`: administrators, `manage`, `consume` of every subject), those of
    /// the subjects of its consume grants (`Some(Some(regex))`), or none (`None`).
    pub fn readable_events(&self, stream_id: i32) -> Option<Option<String>> {
        if self.is_admin() || self.held(stream_id, Privilege::Manage).is_some() {
            return Some(None);
        }
        self.held(stream_id, Privilege::Consume).map(|scope| scope.and_then(|s| s.regex()))
    }

    /// `publish` on the stream, for each of the subjects.
    pub fn require_publish<'s>(
        &self,
        stream_id: i32,
        stream: &str,
        subjects: impl IntoIterator<Item = &'s str>,
    ) {
        if self.is_admin() {
            return;
        }
        match self.held(stream_id, Privilege::Publish) {
            None => error::permission_denied(
                format!(
                    "permission denied to publish to stream \"{}\"",
                    crate::core::shown(stream)
                ),
                "An administrator can allow it with eventq.grant('publish', stream, role).",
            ),
            Some(None) => {}
            Some(Some(scope)) => {
                if let Some(subject) = subjects.into_iter().find(|s| !scope.admits_subject(s)) {
                    error::permission_denied(
                        format!(
                            "permission denied to publish subject \"{}\" to stream \"{}\": role \"{}\" may publish only {}",
                            crate::core::shown(subject),
                            crate::core::shown(stream),
                            self.caller_name(),
                            listed(&scope)
                        ),
                        "The subjects of a publish grant limit what the role may publish.",
                    )
                }
            }
        }
    }

    /// Creating a consumer of the stream with this filter: administrators, managers of the
    /// stream, and holders of `consume` whose scope contains the filter.
    pub fn require_new_consumer(&self, stream_id: i32, stream: &str, name: &str, filter: &Filter) {
        if self.is_admin() || self.held(stream_id, Privilege::Manage).is_some() {
            return;
        }
        match self.held(stream_id, Privilege::Consume) {
            None => error::permission_denied(
                format!(
                    "permission denied to create consumer \"{}\" of stream \"{}\"",
                    crate::core::shown(name),
                    crate::core::shown(stream)
                ),
                "An administrator can allow it with eventq.grant('consume', stream, role).",
            ),
            Some(scope) => self.require_within(scope, filter, name),
        }
    }

    fn require_within(&self, scope: Option<Scope>, filter: &Filter, consumer: &str) {
        let Some(scope) = scope else { return };
        if let Some(outside) = scope.first_outside(filter) {
            error::permission_denied(
                format!(
                    "permission denied for consumer \"{}\": its subjects \"{}\" reach beyond what role \"{}\" may consume ({})",
                    crate::core::shown(consumer),
                    outside.as_str(),
                    self.caller_name(),
                    listed(&scope)
                ),
                "Each subject pattern of the consumer must lie within a pattern of the consume grant.",
            );
        }
    }

    /// Using or changing an existing consumer (`subjects` and `exclude`: the filter it will
    /// have, when a change gives it a new one): administrators, managers of its stream, and
    /// holders of `consume` on its stream who have the privileges of its owner, while its
    /// filter stays within their scope.
    pub fn require_consumer(
        &self,
        client: &SpiClient<'_>,
        consumer: &Consumer,
        name: &str,
        new_filter: Option<&Filter>,
    ) {
        if self.is_admin() || self.held(consumer.stream_id, Privilege::Manage).is_some() {
            return;
        }
        let consume = self.held(consumer.stream_id, Privilege::Consume);
        let Some(scope) = consume else {
            error::permission_denied(
                format!("permission denied for consumer \"{}\"", crate::core::shown(name)),
                "It needs consume on its stream (for one's own consumers) or manage.",
            );
        };
        if !self.has_privs_of(consumer.owner) {
            error::permission_denied(
                format!(
                    "permission denied for consumer \"{}\": it belongs to role \"{}\"",
                    crate::core::shown(name),
                    role_name(consumer.owner)
                ),
                "With consume, a role works the consumers of the roles it has the privileges of; manage covers every consumer of the stream.",
            );
        }
        if scope.is_some() {
            let filter = match new_filter {
                Some(f) => f.clone(),
                None => {
                    let (include, exclude) = consumers::patterns(client, consumer.id);
                    Filter::parse(&include, &exclude).unwrap_or_else(|e| {
                        error::damaged_installation(&format!("consumer \"{name}\": {e}"))
                    })
                }
            };
            self.require_within(scope, &filter, name);
        }
    }
}

fn listed(scope: &Scope) -> String {
    let patterns: Vec<&str> = scope.patterns().iter().map(|p| p.as_str()).collect();
    format!("{{{}}}", patterns.join(","))
}

/// Per backend: the storage schema's owner, and the grants of each stream read so far.
#[derive(Default)]
struct Cache {
    registered: bool,
    owner: Option<pg_sys::Oid>,
    grants_relid: Option<pg_sys::Oid>,
    grants: HashMap<i32, Rc<[Grant]>>,
    /// Counts the invalidations seen: grants loaded while one arrived are not kept (their
    /// snapshot may predate the change it announces).
    generation: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn register_invalidation() {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.registered {
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(relcache_changed),
                    pg_sys::Datum::from(0),
                );
                pg_sys::CacheRegisterSyscacheCallback(
                    pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
                    Some(namespace_changed),
                    pg_sys::Datum::from(0),
                );
            }
            cache.registered = true;
        }
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if relid == pg_sys::InvalidOid || cache.grants_relid == Some(relid) {
            cache.grants.clear();
            cache.grants_relid = None;
            cache.generation += 1;
        }
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn namespace_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    CACHE.with(|cache| cache.borrow_mut().owner = None);
}

fn storage_namespace() -> pg_sys::Oid {
    let namespace = unsafe { pg_sys::get_namespace_oid(STORAGE_SCHEMA.as_ptr(), true) };
    if namespace == pg_sys::InvalidOid {
        error::damaged_installation("schema eventq_internal is missing");
    }
    namespace
}

/// The owner of schema eventq_internal: the role that created the extension, which owns
/// every table in it.
fn storage_owner() -> pg_sys::Oid {
    register_invalidation();
    if let Some(owner) = CACHE.with(|c| c.borrow().owner) {
        return owner;
    }
    let namespace = storage_namespace();
    let owner = unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            pg_sys::Datum::from(namespace),
        );
        if tuple.is_null() {
            error::damaged_installation("schema eventq_internal is missing");
        }
        let owner = (*(pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_namespace)).nspowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    };
    CACHE.with(|c| c.borrow_mut().owner = Some(owner));
    owner
}

fn grants_relid() -> pg_sys::Oid {
    if let Some(relid) = CACHE.with(|c| c.borrow().grants_relid) {
        return relid;
    }
    let relid = grants::relation();
    CACHE.with(|c| c.borrow_mut().grants_relid = Some(relid));
    relid
}

fn grants_of(stream_id: i32) -> Rc<[Grant]> {
    // Resolved first: invalidations are recognised by the relid.
    grants_relid();
    let generation = CACHE.with(|c| c.borrow().generation);
    if let Some(g) = CACHE.with(|c| c.borrow().grants.get(&stream_id).cloned()) {
        return g;
    }
    let loaded: Rc<[Grant]> =
        pgrx::spi::Spi::connect(|client| grants::of_stream(client, stream_id)).into();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.generation == generation && c.grants_relid.is_some() {
            c.grants.insert(stream_id, loaded.clone());
        }
    });
    loaded
}

/// Tells every backend (this one at its next command) that grants changed; sent when the
/// transaction commits.
pub fn grants_changed() {
    grants::announce_change();
}
