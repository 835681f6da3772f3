//! The background worker, against real preloaded servers: it drains without anyone asking,
//! wakes at the publishing commit, notifies listeners, survives being killed, applies
//! retention and cleanup, and follows configuration reloads.

mod common;

use common::{wait_for, Cluster};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::process::Command;
use std::time::{Duration, Instant};

const PRELOAD: &str = "shared_preload_libraries = 'eventq'";

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM ({sql}) q"), &[]).unwrap().get(0)
}

/// Waits until `sql` returns `expected` rows.
fn wait_for_count(db: &mut Client, what: &str, sql: &str, expected: i64, timeout: Duration) {
    wait_for(what, timeout, || {
        let n = count(db, sql);
        if n == expected {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    });
}

fn worker_pid(db: &mut Client) -> Option<i32> {
    db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[test]
fn the_worker_drains_and_notifies_without_anyone_asking() {
    let cluster = Cluster::start_without_extension("worker-drain", &[PRELOAD]);
    let mut db = cluster.connect();
    wait_for("the launcher to start", Duration::from_secs(10), || {
        match count(
            &mut db,
            "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'eventq launcher'",
        ) {
            1 => Ok(()),
            n => Err(format!("{n} launchers")),
        }
    });
    // Without the extension no worker stays, quietly.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(worker_pid(&mut db), None);
    assert!(!cluster.log().contains("WARNING"), "{}", cluster.log());

    db.batch_execute(
        "CREATE EXTENSION eventq;
         SELECT eventq.create_stream('orders');
         SELECT eventq.create_consumer('mailer', 'orders');
         SELECT eventq.create_consumer('audit', 'orders', mode => 'log');",
    )
    .unwrap();
    let mut listener = cluster.connect();
    listener.batch_execute("LISTEN eventq_mailer; LISTEN eventq_audit").unwrap();

    db.batch_execute("SELECT eventq.publish('orders', 'order.created', jsonb_build_object('n', n)) FROM generate_series(1, 5) n")
        .unwrap();
    wait_for_count(
        &mut db,
        "the worker to drain",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'mailer' AND state = 'available'",
        5,
        Duration::from_secs(5),
    );
    let mut channels: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while channels.len() < 2 && Instant::now() < deadline {
        let mut notifications = listener.notifications();
        let mut iter = notifications.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(n)) = iter.next() {
            channels.push((n.channel().to_string(), n.payload().to_string()));
        }
    }
    channels.sort();
    assert_eq!(
        channels,
        [
            ("eventq_audit".to_string(), "5".to_string()),
            ("eventq_mailer".to_string(), "5".to_string())
        ],
        "one notification per consumer and drain, with the number of events"
    );
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.staged"), 0);
}

#[test]
fn a_transaction_that_commits_last_is_still_delivered() {
    let cluster = Cluster::start("worker-late", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('late'); SELECT eventq.create_consumer('late_c', 'late');",
    )
    .unwrap();
    let mut slow = cluster.connect();
    let mut slow_tx = slow.transaction().unwrap();
    slow_tx.execute("SELECT eventq.publish('late', 'slow')", &[]).unwrap();
    db.execute("SELECT eventq.publish('late', 'fast')", &[]).unwrap();
    wait_for_count(
        &mut db,
        "the fast event",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'late_c'",
        1,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    slow_tx.commit().unwrap();
    wait_for_count(
        &mut db,
        "the slow event",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'late_c'",
        2,
        Duration::from_secs(5),
    );
    let order: Vec<String> = db
        .query("SELECT subject FROM eventq.tasks WHERE consumer = 'late_c' ORDER BY seq", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["fast", "slow"], "the late commit gets the later seq");
}

#[test]
fn a_killed_worker_loses_nothing_and_comes_back() {
    // Durable commits: with synchronous_commit off, a crash may lose the newest commits by
    // design, whatever eventq does.
    let cluster = Cluster::start("worker-kill", &[PRELOAD, "synchronous_commit = on"]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('k'); SELECT eventq.create_consumer('k_c', 'k');",
    )
    .unwrap();
    let pid = wait_for("the worker", Duration::from_secs(10), || {
        worker_pid(&mut db).ok_or("none".to_string())
    });
    db.batch_execute(
        "SELECT count(*) FROM generate_series(1, 20) g,
            LATERAL eventq.publish_batch('k', array_fill('e'::text, ARRAY[1000 + 0 * g]), array_fill('{}'::jsonb, ARRAY[1000]))",
    )
    .unwrap();
    // Kill it while it is (most likely) draining: the server restarts every process.
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    drop(db);
    let mut db = wait_for("the server to come back", Duration::from_secs(30), || {
        let mut db = cluster.connect();
        match worker_pid(&mut db) {
            Some(new) if new != pid => Ok(db),
            other => Err(format!("worker {other:?}")),
        }
    });
    db.execute("SELECT eventq.publish('k', 'after')", &[]).unwrap();
    wait_for_count(
        &mut db,
        "every event to be drained",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'k_c'",
        20_001,
        Duration::from_secs(30),
    );
    assert_eq!(count(&mut db, "SELECT DISTINCT seq FROM eventq.events"), 20_001);
}

#[test]
fn a_reload_applies_a_new_maintenance_interval() {
    let cluster = Cluster::start("worker-sighup", &[PRELOAD, "eventq.maintenance_interval = '1h'"]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('h'); SELECT eventq.create_consumer('h_c', 'h');",
    )
    .unwrap();
    db.execute("SELECT eventq.publish('h', 'a')", &[]).unwrap();
    // (the first drain waits for the launcher to start the database's worker, which on a
    // loaded machine has taken longer than 5 s)
    wait_for_count(
        &mut db,
        "the task",
        "SELECT 1 FROM eventq.tasks WHERE state = 'available'",
        1,
        Duration::from_secs(30),
    );
    // Leased and abandoned; nobody pulls, so only the worker's timer can rescue it.
    db.execute("SELECT * FROM eventq.pull('h_c', 1, lease => '100 milliseconds')", &[]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'running'"),
        1,
        "not rescued on a 1h timer"
    );

    db.batch_execute("ALTER SYSTEM SET eventq.maintenance_interval = '100ms'").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_count(
        &mut db,
        "the lease to be rescued",
        "SELECT 1 FROM eventq.attempts WHERE outcome = 'lost'",
        1,
        Duration::from_secs(5),
    );
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'available'"), 1);
}

#[test]
fn the_worker_applies_retention_and_removes_finished_tasks() {
    let cluster = Cluster::start(
        "worker-retention",
        &[PRELOAD, "eventq.cleanup_interval = '200ms'", "eventq.keep_finished_tasks = '1s'"],
    );
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('short', '2 seconds');
         SELECT eventq.create_consumer('short_c', 'short', ordering => 'key');
         SELECT eventq.create_stream('long');
         SELECT eventq.create_consumer('long_c', 'long');
         SELECT eventq.publish('short', 'a', key => 'k'), eventq.publish('short', 'b', key => 'k');
         SELECT eventq.publish('long', 'x', dedup_key => 'x1'), eventq.publish('long', 'y');",
    )
    .unwrap();
    wait_for_count(&mut db, "the tasks", "SELECT 1 FROM eventq.tasks", 4, Duration::from_secs(5));
    // One task of the long stream completes; the short stream's tasks stay unfinished.
    db.batch_execute(
        "SELECT eventq.ack('long_c', array_agg(task_id)) FROM eventq.pull('long_c', 1)",
    )
    .unwrap();
    wait_for("retention and cleanup", Duration::from_secs(10), || {
        let expired: i64 = db
            .query_one("SELECT expired FROM eventq.consumers WHERE name = 'short_c'", &[])
            .unwrap()
            .get(0);
        let short_events = count(&mut db, "SELECT 1 FROM eventq.events WHERE stream = 'short'");
        let long_tasks = count(&mut db, "SELECT 1 FROM eventq.tasks WHERE consumer = 'long_c'");
        let keys = count(&mut db, "SELECT 1 FROM eventq_internal.key_heads");
        if (expired, short_events, long_tasks, keys) == (2, 0, 1, 0) {
            Ok(())
        } else {
            Err(format!("expired {expired}, short events {short_events}, long tasks {long_tasks}, keys {keys}"))
        }
    });
    // The long stream keeps its events, and its dedup key.
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.events WHERE stream = 'long'"), 2);
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.dedup"), 1);
}

#[test]
fn eventq_database_restricts_the_databases_served() {
    let cluster = Cluster::start("worker-database", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute("CREATE DATABASE other").unwrap();
    let mut other = cluster.connect_to("other");
    other
        .batch_execute(
            "CREATE EXTENSION eventq;
             SELECT eventq.create_stream('o');
             SELECT eventq.create_consumer('o_c', 'o');
             SELECT eventq.publish('o', 'a');",
        )
        .unwrap();
    let workers = "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'eventq worker'";
    wait_for_count(&mut db, "a worker in each database", workers, 2, Duration::from_secs(20));
    db.batch_execute("ALTER SYSTEM SET eventq.database = 'other'").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for_count(
        &mut db,
        "the worker of postgres to stop",
        "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'eventq worker' AND datname = 'postgres'",
        0,
        Duration::from_secs(20),
    );
    wait_for_count(&mut db, "the worker of other alone", workers, 1, Duration::from_secs(20));
    wait_for_count(
        &mut other,
        "the event drained in other",
        "SELECT 1 FROM eventq_internal.events",
        1,
        Duration::from_secs(10),
    );
}
