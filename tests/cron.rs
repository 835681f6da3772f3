//! Without the background worker: `run_maintenance()` scheduled with pg_cron (Debian's
//! postgresql-15-cron) on a server where eventq is not preloaded drains events and applies
//! retention. pg_cron 1.4 schedules by the minute, so this waits for the next minute.

mod common;

use common::{wait_for, Cluster};
use std::time::Duration;

#[test]
fn run_maintenance_on_a_pg_cron_schedule_drains_and_applies_retention() {
    let cluster = Cluster::start(
        "cron",
        &[
            "shared_preload_libraries = 'pg_cron'",
            "cron.database_name = 'postgres'",
            "cron.use_background_workers = on",
        ],
    );
    let mut db = cluster.connect();
    common::script(&mut db, "CREATE EXTENSION pg_cron;
         SELECT eventq.create_stream('kept');
         SELECT eventq.create_consumer('kept_c', 'kept');
         SELECT eventq.create_stream('brief', '1 second');
         SELECT eventq.create_consumer('brief_c', 'brief');
         SELECT eventq.publish('kept', 'a'), eventq.publish('kept', 'b');
         SELECT eventq.publish('brief', 'c');
         SELECT cron.schedule('eventq-maintenance', '* * * * *', 'SELECT eventq.run_maintenance()');");
    assert!(
        !db.query_one(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eventq worker'",
            &[]
        )
        .unwrap()
        .get::<_, bool>(0),
        "eventq is not preloaded here"
    );
    // Nobody pulls or fetches: only the scheduled job can drain.
    wait_for("a scheduled maintenance run", Duration::from_secs(90), || {
        let (kept_tasks, brief_expired, staged): (i64, i64, i64) = {
            let row = db
                .query_one(
                    "SELECT (SELECT count(*) FROM eventq.tasks WHERE consumer = 'kept_c'),
                            (SELECT expired FROM eventq.consumers WHERE name = 'brief_c'),
                            (SELECT count(*) FROM eventq_internal.staged)",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        if (kept_tasks, brief_expired, staged) == (2, 1, 0) {
            Ok(())
        } else {
            Err(format!("kept tasks {kept_tasks}, brief expired {brief_expired}, staged {staged}"))
        }
    });
    // pg_cron records the run as succeeded just after the job's own transaction commits.
    wait_for("pg_cron to record the run", Duration::from_secs(10), || {
        let succeeded: i64 = db
            .query_one("SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'", &[])
            .unwrap()
            .get(0);
        if succeeded >= 1 {
            Ok(())
        } else {
            Err("no succeeded run".into())
        }
    });
    assert_eq!(
        db.query_one("SELECT count(*) FROM eventq.events WHERE stream = 'brief'", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}
