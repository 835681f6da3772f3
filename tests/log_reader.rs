//! Log consumers against a real server: a reader that fetches and commits in a loop, while
//! publishers commit late or roll back and other sessions drain, sees every committed event
//! exactly once, in strictly increasing seq, and never a rolled-back one.

mod common;

use common::{Cluster, Rng};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn publisher(cluster: &Cluster, seed: u64) -> (HashSet<String>, HashSet<String>) {
    let mut db = cluster.connect();
    let mut rng = Rng::new(seed);
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for _ in 0..80 {
        let mut tx = db.transaction().unwrap();
        let mut ids = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let subject = if rng.chance(20) { "noise.skip" } else { "order.created" };
            let id: String = tx
                .query_one("SELECT eventq.publish('feed', $1)::text", &[&subject])
                .unwrap()
                .get(0);
            if subject != "noise.skip" {
                ids.push(id);
            }
        }
        if rng.chance(10) {
            thread::sleep(Duration::from_millis(50 + rng.below(300)));
        }
        if rng.chance(15) {
            tx.rollback().unwrap();
            rolled_back.extend(ids);
        } else {
            tx.commit().unwrap();
            committed.extend(ids);
        }
    }
    (committed, rolled_back)
}

#[test]
fn a_reader_sees_every_committed_event_once_in_increasing_seq() {
    let cluster = Arc::new(Cluster::start("log", &[]));
    let mut reader = cluster.connect();
    reader
        .batch_execute(
            "SELECT eventq.create_stream('feed');
             SELECT eventq.create_consumer('reader', 'feed', mode => 'log', subjects => '{order.>}');",
        )
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    // Another session drains too, so drains interleave with the reader's own.
    let drainer = {
        let (cluster, done) = (cluster.clone(), done.clone());
        thread::spawn(move || {
            let mut db = cluster.connect();
            while !done.load(Ordering::Relaxed) {
                db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
                thread::sleep(Duration::from_millis(7));
            }
        })
    };
    let publishers: Vec<_> = (0..4u64)
        .map(|i| {
            let cluster = cluster.clone();
            thread::spawn(move || publisher(&cluster, 40 + i))
        })
        .collect();

    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut last = 0i64;
    let mut read_batch = |reader: &mut postgres::Client, seen: &mut Vec<(i64, String)>| -> usize {
        let rows = reader
            .query("SELECT seq, event_id::text, subject FROM eventq.fetch('reader', 50)", &[])
            .unwrap();
        for row in &rows {
            let seq: i64 = row.get(0);
            assert!(seq > last, "seq went from {last} to {seq}");
            let subject: String = row.get(2);
            assert_eq!(subject, "order.created");
            last = seq;
            seen.push((seq, row.get(1)));
        }
        if !rows.is_empty() {
            reader.execute("SELECT eventq.commit('reader', $1)", &[&last]).unwrap();
        }
        rows.len()
    };

    while publishers.iter().any(|p| !p.is_finished()) {
        if read_batch(&mut reader, &mut seen) == 0 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for p in publishers {
        let (c, r) = p.join().unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    done.store(true, Ordering::Relaxed);
    drainer.join().unwrap();
    reader.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    while read_batch(&mut reader, &mut seen) > 0 {}

    let ids: HashSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "an event was read twice");
    assert_eq!(ids, committed, "the reader saw exactly the committed events");
    assert!(!rolled_back.is_empty() && rolled_back.is_disjoint(&ids));
}

#[test]
fn a_transaction_that_publishes_first_and_commits_last_is_not_skipped() {
    let cluster = Cluster::start("log-late", &[]);
    let mut reader = cluster.connect();
    reader
        .batch_execute(
            "SELECT eventq.create_stream('late');
             SELECT eventq.create_consumer('late_reader', 'late', mode => 'log');
             SELECT eventq.create_consumer('late_worker', 'late');",
        )
        .unwrap();
    let mut slow = cluster.connect();
    let mut slow_tx = slow.transaction().unwrap();
    slow_tx.execute("SELECT eventq.publish('late', 'slow')", &[]).unwrap();

    let mut fast = cluster.connect();
    fast.execute("SELECT eventq.publish('late', 'fast')", &[]).unwrap();

    let read = |reader: &mut postgres::Client| -> Vec<(i64, String)> {
        reader
            .query("SELECT seq, subject FROM eventq.fetch('late_reader')", &[])
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let first = read(&mut reader);
    assert_eq!(first.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["fast"]);
    reader.execute("SELECT eventq.commit('late_reader', $1)", &[&first[0].0]).unwrap();

    slow_tx.commit().unwrap();
    let second = read(&mut reader);
    assert_eq!(second.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["slow"]);
    assert!(second[0].0 > first[0].0, "the late commit gets a later seq");

    let tasks: Vec<String> = reader
        .query("SELECT subject FROM eventq.pull('late_worker', 10)", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tasks, ["fast", "slow"]);
}

/// A fetch that found nothing remembers the stretch of the log it read (storage::log). When
/// eventq is created anew in the database, streams and events are numbered from the start
/// again: what the session remembered must not hide the new events.
#[test]
fn what_a_session_remembers_of_the_log_does_not_outlive_it() {
    let cluster = Cluster::start("log-stretches", &[]);
    let mut db = cluster.connect();
    let setup = "SELECT eventq.create_stream('feed');
                 SELECT eventq.create_consumer('rare', 'feed', mode => 'log', subjects => '{rare}');";
    db.batch_execute(setup).unwrap();
    db.batch_execute("SELECT eventq.publish('feed', 'common') FROM generate_series(1, 50)")
        .unwrap();
    let fetched = |db: &mut postgres::Client| -> Vec<String> {
        db.query("SELECT subject FROM eventq.fetch('rare', 10)", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert!(fetched(&mut db).is_empty());
    db.batch_execute("DROP EXTENSION eventq CASCADE; CREATE EXTENSION eventq").unwrap();
    db.batch_execute(setup).unwrap();
    db.batch_execute("SELECT eventq.publish('feed', 'rare')").unwrap();
    assert_eq!(fetched(&mut db), ["rare"]);
}
