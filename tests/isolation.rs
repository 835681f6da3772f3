//! Isolation levels: nothing committed is lost, and reads see what committed before them,
//! under REPEATABLE READ and SERIALIZABLE, also when the database makes them the default.

mod common;

use common::{at_next_second, column, count, fails_with, wait_for, Cluster, PRELOAD};
use postgres::{Client, IsolationLevel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

fn setup(db: &mut Client) {
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.create_consumer('l', 's', mode => 'log');",
    )
    .unwrap();
}

/// run_maintenance() inside a REPEATABLE READ or SERIALIZABLE transaction whose snapshot
/// predates a commit used to truncate that commit's staging slot: the event was gone. It now
/// refuses to run inside a transaction block, and the event is drained later.
#[test]
fn maintenance_in_an_old_snapshot_loses_nothing() {
    let cluster = Cluster::start("iso-maintenance", &[]);
    let mut db = cluster.connect();
    setup(&mut db);
    let mut other = cluster.connect();
    for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
        let mut tx = db.build_transaction().isolation_level(level).start().unwrap();
        tx.batch_execute("SELECT count(*) FROM eventq.events").unwrap();
        at_next_second();
        other.batch_execute("SELECT eventq.publish('s', 'late')").unwrap();
        // two seconds on, the slot of that publish is idle and would be truncated
        thread::sleep(Duration::from_millis(2100));
        match tx.batch_execute("SELECT eventq.run_maintenance()") {
            Ok(()) => panic!("run_maintenance() ran inside a transaction block"),
            Err(e) => assert_eq!(common::sqlstate(&e), "25001"),
        }
        drop(tx);
    }
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["late", "late"]);
}

/// With `default_transaction_isolation = serializable` on the database, every statement is
/// a serializable transaction: the worker, run_maintenance(), pulls, acks and log reads
/// still deliver every committed event exactly once to each consumer.
#[test]
fn a_serializable_database_delivers_everything() {
    let cluster = Arc::new(Cluster::start("iso-serializable", &[PRELOAD]));
    let mut db = cluster.connect();
    setup(&mut db);
    db.batch_execute("ALTER DATABASE postgres SET default_transaction_isolation = 'serializable'")
        .unwrap();
    // the worker picks the database's settings up when it connects: restart it
    let old: i32 = db
        .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
        .unwrap()
        .get(0);
    db.batch_execute(&format!("SELECT pg_terminate_backend({old})")).unwrap();
    wait_for("a new worker", Duration::from_secs(20), || {
        match db
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
            .unwrap()
        {
            Some(r) if r.get::<_, i32>(0) != old => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let mut db = cluster.connect();
    assert_eq!(column(&mut db, "SHOW transaction_isolation"), ["serializable"]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
            thread::spawn(move || {
                let mut db = cluster.connect();
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    let rows =
                        match db.query("SELECT task_id, attempt FROM eventq.pull('c', 5)", &[]) {
                            Ok(rows) => rows,
                            Err(e) => {
                                // a serialization failure of the worker's own statement is
                                // retried, as any client of a serializable database does
                                assert_eq!(common::sqlstate(&e), "40001", "{e}");
                                errors += 1;
                                continue;
                            }
                        };
                    for row in rows {
                        let (task, attempt): (i64, i32) = (row.get(0), row.get(1));
                        // like any serializable transaction, an ack that fails to
                        // serialize is retried by the client
                        loop {
                            match db.query_one(
                                "SELECT eventq.ack('c', ARRAY[$1::bigint], ARRAY[$2::int])",
                                &[&task, &attempt],
                            ) {
                                Ok(row) => {
                                    if row.get::<_, i32>(0) == 1 {
                                        acked.lock().unwrap().push(task);
                                    }
                                    break;
                                }
                                Err(e) => {
                                    assert_eq!(common::sqlstate(&e), "40001", "{e}");
                                    errors += 1;
                                }
                            }
                        }
                    }
                }
                errors
            })
        })
        .collect();
    let mut publishers = Vec::new();
    for p in 0..2 {
        let cluster = cluster.clone();
        publishers.push(thread::spawn(move || {
            let mut db = cluster.connect();
            for n in 0..200 {
                db.execute("SELECT eventq.publish('s', 'p' || $1::int)", &[&(p * 1000 + n)])
                    .unwrap();
                if n % 50 == 0 {
                    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
                }
            }
        }));
    }
    for p in publishers {
        p.join().unwrap();
    }
    wait_for("every task acked", Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        if n == 400 {
            Ok(())
        } else {
            Err(format!("{n} acked"))
        }
    });
    stop.store(true, Ordering::Relaxed);
    let errors: i32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    acked.dedup();
    assert_eq!(acked.len(), 400, "each task acked once");
    eprintln!("{errors} calls failed to serialize and were retried");
    // the log reader, serializable too, reads all of it in order
    let seqs: Vec<i64> = db
        .query("SELECT seq FROM eventq.fetch('l', 1000)", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs.len(), 400);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// A REPEATABLE READ transaction that begins after a publish committed sees the event in
/// `pull` and `fetch`, with or without the worker, even when someone else drained it after
/// the transaction's snapshot was taken.
#[test]
fn repeatable_read_reads_what_committed_before_it() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Cluster::start("iso-rr-read", settings);
        let mut db = cluster.connect();
        setup(&mut db);
        let mut publisher = cluster.connect();
        for n in 0..20 {
            publisher.execute("SELECT eventq.publish('s', 'e' || $1::int)", &[&n]).unwrap();
            let mut tx = db
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .start()
                .unwrap();
            tx.batch_execute("SELECT 1").unwrap();
            // drained by another session after this snapshot was taken
            if n % 2 == 0 {
                publisher.batch_execute("SELECT eventq.run_maintenance()").unwrap();
            }
            let pulled = column(&mut tx, "SELECT subject FROM eventq.pull('c', 10)");
            assert_eq!(pulled, [format!("e{n}")], "pull in round {n}");
            let fetched = column(&mut tx, "SELECT subject FROM eventq.fetch('l', 10)");
            assert_eq!(fetched, [format!("e{n}")], "fetch in round {n}");
            tx.batch_execute(
                "SELECT eventq.commit('l', (SELECT max(seq) FROM eventq.fetch('l', 10)))",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'running'"), 20);
        assert_eq!(fails_with(&mut db, "BEGIN; SELECT eventq.run_maintenance()"), "25001");
        db.batch_execute("ROLLBACK").unwrap();
    }
}

/// `newest_events` reads in the caller's snapshot, as `eventq.events` does: inside a
/// REPEATABLE READ transaction, an event drained after it began shows in neither, page
/// after page.
#[test]
fn newest_events_agrees_with_the_events_view_in_repeatable_read() {
    let cluster = Cluster::start("iso-newest", &[]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.publish('s', 'a')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    let mut reader = cluster.connect();
    let newest = "SELECT subject FROM eventq.newest_events('s')";
    let view = "SELECT subject FROM eventq.events WHERE stream = 's' ORDER BY seq DESC";
    reader.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    assert_eq!(common::column(&mut reader, newest), ["a"]);
    db.batch_execute("SELECT eventq.publish('s', 'b')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(common::column(&mut reader, newest), ["a"]);
    assert_eq!(common::column(&mut reader, view), ["a"]);
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(common::column(&mut reader, newest), ["b", "a"]);
}
