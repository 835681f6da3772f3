//! Happens-before order: if transaction A commits before transaction B starts, every event
//! of A gets a lower seq than every event of B, whoever drains them and however many drains
//! or seconds lie between; the events of one transaction keep their publish order; and key
//! ordered delivery follows seq.

mod common;

use common::{at_next_second, column, wait_for, Cluster, Rng, PRELOAD};
use postgres::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn subjects_in_seq_order(db: &mut Client, stream: &str) -> Vec<String> {
    column(db, &format!("SELECT subject FROM eventq.events WHERE stream = '{stream}' ORDER BY seq"))
}

/// Publishes in six seconds, one committed transaction each (so in different staging
/// slots), then drains once: the log and a key-ordered consumer keep the publish order.
#[test]
fn one_drain_over_several_seconds_keeps_commit_order() {
    let cluster = Cluster::start("order-seconds", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');",
    )
    .unwrap();
    for n in 1..=6 {
        at_next_second();
        db.execute("SELECT eventq.publish('s', 'n' || $1::int, key => 'k')", &[&n]).unwrap();
    }
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(subjects_in_seq_order(&mut db, "s"), ["n1", "n2", "n3", "n4", "n5", "n6"]);
    let mut delivered = Vec::new();
    for _ in 0..6 {
        let rows = db.query("SELECT task_id, subject FROM eventq.pull('keyed', 10)", &[]).unwrap();
        assert_eq!(rows.len(), 1, "one task of a key at a time");
        let task: i64 = rows[0].get(0);
        delivered.push(rows[0].get::<_, String>(1));
        db.execute("SELECT eventq.ack('keyed', ARRAY[$1::bigint])", &[&task]).unwrap();
    }
    assert_eq!(delivered, ["n1", "n2", "n3", "n4", "n5", "n6"]);
}

/// Two sessions take turns, each publishing after the other's commit, while the worker
/// drains: seq follows the turns.
#[test]
fn sessions_taking_turns_get_seq_in_turn_order_with_the_worker() {
    let cluster = Cluster::start("order-turns", &[PRELOAD]);
    let mut setup = cluster.connect();
    setup
        .batch_execute(
            "SELECT eventq.create_stream('turns');
             SELECT eventq.create_consumer('keyed', 'turns', ordering => 'key');",
        )
        .unwrap();
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    for n in 0..300 {
        let db = if n % 2 == 0 { &mut a } else { &mut b };
        db.execute("SELECT eventq.publish('turns', 'n' || $1::int, key => 'k')", &[&n]).unwrap();
    }
    wait_for("the worker to drain", Duration::from_secs(20), || {
        let n: i64 = setup
            .query_one("SELECT count(*) FROM eventq.events WHERE stream = 'turns'", &[])
            .unwrap()
            .get(0);
        if n == 300 {
            Ok(())
        } else {
            Err(format!("{n} drained"))
        }
    });
    let expected: Vec<String> = (0..300).map(|n| format!("n{n}")).collect();
    assert_eq!(subjects_in_seq_order(&mut setup, "turns"), expected);
}

/// The events of one transaction, published across savepoints and around other sessions'
/// commits and drains, keep their publish order and come after what committed before the
/// transaction started.
#[test]
fn a_transaction_keeps_its_publish_order_across_savepoints_and_drains() {
    let cluster = Cluster::start("order-tx", &[]);
    let mut db = cluster.connect();
    let mut other = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('tx')").unwrap();
    other.batch_execute("SELECT eventq.publish('tx', 'before')").unwrap();
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SELECT eventq.publish('tx', 'a1')").unwrap();
    tx.batch_execute("SAVEPOINT s1; SELECT eventq.publish('tx', 'a2'); RELEASE SAVEPOINT s1")
        .unwrap();
    tx.batch_execute("SAVEPOINT s2; SELECT eventq.publish('tx', 'gone'); ROLLBACK TO SAVEPOINT s2")
        .unwrap();
    common::script(
        &mut other,
        "SELECT eventq.publish('tx', 'during'); SELECT eventq.run_maintenance()",
    );
    at_next_second();
    tx.batch_execute("SELECT eventq.publish('tx', 'a3')").unwrap();
    tx.batch_execute("SAVEPOINT s3; SELECT eventq.publish('tx', 'a4')").unwrap();
    tx.commit().unwrap();
    common::script(
        &mut other,
        "SELECT eventq.publish('tx', 'after'); SELECT eventq.run_maintenance()",
    );
    assert_eq!(
        subjects_in_seq_order(&mut db, "tx"),
        ["before", "during", "a1", "a2", "a3", "a4", "after"]
    );
}

/// Publishers commit concurrently while the worker and readers drain. Whenever a commit
/// had returned before another transaction began, the first one's events come first.
#[test]
fn happens_before_holds_under_concurrent_publishers_and_drains() {
    let cluster = Arc::new(Cluster::start("order-concurrent", &[PRELOAD]));
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('hb');
         SELECT eventq.create_consumer('reader', 'hb', mode => 'log');",
    )
    .unwrap();
    let origin = Instant::now();
    // id -> (began, committed) in microseconds since origin
    let spans: Arc<Mutex<HashMap<String, (u128, u128)>>> = Arc::default();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (cluster, spans) = (cluster.clone(), spans.clone());
            thread::spawn(move || {
                let mut db = cluster.connect();
                let mut rng = Rng::new(p + 7);
                for _ in 0..150 {
                    let began = origin.elapsed().as_micros();
                    let mut tx = db.transaction().unwrap();
                    let mut ids = Vec::new();
                    for _ in 0..1 + rng.below(3) {
                        let id: String = tx
                            .query_one("SELECT eventq.publish('hb', 'e')::text", &[])
                            .unwrap()
                            .get(0);
                        ids.push(id);
                    }
                    if rng.chance(10) {
                        thread::sleep(Duration::from_millis(rng.below(30)));
                    }
                    tx.commit().unwrap();
                    let committed = origin.elapsed().as_micros();
                    let mut spans = spans.lock().unwrap();
                    for id in ids {
                        spans.insert(id, (began, committed));
                    }
                }
            })
        })
        .collect();
    // A reader that drains by itself too, so drains interleave.
    let reader = {
        let cluster = cluster.clone();
        thread::spawn(move || {
            let mut db = cluster.connect();
            for _ in 0..200 {
                db.batch_execute("SELECT count(*) FROM eventq.fetch('reader', 1000)").unwrap();
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for p in publishers {
        p.join().unwrap();
    }
    reader.join().unwrap();
    let spans = spans.lock().unwrap().clone();
    wait_for("everything drained", Duration::from_secs(20), || {
        let n: i64 = db
            .query_one("SELECT count(*) FROM eventq.events WHERE stream = 'hb'", &[])
            .unwrap()
            .get(0);
        if n as usize == spans.len() {
            Ok(())
        } else {
            Err(format!("{n} of {}", spans.len()))
        }
    });
    let mut by_seq: Vec<(i64, u128, u128)> = db
        .query("SELECT event_id::text, seq FROM eventq.events WHERE stream = 'hb'", &[])
        .unwrap()
        .into_iter()
        .map(|r| {
            let (began, committed) = spans[&r.get::<_, String>(0)];
            (r.get(1), began, committed)
        })
        .collect();
    by_seq.sort();
    // For every event, no later event (higher seq) may belong to a transaction that
    // committed before this event's transaction began.
    let mut earliest_commit_after = u128::MAX;
    for &(seq, began, committed) in by_seq.iter().rev() {
        assert!(
            earliest_commit_after >= began,
            "seq {seq}: a transaction that committed before this one began got a higher seq"
        );
        earliest_commit_after = earliest_commit_after.min(committed);
    }
}
