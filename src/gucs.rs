//! Settings under `eventq.`, registered when the library loads. The README lists them.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);
static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static DRAIN_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static MAINTENANCE_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
static CLEANUP_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static KEEP_FINISHED_TASKS_S: GucSetting<i32> = GucSetting::<i32>::new(3_600);
static MAX_PAYLOAD_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);

pub fn register() {
    GucRegistry::define_string_guc(
        c"eventq.database",
        c"Databases the eventq launcher starts workers for (comma-separated; empty: every database with eventq).",
        c"A reload applies a new list: workers of databases no longer listed stop.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventq.max_workers",
        c"How many eventq background workers (one per database) may run at once.",
        c"Each takes a slot of max_worker_processes. Databases beyond it drain when read, as without preloading.",
        &MAX_WORKERS,
        1,
        crate::wakeup::SLOTS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"eventq.worker_enabled",
        c"Whether eventq's background workers run (needs shared_preload_libraries).",
        c"When off, schedule eventq.run_maintenance() instead; pull and fetch drain by themselves.",
        &WORKER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventq.drain_batch_size",
        c"Events the drain fans out into tasks per round.",
        c"Each round reads this many moved events back and inserts their tasks in one statement.",
        &DRAIN_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventq.maintenance_interval",
        c"How often the worker rescues expired leases and makes due retries available.",
        c"Draining does not wait for it: a publishing commit wakes the worker at once.",
        &MAINTENANCE_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"eventq.cleanup_interval",
        c"How often the worker applies retention, removes old finished tasks and folds the counts the views read.",
        c"",
        &CLEANUP_INTERVAL_MS,
        100,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"eventq.keep_finished_tasks",
        c"How long completed and discarded tasks (and their attempts) are kept.",
        c"Events themselves are kept for their stream's retention.",
        &KEEP_FINISHED_TASKS_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"eventq.max_payload_size",
        c"The largest payload and headers (together, uncompressed) one event may have.",
        c"A larger publish is refused. Superusers set it, for the server, a database or a role.",
        &MAX_PAYLOAD_KB,
        1,
        256 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
}

/// The largest payload and headers of one event, in bytes.
pub fn max_payload_bytes() -> usize {
    MAX_PAYLOAD_KB.get().max(1) as usize * 1024
}

/// The databases `eventq.database` lists; empty for every database.
pub fn databases() -> Vec<String> {
    DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim().trim_matches('"').to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

pub fn max_workers() -> usize {
    MAX_WORKERS.get().max(1) as usize
}

pub fn worker_enabled() -> bool {
    WORKER_ENABLED.get()
}

pub fn drain_batch_size() -> i64 {
    DRAIN_BATCH_SIZE.get() as i64
}

pub fn maintenance_interval() -> std::time::Duration {
    std::time::Duration::from_millis(MAINTENANCE_INTERVAL_MS.get() as u64)
}

pub fn cleanup_interval() -> std::time::Duration {
    std::time::Duration::from_millis(CLEANUP_INTERVAL_MS.get() as u64)
}

pub fn keep_finished_tasks_seconds() -> i64 {
    KEEP_FINISHED_TASKS_S.get() as i64
}
