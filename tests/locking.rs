//! Nobody's transaction holds up delivery for everyone: not a worker that keeps a pull or an
//! ack open, not a DBA changing a consumer inside BEGIN, not a dashboard idling in a
//! transaction. And the worker stops at once when told to, even while it waits.

mod common;

use common::{at_next_second, column, count, fails_with, wait_for, Cluster, PRELOAD};
use postgres::Client;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn worker_pid(db: &mut Client) -> Option<i32> {
    db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

/// A pull or fetch inside an explicit transaction used to keep the exclusive lock it took
/// to truncate a staging slot, so that publishers whose transactions started in that
/// slot's next second waited for it (forever, once the transaction was prepared).
#[test]
fn an_open_pull_does_not_block_publishers() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Cluster::start("lock-open-pull", settings);
        let mut db = cluster.connect();
        db.batch_execute(
            "SELECT eventq.create_stream('s');
             SELECT eventq.create_consumer('c', 's');
             SELECT eventq.create_consumer('l', 's', mode => 'log');",
        )
        .unwrap();
        // every slot gets pages
        for _ in 0..4 {
            at_next_second();
            db.batch_execute("SELECT eventq.publish('s', 'fill')").unwrap();
        }
        let mut holder = cluster.connect();
        holder
            .batch_execute(
                "BEGIN; SELECT * FROM eventq.pull('c', 1); SELECT * FROM eventq.fetch('l', 1)",
            )
            .unwrap();
        let mut publisher = cluster.connect();
        publisher.batch_execute("SET statement_timeout = '2s'").unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            publisher.batch_execute("SELECT eventq.publish('s', 'x')").unwrap();
            thread::sleep(Duration::from_millis(50));
        }
        holder.batch_execute("COMMIT").unwrap();
    }
}

/// A worker acks the head of a key inside a long transaction (holding the key's row) while
/// new events arrive for that key and others: the drain does not wait for it, every other
/// consumer and key is served at once, and the key moves on when the ack commits.
#[test]
fn a_long_ack_does_not_hold_up_the_drain() {
    let cluster = Cluster::start("lock-long-ack", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');
         SELECT eventq.create_consumer('plain', 's');
         SELECT eventq.publish('s', 'head', key => 'k');",
    )
    .unwrap();
    let head: i64 = db.query_one("SELECT task_id FROM eventq.pull('keyed')", &[]).unwrap().get(0);
    let mut acker = cluster.connect();
    acker.batch_execute("BEGIN").unwrap();
    acker.execute("SELECT eventq.ack('keyed', ARRAY[$1::bigint])", &[&head]).unwrap();
    db.batch_execute(
        "SELECT eventq.publish('s', 'next', key => 'k');
         SELECT eventq.publish('s', 'other', key => 'j');",
    )
    .unwrap();
    // served within moments, though the ack is still open
    let mut reader = cluster.connect();
    reader.batch_execute("SET statement_timeout = '3s'").unwrap();
    let plain = column(&mut reader, "SELECT subject FROM eventq.pull('plain', 10)");
    assert_eq!(plain, ["head", "next", "other"]);
    assert_eq!(column(&mut reader, "SELECT subject FROM eventq.pull('keyed', 10)"), ["other"]);
    acker.batch_execute("COMMIT").unwrap();
    wait_for("the key to move on", Duration::from_secs(5), || {
        match column(&mut reader, "SELECT subject FROM eventq.pull('keyed', 10)").as_slice() {
            [next] if next == "next" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// Creating, changing or dropping consumers and streams inside BEGIN used to take the
/// drain lock until COMMIT, and nothing was delivered anywhere meanwhile.
#[test]
fn changing_consumers_inside_a_transaction_does_not_stop_delivery() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Cluster::start("lock-ddl", settings);
        let mut db = cluster.connect();
        db.batch_execute(
            "SELECT eventq.create_stream('s');
             SELECT eventq.create_stream('t');
             SELECT eventq.create_consumer('altered', 's');
             SELECT eventq.create_consumer('dropped', 's');
             SELECT eventq.create_consumer('other', 's');
             SELECT eventq.create_consumer('on_t', 't');",
        )
        .unwrap();
        let mut dba = cluster.connect();
        dba.batch_execute(
            "BEGIN;
             SELECT eventq.alter_consumer('altered', subjects => '{a.>}');
             SELECT eventq.drop_consumer('dropped');
             SELECT eventq.create_consumer('created', 's');
             SELECT eventq.drop_stream('t', force => true);",
        )
        .unwrap();
        let mut reader = cluster.connect();
        reader.batch_execute("SET statement_timeout = '3s'").unwrap();
        for n in 0..20 {
            db.execute("SELECT eventq.publish('s', 'a.x' || $1::int)", &[&n]).unwrap();
            db.execute("SELECT eventq.publish('s', 'b.x' || $1::int)", &[&n]).unwrap();
            let got = column(&mut reader, "SELECT subject FROM eventq.pull('other', 10)");
            assert_eq!(got, [format!("a.x{n}"), format!("b.x{n}")]);
        }
        db.batch_execute("SELECT eventq.publish('t', 'on_t')").unwrap();
        dba.batch_execute("COMMIT").unwrap();
        // after the commit, each consumer has exactly what its committed settings say
        db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
        let created = column(&mut db, "SELECT subject FROM eventq.pull('created', 100)");
        assert_eq!(created.len(), 40, "the new consumer gets what was drained meanwhile");
        db.batch_execute(
            "SELECT eventq.publish('s', 'a.late'); SELECT eventq.publish('s', 'b.late')",
        )
        .unwrap();
        // the events drained while it was being changed reach it with its new filter
        let altered = column(&mut db, "SELECT subject FROM eventq.pull('altered', 100)");
        let mut expected: Vec<String> = (0..20).map(|n| format!("a.x{n}")).collect();
        expected.push("a.late".into());
        assert_eq!(altered, expected);
        assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.tasks t WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.consumers c WHERE c.id = t.consumer_id)"), 0);
        assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.events e WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.streams s WHERE s.id = e.stream_id)"), 0);
        assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.routing_gaps"), 0);
        assert_eq!(fails_with(&mut db, "BEGIN; SELECT eventq.run_maintenance()"), "25001");
        db.batch_execute("ROLLBACK").unwrap();
    }
}

/// A worker whose statement waits for a lock stops at once on SIGTERM, and so does a
/// server shutdown.
#[test]
fn the_worker_stops_while_it_waits() {
    let cluster = Cluster::start(
        "lock-sigterm",
        &[PRELOAD, "eventq.maintenance_interval = '100ms'", "eventq.cleanup_interval = '100ms'"],
    );
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s', retention => '1 second');
         SELECT eventq.create_consumer('c', 's');",
    )
    .unwrap();
    let pid = wait_for("the worker", Duration::from_secs(10), || {
        worker_pid(&mut db).ok_or_else(|| "no worker".to_string())
    });
    let mut blocker = cluster.connect();
    blocker
        .batch_execute("BEGIN; LOCK TABLE eventq_internal.consumers IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    wait_for("the worker to wait for the lock", Duration::from_secs(10), || {
        let waiting = count(
            &mut db,
            &format!(
                "SELECT 1 FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
            ),
        );
        if waiting == 1 {
            Ok(())
        } else {
            Err("not waiting".into())
        }
    });
    let asked = Instant::now();
    db.batch_execute(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    wait_for("the worker to exit", Duration::from_secs(3), || match worker_pid(&mut db) {
        Some(p) if p == pid => Err("still there".into()),
        _ => Ok(()),
    });
    assert!(asked.elapsed() < Duration::from_secs(3));
    blocker.batch_execute("ROLLBACK").unwrap();
}

/// A commit or seek cannot name a seq that a drain has reserved but not committed.
#[test]
fn a_cursor_cannot_move_into_an_unfinished_drain() {
    let cluster = Arc::new(Cluster::start("lock-inflight", &[]));
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('l', 's', mode => 'log');
         SELECT eventq.create_consumer('c1', 's');
         SELECT eventq.create_consumer('c2', 's');
         SELECT count(*) FROM generate_series(1, 100) g,
                LATERAL eventq.publish_batch('s', array_fill('e'::text, ARRAY[2000]),
                                             array_fill('{}'::jsonb, ARRAY[2000]));",
    )
    .unwrap();
    let drainer = {
        let cluster = cluster.clone();
        thread::spawn(move || {
            cluster.connect().batch_execute("SELECT eventq.run_maintenance()").unwrap()
        })
    };
    let reserved: i64 = wait_for("a drain to reserve its numbers", Duration::from_secs(30), || {
        let last: i64 = db
            .query_one("SELECT pg_sequence_last_value('eventq_internal.event_seq')", &[])
            .unwrap()
            .get(0);
        if last > 0 {
            Ok(last)
        } else {
            Err("nothing reserved".into())
        }
    });
    let committed: i64 = db.query_one("SELECT count(*) FROM eventq.events", &[]).unwrap().get(0);
    if committed == 0 {
        assert_eq!(fails_with(&mut db, &format!("SELECT eventq.commit('l', {reserved})")), "22023");
        assert_eq!(
            fails_with(&mut db, &format!("SELECT eventq.seek('l', {reserved}::bigint)")),
            "22023"
        );
    }
    drainer.join().unwrap();
    db.batch_execute(&format!("SELECT eventq.commit('l', {reserved})")).unwrap();
}

/// A dashboard that read the views and idles inside its transaction holds no lock on
/// staging, so idle staging slots are still truncated.
#[test]
fn an_idle_dashboard_does_not_keep_staging_from_being_truncated() {
    let cluster = Cluster::start("lock-dashboard", &[]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.create_consumer('c', 's')")
        .unwrap();
    let mut dashboard = cluster.connect();
    dashboard
        .batch_execute(
            "BEGIN; SELECT * FROM eventq.streams; SELECT * FROM eventq.consumers;
             SELECT * FROM eventq.events; SELECT * FROM eventq.tasks",
        )
        .unwrap();
    at_next_second();
    common::script(&mut db, "SELECT eventq.publish('s', 'x'); SELECT eventq.run_maintenance()");
    thread::sleep(Duration::from_millis(2100));
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert!(report["truncated_staging"].as_i64().unwrap_or(0) >= 1, "{report}");
    dashboard.batch_execute("COMMIT").unwrap();
}

/// Unparseable patterns cannot be stored, even by hand.
#[test]
fn stored_filters_always_parse() {
    let cluster = Cluster::start("lock-filters", &[]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.create_consumer('c', 's')")
        .unwrap();
    for bad in ["'{a..b}'", "'{>.a}'", "'{\"\"}'", "ARRAY[NULL]::text[]", "'{a b}'"] {
        assert_eq!(
            fails_with(&mut db, &format!("UPDATE eventq_internal.consumers SET subjects = {bad}")),
            "23514",
            "{bad}"
        );
    }
}

/// The worker that found the drain lock busy drains once it is free, without another
/// publish to wake it.
#[test]
fn a_busy_drain_lock_does_not_leave_events_waiting() {
    let cluster = Cluster::start("lock-busy", &[PRELOAD, "eventq.maintenance_interval = '1h'"]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.create_consumer('c', 's')")
        .unwrap();
    let mut holder = cluster.connect();
    holder.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(1702261873, 1)").unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'x')").unwrap();
    thread::sleep(Duration::from_millis(500));
    holder.batch_execute("COMMIT").unwrap();
    let released = Instant::now();
    wait_for("the worker to drain", Duration::from_secs(2), || {
        match count(&mut db, "SELECT 1 FROM eventq.events") {
            1 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    assert!(released.elapsed() < Duration::from_secs(1));
}

/// A key idle only because its head was finished while a drain added to it (the drain
/// left a recheck) must go to the task that waits, not to a newer one.
#[test]
fn a_newer_task_never_overtakes_one_left_waiting_by_a_busy_key() {
    let cluster = Cluster::start("lock-overtake", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');",
    )
    .unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e1', key => 'k')").unwrap();
    let head: i64 = db.query_one("SELECT task_id FROM eventq.pull('keyed')", &[]).unwrap().get(0);
    let mut worker = cluster.connect();
    worker.batch_execute("BEGIN").unwrap();
    worker.execute("SELECT eventq.ack('keyed', ARRAY[$1::bigint])", &[&head]).unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e2', key => 'k')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    worker.batch_execute("COMMIT").unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e3', key => 'k')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('keyed', 10)"), ["e2"]);
}

/// The task a finished head hands its key to may vanish meanwhile (retention deletes it):
/// the key then goes to the next one, never to a task that is gone.
#[test]
fn a_key_never_goes_to_a_task_that_vanished() {
    let cluster = Cluster::start("lock-vanished", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');",
    )
    .unwrap();
    for n in 1..=3 {
        db.execute("SELECT eventq.publish('s', 'e' || $1::int, key => 'k')", &[&n]).unwrap();
    }
    let head: i64 = db.query_one("SELECT task_id FROM eventq.pull('keyed')", &[]).unwrap().get(0);
    // someone (as retention does) holds the next task and deletes it
    let mut retention = cluster.connect();
    retention
        .batch_execute(&format!(
            "BEGIN; DELETE FROM eventq_internal.tasks WHERE seq = {} ",
            head + 1
        ))
        .unwrap();
    let acker = {
        let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.port);
        thread::spawn(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            db.query_one("SELECT eventq.ack('keyed', ARRAY[$1::bigint])", &[&head])
                .unwrap()
                .get::<_, i32>(0)
        })
    };
    thread::sleep(Duration::from_millis(300));
    retention.batch_execute("COMMIT").unwrap();
    assert_eq!(acker.join().unwrap(), 1);
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('keyed', 10)"), ["e3"]);
}

/// A change of a consumer in progress (here: turning key ordering off, which removes its
/// rechecks) must not make the drain wait.
#[test]
fn the_drain_does_not_wait_for_a_consumer_being_changed() {
    let cluster = Cluster::start("lock-recheck-change", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');
         SELECT eventq.create_consumer('other', 's');",
    )
    .unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e1', key => 'k')").unwrap();
    let head: i64 = db.query_one("SELECT task_id FROM eventq.pull('keyed')", &[]).unwrap().get(0);
    let mut worker = cluster.connect();
    worker.batch_execute("BEGIN").unwrap();
    worker.execute("SELECT eventq.ack('keyed', ARRAY[$1::bigint])", &[&head]).unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e2', key => 'k')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    worker.batch_execute("COMMIT").unwrap();
    assert!(count(&mut db, "SELECT 1 FROM eventq_internal.key_rechecks") > 0);
    let mut dba = cluster.connect();
    dba.batch_execute("BEGIN; SELECT eventq.alter_consumer('keyed', ordering => 'none')").unwrap();
    db.batch_execute("SET statement_timeout = '3s'").unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'e3', key => 'k')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('other', 10)"), ["e1", "e2", "e3"]);
    dba.batch_execute("COMMIT").unwrap();
}

/// A pull inside a long-running statement (a DO block, a function) does not drain in that
/// statement's transaction: publishers and other readers are never held up by it.
#[test]
fn a_pull_inside_a_long_statement_holds_nobody_up() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Arc::new(Cluster::start("lock-do-block", settings));
        let mut db = cluster.connect();
        db.batch_execute(
            "SELECT eventq.create_stream('s');
             SELECT eventq.create_consumer('c', 's');
             SELECT eventq.create_consumer('d', 's');",
        )
        .unwrap();
        for _ in 0..4 {
            at_next_second();
            db.batch_execute("SELECT eventq.publish('s', 'fill')").unwrap();
        }
        let long = {
            let cluster = cluster.clone();
            thread::spawn(move || {
                cluster
                    .connect()
                    .batch_execute("DO $$ BEGIN PERFORM * FROM eventq.pull('c', 1); PERFORM pg_sleep(4); END $$")
                    .unwrap()
            })
        };
        thread::sleep(Duration::from_millis(500));
        let mut publisher = cluster.connect();
        publisher.batch_execute("SET statement_timeout = '1s'").unwrap();
        let mut reader = cluster.connect();
        reader.batch_execute("SET statement_timeout = '2s'").unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(3) {
            publisher.execute("SELECT eventq.publish('s', 'x' || $1::int)", &[&n]).unwrap();
            let got = column(&mut reader, "SELECT subject FROM eventq.pull('d', 100)");
            assert!(got.contains(&format!("x{n}")), "{got:?}");
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        long.join().unwrap();
    }
}
