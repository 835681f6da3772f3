//! Backups: `pg_dump` of a database using eventq, restored with `pg_restore` (also in
//! parallel) or with psql from a plain dump into a new database whose worker is running,
//! keeps streams, consumers, cursors, grants, events, unfinished tasks, key order, dedup
//! claims and events published but not yet drained when the dump was taken; `seq`
//! continues above the restored events, in commit order.

mod common;

use common::{column, count, wait_for, Cluster, PRELOAD};
use postgres::Client;
use std::time::Duration;

/// What a database holds, as comparable text: everything but the events staged when the
/// dump was taken (drained after the restore) and times.
fn contents(db: &mut Client) -> Vec<String> {
    let mut all = Vec::new();
    for sql in [
        "SELECT name || ' ' || coalesce(retention::text, '-') FROM eventq.streams ORDER BY 1",
        "SELECT name || ' ' || stream || ' ' || mode || ' ' || paused || ' ' || owner || ' '
                || coalesce(cursor_seq::text, '-') || ' ' || subjects::text || ' ' || ordering
                || ' ' || available || '/' || waiting || '/' || running || '/' || retryable
                || '/' || completed || '/' || discarded
         FROM eventq.consumers ORDER BY 1",
        "SELECT stream || ' ' || seq || ' ' || event_id || ' ' || subject || ' ' || coalesce(key, '-')
                || ' ' || payload::text
         FROM eventq.events ORDER BY seq",
        "SELECT consumer || ' ' || task_id || ' ' || state || ' ' || attempt || ' ' || coalesce(last_error, '-')
         FROM eventq.tasks ORDER BY 1",
        "SELECT consumer || ' ' || task_id || ' ' || attempt || ' ' || outcome FROM eventq.attempts ORDER BY 1",
        "SELECT s.name || ' ' || g.grantee::text || ' ' || g.privilege || ' ' || coalesce(g.subjects::text, '-')
         FROM eventq_internal.grants g JOIN eventq_internal.streams s ON s.id = g.stream_id ORDER BY 1",
    ] {
        all.extend(column(db, sql));
    }
    all
}

/// A database `live` in use: every kind of state there is, and three events staged but
/// not drained (no worker serves `live`; see the cluster's settings).
fn populate(cluster: &Cluster) {
    let mut su = cluster.connect();
    su.batch_execute("CREATE ROLE shop LOGIN; CREATE ROLE billing LOGIN; CREATE ROLE tenant LOGIN")
        .unwrap();
    su.batch_execute("CREATE DATABASE live").unwrap();
    let mut db = cluster.connect_to("live");
    common::script(
        &mut db,
        "CREATE EXTENSION eventq;
         SELECT eventq.create_stream('orders');
         SELECT eventq.create_stream('audit', retention => NULL);
         SELECT eventq.grant('publish', 'orders', 'shop');
         SELECT eventq.grant('consume', 'orders', 'billing');
         SELECT eventq.grant('consume', 'orders', 'tenant', '{seller.42.>}');
         SELECT eventq.create_consumer('mailer', 'orders', max_attempts => 3);
         SELECT eventq.create_consumer('ledger', 'orders', ordering => 'key');
         SELECT eventq.create_consumer('reader', 'orders', mode => 'log');
         SELECT eventq.create_consumer('idle', 'audit');
         SELECT eventq.pause_consumer('idle');",
    );
    let mut billing = cluster.connect_as("live", "billing");
    billing
        .batch_execute(
            "SELECT eventq.create_consumer('invoices', 'orders', '{seller.*.order.paid}')",
        )
        .unwrap();
    let mut shop = cluster.connect_as("live", "shop");
    for i in 1..=6 {
        shop.batch_execute(&format!(
            "SELECT eventq.publish('orders', 'seller.42.order.{}', jsonb_build_object('n', {i}), key => 'k{}', dedup_key => 'd{i}')",
            if i % 2 == 0 { "paid" } else { "created" },
            i % 2
        ))
        .unwrap();
    }
    db.batch_execute("SELECT eventq.publish('audit', 'login', '{\"who\": \"ops\"}')").unwrap();
    common::script(&mut db, "SELECT eventq.run_maintenance();");
    // mailer: 1 completed, 2 running, 3 failed once (retryable), 4.. available
    let tasks: Vec<i64> = db
        .query("SELECT task_id FROM eventq.pull('mailer', 3, lease => '1 hour')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.execute("SELECT eventq.ack('mailer', ARRAY[$1::bigint])", &[&tasks[0]]).unwrap();
    db.execute("SELECT eventq.retry('mailer', $1, 'smtp down', '1 hour')", &[&tasks[2]]).unwrap();
    // ledger: key k1's first task in flight, the others wait
    db.query("SELECT * FROM eventq.pull('ledger', 1, lease => '1 hour')", &[]).unwrap();
    // reader: read up to the third event
    let third: i64 = db
        .query_one("SELECT seq FROM eventq.fetch('reader', 3) ORDER BY seq DESC LIMIT 1", &[])
        .unwrap()
        .get(0);
    db.execute("SELECT eventq.commit('reader', $1)", &[&third]).unwrap();
    // staged, not drained: nothing reads or maintains `live` from here on
    for subject in ["seller.42.order.created", "seller.43.order.paid", "seller.42.order.paid"] {
        shop.batch_execute(&format!("SELECT eventq.publish('orders', '{subject}', key => 'k1')"))
            .unwrap();
    }
    assert_eq!(count(&mut db, "SELECT * FROM eventq_internal.staged"), 3);
}

fn check_restored(cluster: &Cluster, database: &str, expected: &[String]) {
    let mut db = cluster.connect_to(database);
    // the staged events are drained once the restore is over, after the restored ones
    wait_for("the staged events to be drained", Duration::from_secs(30), || {
        match count(&mut db, "SELECT * FROM eventq.events WHERE stream = 'orders'") {
            9 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    // the counts the views show were not dumped: the restore's rows were counted as loaded
    common::assert_counts_match_rows(&mut db, "after the restore");
    let restored = contents(&mut db);
    let missing: Vec<&String> = expected.iter().filter(|row| !restored.contains(row)).collect();
    // tasks and counts move on with the new events; everything else must be as it was
    let missing: Vec<&&String> = missing
        .iter()
        .filter(|row| {
            !row.starts_with("mailer orders")
                && !row.starts_with("ledger orders")
                && !row.starts_with("invoices orders")
        })
        .collect();
    assert!(missing.is_empty(), "lost in {database}: {missing:#?}\nrestored: {restored:#?}");
    assert_eq!(count(&mut db, "SELECT * FROM eventq_internal.restoring"), 0);

    // the staged events come after every restored one, in the order they were published;
    // a new event after them
    db.batch_execute("SELECT eventq.publish('orders', 'seller.42.order.new', key => 'k1')")
        .unwrap();
    wait_for("the new event", Duration::from_secs(10), || {
        match count(&mut db, "SELECT * FROM eventq.events WHERE stream = 'orders'") {
            10 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    let subjects =
        column(&mut db, "SELECT subject FROM eventq.events WHERE stream = 'orders' ORDER BY seq");
    assert_eq!(
        subjects[6..],
        [
            "seller.42.order.created",
            "seller.43.order.paid",
            "seller.42.order.paid",
            "seller.42.order.new"
        ]
    );
    let seqs = column(&mut db, "SELECT seq::text FROM eventq.events ORDER BY seq");
    assert_eq!(seqs.len(), 11);

    // the work goes on where it stopped
    let mailer = column(&mut db, "SELECT subject FROM eventq.pull('mailer', 20) ORDER BY seq");
    assert_eq!(mailer.len(), 7, "{mailer:?}"); // 3 restored available, 4 new (2 running, 1 retryable wait)
    let mut ledger = Vec::new();
    loop {
        let rows = db.query("SELECT task_id, key FROM eventq.pull('ledger', 10)", &[]).unwrap();
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            ledger.push(row.get::<_, String>(1));
            db.execute("SELECT eventq.ack('ledger', ARRAY[$1::bigint])", &[&row.get::<_, i64>(0)])
                .unwrap();
        }
    }
    // key k0 goes on in order; k1's task in flight at the dump still runs: k1 waits
    assert_eq!(ledger, ["k0", "k0", "k0"]);
    assert_eq!(
        column(&mut db, "SELECT subject FROM eventq.fetch('reader', 1)"),
        ["seller.42.order.paid"]
    );
    // the dedup claims hold
    let first: String =
        db.query_one("SELECT event_id::text FROM eventq.events WHERE seq = 1", &[]).unwrap().get(0);
    let again: String = db
        .query_one(
            "SELECT eventq.publish('orders', 'seller.42.order.created', dedup_key => 'd1')::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(again, first);
    // grants hold: roles work as before
    let mut billing = cluster.connect_as(database, "billing");
    assert_eq!(count(&mut billing, "SELECT * FROM eventq.pull('invoices', 10)"), 5);
    assert!(billing.batch_execute("SELECT eventq.publish('orders', 'x')").is_err());
    let mut tenant = cluster.connect_as(database, "tenant");
    assert!(tenant
        .batch_execute("SELECT eventq.create_consumer('t', 'orders', '{seller.*.>}')")
        .is_err());
    tenant.batch_execute("SELECT eventq.create_consumer('t', 'orders', '{seller.42.>}')").unwrap();
    // new rows get new ids
    db.batch_execute(
        "SELECT eventq.create_stream('later'); SELECT eventq.create_consumer('later_c', 'later')",
    )
    .unwrap();
}

#[test]
fn pg_dump_and_pg_restore_keep_everything() {
    let cluster = Cluster::start_without_extension(
        "backup",
        &[
            PRELOAD,
            "eventq.database = 'restored, parallel, plain'",
            "eventq.maintenance_interval = '100ms'",
        ],
    );
    populate(&cluster);
    let expected = contents(&mut cluster.connect_to("live"));
    assert!(expected.len() > 20, "{expected:#?}");

    let archive = cluster.dir.join("live.dump");
    let archive = archive.to_str().unwrap();
    cluster.run("pg_dump", &["-Fc", "-f", archive, "live"]);
    let script = cluster.dir.join("live.sql");
    let script = script.to_str().unwrap();
    cluster.run("pg_dump", &["-Fp", "-f", script, "live"]);

    let mut su = cluster.connect();
    for database in ["restored", "parallel", "plain"] {
        su.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    }
    cluster.run("pg_restore", &["-d", "restored", archive]);
    check_restored(&cluster, "restored", &expected);
    cluster.run("pg_restore", &["-j", "2", "-d", "parallel", archive]);
    check_restored(&cluster, "parallel", &expected);
    cluster.run("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "plain", "-f", script]);
    check_restored(&cluster, "plain", &expected);
    assert!(!cluster.log().contains("eventq: error"), "{}", cluster.log());
}

/// While the session restoring a dump is connected, the worker leaves the half-loaded
/// database alone: a staged event whose stream is not loaded yet is not thrown away as the
/// event of a dropped stream, and nothing is numbered before the log's head is loaded.
#[test]
fn nothing_is_drained_while_a_restore_is_loading() {
    let cluster = Cluster::start_without_extension(
        "backup-guard",
        &[PRELOAD, "eventq.maintenance_interval = '50ms'"],
    );
    // as pg_restore does: row_security off, the extension first, then each table's rows
    let mut restore = cluster.connect();
    restore.batch_execute("SET row_security = off; CREATE EXTENSION eventq").unwrap();
    restore
        .batch_execute(
            "INSERT INTO eventq_internal.staged (slot, xid, id, stream_id, subject, payload, origin)
             VALUES (1, '5000000', gen_random_uuid(), 1, 'restored.staged', '{}', 42)",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut other = cluster.connect();
    assert_eq!(count(&mut other, "SELECT * FROM eventq_internal.staged"), 1);
    assert_eq!(count(&mut other, "SELECT * FROM eventq.workers"), 1);
    restore
        .batch_execute(
            "INSERT INTO eventq_internal.streams (id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'orders');
             INSERT INTO eventq_internal.events (stream_id, seq, id, subject, payload, published_at)
             VALUES (1, 7, gen_random_uuid(), 'restored.drained', '{}', now());
             INSERT INTO eventq_internal.drains (last_seq, events) VALUES (7, 1);
             SELECT setval('eventq_internal.event_seq', 7);",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&mut other, "SELECT * FROM eventq_internal.staged"), 1);
    // a publish meanwhile waits for its turn too, and comes after the restored events
    other.batch_execute("SELECT eventq.publish('orders', 'published.here')").unwrap();
    drop(restore);
    wait_for("the drain after the restore", Duration::from_secs(10), || {
        match count(&mut other, "SELECT * FROM eventq.events") {
            3 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    assert_eq!(
        column(&mut other, "SELECT subject || ':' || seq FROM eventq.events ORDER BY seq"),
        ["restored.drained:7", "restored.staged:8", "published.here:9"]
    );
    assert_eq!(count(&mut other, "SELECT * FROM eventq_internal.restoring"), 0);
}

/// A parallel restore's first session creates the extension and leaves; its workers then
/// load the rows, and it comes back at the end. The database waits throughout: for the
/// sessions of pg_restore, and for a few seconds between them.
#[test]
fn a_parallel_restore_is_waited_for_too() {
    let cluster = Cluster::start_without_extension(
        "backup-parallel",
        &[PRELOAD, "eventq.maintenance_interval = '50ms'"],
    );
    let connect = |application: &str| {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(cluster.port)
            .user("postgres")
            .dbname("postgres")
            .application_name(application)
            .connect(postgres::NoTls)
            .unwrap()
    };
    let mut leader = connect("pg_restore");
    leader.batch_execute("SET row_security = off; CREATE EXTENSION eventq").unwrap();
    drop(leader);
    std::thread::sleep(Duration::from_millis(1000));
    let mut loader = connect("pg_restore");
    loader
        .batch_execute(
            "SET row_security = off;
             INSERT INTO eventq_internal.streams (id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'orders');
             INSERT INTO eventq_internal.staged (slot, xid, id, stream_id, subject, payload, origin)
             VALUES (1, '5000000', gen_random_uuid(), 1, 'restored.staged', '{}', 42)",
        )
        .unwrap();
    let mut other = connect("app");
    // past the few seconds of grace: only the loader's connection holds the drains off
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(
        count(&mut other, "SELECT * FROM eventq_internal.staged"),
        1,
        "drained while loading"
    );
    loader
        .batch_execute(
            "INSERT INTO eventq_internal.events (stream_id, seq, id, subject, payload, published_at)
             VALUES (1, 7, gen_random_uuid(), 'restored.drained', '{}', now());
             INSERT INTO eventq_internal.drains (last_seq, events) VALUES (7, 1);
             SELECT setval('eventq_internal.event_seq', 7);
             SELECT setval('eventq_internal.streams_id_seq', 1);",
        )
        .unwrap();
    drop(loader);
    wait_for("the drain after the restore", Duration::from_secs(20), || {
        match count(&mut other, "SELECT * FROM eventq.events") {
            2 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    assert_eq!(
        column(&mut other, "SELECT subject || ':' || seq FROM eventq.events ORDER BY seq"),
        ["restored.drained:7", "restored.staged:8"]
    );
    // staged events of a stream nobody knows are left alone, never deleted as the events
    // of a dropped stream; those of a dropped stream go
    other
        .batch_execute(
            "INSERT INTO eventq_internal.staged (slot, xid, id, stream_id, subject, payload, origin)
             VALUES (1, '1', gen_random_uuid(), 77, 'unknown', '{}', 42);
             SELECT eventq.create_stream('gone');
             SELECT eventq.publish('gone', 'x');
             SELECT eventq.drop_stream('gone');",
        )
        .unwrap();
    common::script(&mut other, "SELECT eventq.run_maintenance();");
    assert_eq!(column(&mut other, "SELECT subject FROM eventq_internal.staged"), ["unknown"]);
}
