//! Settings under `eventq.`, registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static DRAIN_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register() {
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
}

pub fn drain_batch_size() -> i64 {
    DRAIN_BATCH_SIZE.get() as i64
}
