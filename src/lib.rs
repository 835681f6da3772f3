//! eventq: an event hub inside PostgreSQL.
//!
//! - `core`    pure logic: names, subjects and routing, backoff, settings, ids (no Postgres)
//! - `storage` the tables (`sql/schema.sql`) and every statement on them, planned once;
//!   `storage::drain` is where commit order comes from
//! - `api`     the SQL functions, one file per part of the API
//! - `datum`   jsonb and array values passed through as Postgres datums
//! - `error`   every SQLSTATE eventq raises
//! - `gucs`    settings under `eventq.`
//! - `launcher` starts a background worker per database with eventq; `worker` that worker
//!   and the drain helper; `wakeup` what backends share through shared memory: workers'
//!   latches and health, and what has been published and drained; `pull_start` where each
//!   consumer's pulls start scanning; `unread_counts` log consumers' lag as last counted;
//!   `spinlock` the lock of an entry of those shared tables
//!
//! Views for people and dashboards are in `sql/views.sql`.

mod api;
mod core;
mod datum;
mod error;
mod gucs;
mod launcher;
mod pull_start;
mod spinlock;
mod storage;
mod unread_counts;
mod wakeup;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[allow(non_snake_case)]
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    storage::planning::install_hook();
    // The worker and its wake-up slot exist only when the library is preloaded.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        wakeup::init_shared_memory();
        pull_start::init_shared_memory();
        unread_counts::init_shared_memory();
        launcher::install_hooks();
        launcher::register();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
