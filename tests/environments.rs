//! The ways Postgres is run around eventq: publications FOR ALL TABLES, read-only
//! transactions, prepared transactions, hot standbys, and staging tables a DBA has added
//! triggers to.

mod common;

use common::{column, count, fails_with, wait_for, Cluster, PRELOAD};
use std::time::Duration;

/// A publication FOR ALL TABLES (CDC tools, blue/green upgrades) includes eventq's tables;
/// every delete eventq makes must still work: drains, retention, cleanup, drops.
#[test]
fn a_publication_for_all_tables_does_not_stop_the_queue() {
    let cluster = Cluster::start("env-publication", &[PRELOAD, "wal_level = logical"]);
    let mut db = cluster.connect();
    db.batch_execute(
        "CREATE PUBLICATION everything FOR ALL TABLES;
         SELECT eventq.create_stream('s', retention => '1 second');
         SELECT eventq.create_consumer('c', 's', ordering => 'key');
         SELECT eventq.create_consumer('l', 's', mode => 'log');
         SELECT eventq.publish('s', 'a', key => 'k', dedup_key => 'd1');
         SELECT eventq.publish('s', 'b', key => 'k');",
    )
    .unwrap();
    // the worker drains
    wait_for("the worker to drain", Duration::from_secs(10), || {
        match count(&mut db, "SELECT 1 FROM eventq.events WHERE stream = 's'") {
            2 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    let pulled = column(&mut db, "SELECT task_id::text FROM eventq.pull('c', 10)");
    assert_eq!(pulled.len(), 1);
    db.batch_execute(&format!("SELECT eventq.ack('c', ARRAY[{}])", pulled[0])).unwrap();
    common::script(&mut db, "SELECT eventq.publish('s', 'c'); SELECT eventq.run_maintenance()");
    std::thread::sleep(Duration::from_millis(1200));
    // retention, with key hand-over, expired counts and dedup claims
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.events"), 0, "{report}");
    db.batch_execute(
        "SELECT eventq.drop_consumer('c');
         SELECT eventq.drop_stream('s', force => true);",
    )
    .unwrap();
    assert!(!cluster.log().contains("replica identity"), "{}", cluster.log());
}

/// publish refuses in a read-only transaction (25006); fetch and the views work there,
/// also with events waiting in staging.
#[test]
fn read_only_transactions_read_and_refuse_to_publish() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Cluster::start("env-read-only", settings);
        let mut db = cluster.connect();
        db.batch_execute(
            "SELECT eventq.create_stream('s');
             SELECT eventq.create_consumer('l', 's', mode => 'log');
             SELECT eventq.create_consumer('c', 's');
             SELECT eventq.publish('s', 'a');",
        )
        .unwrap();
        let mut reader = cluster.connect();
        reader.batch_execute("BEGIN READ ONLY").unwrap();
        assert_eq!(column(&mut reader, "SELECT subject FROM eventq.fetch('l')"), ["a"]);
        assert_eq!(column(&mut reader, "SELECT subject FROM eventq.newest_events('s')"), ["a"]);
        reader
            .batch_execute(
                "SELECT * FROM eventq.streams; SELECT * FROM eventq.consumers;
                 SELECT * FROM eventq.events; SELECT * FROM eventq.tasks; SELECT * FROM eventq.attempts",
            )
            .unwrap();
        assert_eq!(fails_with(&mut reader, "SELECT eventq.publish('s', 'b')"), "25006");
        reader.batch_execute("ROLLBACK; BEGIN READ ONLY").unwrap();
        assert_eq!(
            fails_with(&mut reader, "SELECT eventq.publish_batch('s', '{b}', '{\"{}\"}')"),
            "25006"
        );
        reader.batch_execute("ROLLBACK; BEGIN READ ONLY").unwrap();
        assert_eq!(fails_with(&mut reader, "SELECT * FROM eventq.pull('c')"), "25006");
        reader.batch_execute("ROLLBACK; BEGIN READ ONLY").unwrap();
        assert_eq!(fails_with(&mut reader, "SELECT eventq.run_maintenance()"), "25006");
        reader.batch_execute("ROLLBACK").unwrap();
        // a read-only default on the database does not stop publishing where it is allowed
        db.batch_execute("SET default_transaction_read_only = on").unwrap();
        assert_eq!(fails_with(&mut db, "SELECT eventq.publish('s', 'c')"), "25006");
    }
}

/// A prepared transaction's events appear when it commits (from another session), in
/// order, and a pull right after COMMIT PREPARED sees them, with or without the worker.
#[test]
fn prepared_transactions_deliver_at_commit_prepared() {
    for settings in
        [&["max_prepared_transactions = 10"][..], &[PRELOAD, "max_prepared_transactions = 10"][..]]
    {
        let cluster = Cluster::start("env-2pc", settings);
        let mut db = cluster.connect();
        db.batch_execute(
            "SELECT eventq.create_stream('s');
             SELECT eventq.create_consumer('c', 's', ordering => 'key');",
        )
        .unwrap();
        let mut publisher = cluster.connect();
        for round in 0..20 {
            publisher
                .batch_execute(&format!(
                    "BEGIN; SELECT eventq.publish('s', 'p{round}a', key => 'k');
                     SELECT eventq.publish('s', 'p{round}b', key => 'k');
                     PREPARE TRANSACTION 'pub{round}'"
                ))
                .unwrap();
            assert!(column(&mut db, "SELECT subject FROM eventq.pull('c')").is_empty());
            db.batch_execute(&format!("COMMIT PREPARED 'pub{round}'")).unwrap();
            let first = db.query_one("SELECT task_id, subject FROM eventq.pull('c')", &[]).unwrap();
            assert_eq!(first.get::<_, String>(1), format!("p{round}a"));
            db.execute("SELECT eventq.ack('c', ARRAY[$1::bigint])", &[&first.get::<_, i64>(0)])
                .unwrap();
            let second =
                db.query_one("SELECT task_id, subject FROM eventq.pull('c')", &[]).unwrap();
            assert_eq!(second.get::<_, String>(1), format!("p{round}b"));
            db.execute("SELECT eventq.ack('c', ARRAY[$1::bigint])", &[&second.get::<_, i64>(0)])
                .unwrap();
        }
        // a prepared transaction that rolls back leaves nothing
        publisher
            .batch_execute("BEGIN; SELECT eventq.publish('s', 'never'); PREPARE TRANSACTION 'gone'")
            .unwrap();
        common::script(&mut db, "ROLLBACK PREPARED 'gone'; SELECT eventq.run_maintenance()");
        assert_eq!(count(&mut db, "SELECT 1 FROM eventq.events WHERE subject = 'never'"), 0);
    }
}

/// A hot standby made with pg_basebackup -R reads what has been replicated: fetch and the
/// views work there; publishing and pulling are refused as writes (25006).
#[test]
fn a_hot_standby_reads_the_replicated_log() {
    let primary = Cluster::start("env-primary", &[PRELOAD, "max_wal_senders = 4"]);
    let mut db = primary.connect();
    common::script(
        &mut db,
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('l', 's', mode => 'log');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.publish('s', 'before');
         SELECT eventq.run_maintenance();",
    );
    let standby = primary.standby("env-standby");
    let mut replica = standby.connect();
    assert_eq!(column(&mut replica, "SELECT pg_is_in_recovery()::text"), ["true"]);
    db.batch_execute("SELECT eventq.publish('s', 'after')").unwrap();
    wait_for("the event to be drained and replicated", Duration::from_secs(20), || {
        let seen = column(&mut replica, "SELECT subject FROM eventq.fetch('l', 10)");
        if seen == ["before", "after"] {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    replica
        .batch_execute(
            "SELECT * FROM eventq.streams; SELECT * FROM eventq.consumers;
             SELECT * FROM eventq.events; SELECT * FROM eventq.tasks; SELECT * FROM eventq.attempts",
        )
        .unwrap();
    assert_eq!(
        column(&mut replica, "SELECT available::text FROM eventq.consumers WHERE name = 'c'"),
        ["2"]
    );
    assert_eq!(
        column(&mut replica, "SELECT subject FROM eventq.newest_events('s')"),
        ["after", "before"]
    );
    // The counts and a log consumer's lag, read on the standby.
    assert_eq!(
        column(&mut replica, "SELECT lag::text FROM eventq.consumers WHERE name = 'l'"),
        ["2"]
    );
    common::assert_counts_match_rows(&mut replica, "on a hot standby");
    assert_eq!(fails_with(&mut replica, "SELECT eventq.publish('s', 'x')"), "25006");
    assert_eq!(fails_with(&mut replica, "SELECT * FROM eventq.pull('c')"), "25006");
    assert_eq!(fails_with(&mut replica, "SELECT eventq.commit('l', 1)"), "25006");
    assert!(!standby.log().contains("PANIC"), "{}", standby.log());
}

/// A trigger a DBA adds to staging fires for every publish: the fast path steps aside. It
/// runs inside eventq's functions, with their search_path (pg_catalog only): it names its
/// own objects with their schema, as any code run by a SECURITY DEFINER function must.
#[test]
fn triggers_on_staging_fire() {
    let cluster = Cluster::start("env-trigger", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "CREATE TABLE audit (subject text);
         CREATE FUNCTION audit_staged() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.audit VALUES (NEW.subject); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT ON eventq_internal.staged
           FOR EACH ROW EXECUTE FUNCTION audit_staged();
         SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.publish('s', 'one');
         SELECT eventq.publish('s', 'two', dedup_key => 'x');
         SELECT eventq.publish_batch('s', '{three}', '{\"{}\"}');",
    )
    .unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM audit ORDER BY 1"), ["one", "three", "two"]);
    assert_eq!(
        column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"),
        ["one", "two", "three"]
    );
    // and so does a CHECK constraint
    db.batch_execute(
        "DROP TRIGGER audit ON eventq_internal.staged;
         ALTER TABLE eventq_internal.staged ADD CONSTRAINT no_secrets CHECK (subject <> 'secret');",
    )
    .unwrap();
    assert_eq!(fails_with(&mut db, "SELECT eventq.publish('s', 'secret')"), "23514");
    db.batch_execute("SELECT eventq.publish('s', 'fine')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["fine"]);
}
