//! Read after commit: a pull or fetch that starts after a publish committed sees the event,
//! with the worker, without it, inside transaction blocks and read-only transactions.

mod common;

use common::{column, Cluster, PRELOAD};
use postgres::Client;

fn setup(db: &mut Client) {
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.create_consumer('l', 's', mode => 'log');",
    )
    .unwrap();
}

/// `rounds` times: one session publishes and commits, another pulls (and fetches) at once.
fn publish_then_read(cluster: &Cluster, rounds: usize, block: &str) {
    let mut publisher = cluster.connect();
    let mut reader = cluster.connect();
    for n in 0..rounds {
        let subject = format!("e{n}");
        publisher.execute("SELECT eventq.publish('s', $1)", &[&subject]).unwrap();
        if !block.is_empty() {
            reader.batch_execute(block).unwrap();
        }
        let pulled = column(&mut reader, "SELECT subject FROM eventq.pull('c', 10)");
        let fetched = column(&mut reader, "SELECT subject FROM eventq.fetch('l', 10)");
        if !block.is_empty() {
            reader.batch_execute("COMMIT").unwrap();
        }
        reader
            .batch_execute("SELECT eventq.commit('l', (SELECT max(seq) FROM eventq.fetch('l', 10)))")
            .unwrap();
        assert_eq!(pulled, [subject.clone()], "pull, round {n} ({block:?})");
        assert_eq!(fetched, [subject], "fetch, round {n} ({block:?})");
    }
}

#[test]
fn with_the_worker() {
    let cluster = Cluster::start("rac-worker", &[PRELOAD]);
    setup(&mut cluster.connect());
    publish_then_read(&cluster, 200, "");
    publish_then_read(&cluster, 50, "BEGIN");
    publish_then_read(&cluster, 20, "BEGIN ISOLATION LEVEL REPEATABLE READ");
}

#[test]
fn without_the_worker() {
    let cluster = Cluster::start("rac-alone", &[]);
    setup(&mut cluster.connect());
    publish_then_read(&cluster, 200, "");
    // inside a transaction block a helper process drains
    publish_then_read(&cluster, 20, "BEGIN");
    publish_then_read(&cluster, 10, "BEGIN ISOLATION LEVEL SERIALIZABLE");
}

#[test]
fn with_the_worker_switched_off() {
    let cluster = Cluster::start("rac-off", &[PRELOAD, "eventq.worker_enabled = off"]);
    setup(&mut cluster.connect());
    publish_then_read(&cluster, 100, "");
    publish_then_read(&cluster, 20, "BEGIN");
}

#[test]
fn fetch_in_read_only_transactions() {
    for settings in [&[][..], &[PRELOAD][..]] {
        let cluster = Cluster::start("rac-read-only", settings);
        let mut db = cluster.connect();
        setup(&mut db);
        let mut reader = cluster.connect();
        for n in 0..20 {
            let subject = format!("e{n}");
            db.execute("SELECT eventq.publish('s', $1)", &[&subject]).unwrap();
            reader.batch_execute("BEGIN READ ONLY").unwrap();
            let fetched = column(&mut reader, "SELECT subject FROM eventq.fetch('l', 100)");
            reader.batch_execute("COMMIT").unwrap();
            assert_eq!(fetched.last(), Some(&subject), "round {n}");
        }
    }
}

/// After a restart, what was staged before it is drained before a pull reads (the
/// counters of shared memory start afresh).
#[test]
fn after_a_restart() {
    let cluster = Cluster::start("rac-restart", &[PRELOAD, "eventq.worker_enabled = off"]);
    let mut db = cluster.connect();
    setup(&mut db);
    db.batch_execute("SELECT eventq.publish('s', 'before')").unwrap();
    drop(db);
    cluster.pg_ctl(&["restart"]);
    let mut db = cluster.connect();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["before"]);
}
