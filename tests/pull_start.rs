//! Pulls start where their consumer's lowest available task can be (src/pull_start.rs),
//! past the dead index entries of everything leased before. Every way a task becomes
//! available again below that start must bring pulls back down to it: a pull rolled back
//! (whole, to a savepoint, after an earlier savepoint was released, or prepared and then
//! rolled back), rows someone else locked, a retry coming due, an expired lease, a
//! redrive, a retry brought forward, a key handed on, consumer ids starting over. Each is tested after other pulls
//! have moved the start past the task, immediately (well within the age after which a start
//! is reset anyway). The worker is off.

mod common;

use common::{column, Cluster};
use postgres::Client;

fn cluster(name: &str) -> Cluster {
    Cluster::start(
        name,
        &[
            "shared_preload_libraries = 'eventq'",
            "eventq.worker_enabled = off",
            "max_prepared_transactions = 4",
        ],
    )
}

fn pull(db: &mut Client, consumer: &str, max: i32) -> Vec<i64> {
    db.query(&format!("SELECT task_id FROM eventq.pull('{consumer}', {max})"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn setup(db: &mut Client, consumer: &str, events: i32) {
    db.batch_execute(&format!(
        "SELECT eventq.create_stream('{consumer}_s');
         SELECT eventq.create_consumer('{consumer}', '{consumer}_s');
         SELECT eventq.publish('{consumer}_s', 'e') FROM generate_series(1, {events});"
    ))
    .unwrap();
}

fn range(from: i64, to: i64) -> Vec<i64> {
    (from..=to).collect()
}

#[test]
fn tasks_of_a_rolled_back_pull_are_pulled_next() {
    let cluster = cluster("pull-start-rollback");
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    setup(&mut b, "c", 60);
    // the first task, acked: the others follow it one by one
    let base = pull(&mut b, "c", 1)[0];
    b.batch_execute(&format!("SELECT eventq.ack('c', ARRAY[{base}])")).unwrap();

    // a whole transaction
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(pull(&mut a, "c", 5), range(base + 1, base + 5));
    assert_eq!(pull(&mut b, "c", 5), range(base + 6, base + 10));
    assert_eq!(pull(&mut b, "c", 5), range(base + 11, base + 15));
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pull(&mut b, "c", 5), range(base + 1, base + 5));

    // a savepoint, the transaction going on
    a.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    assert_eq!(pull(&mut a, "c", 5), range(base + 16, base + 20));
    assert_eq!(pull(&mut b, "c", 5), range(base + 21, base + 25));
    a.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    assert_eq!(pull(&mut b, "c", 5), range(base + 16, base + 20));
    a.batch_execute("COMMIT").unwrap();

    // a savepoint released, then another rolled back, then the whole transaction
    a.batch_execute("BEGIN; SAVEPOINT s1").unwrap();
    assert_eq!(pull(&mut a, "c", 2), range(base + 26, base + 27));
    a.batch_execute("RELEASE SAVEPOINT s1; SAVEPOINT s2").unwrap();
    assert!(a.batch_execute("SELECT 1 / 0").is_err());
    a.batch_execute("ROLLBACK TO SAVEPOINT s2").unwrap();
    assert_eq!(pull(&mut b, "c", 3), range(base + 28, base + 30));
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pull(&mut b, "c", 2), range(base + 26, base + 27));

    // a prepared transaction, rolled back from another session
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(pull(&mut a, "c", 5), range(base + 31, base + 35));
    a.batch_execute("PREPARE TRANSACTION 'pulled'").unwrap();
    assert_eq!(pull(&mut b, "c", 5), range(base + 36, base + 40));
    b.batch_execute("ROLLBACK PREPARED 'pulled'").unwrap();
    assert_eq!(pull(&mut b, "c", 5), range(base + 31, base + 35));
}

#[test]
fn tasks_made_available_again_are_pulled_at_once() {
    let cluster = cluster("pull-start-again");
    let mut worker = cluster.connect();
    let mut other = cluster.connect();
    setup(&mut worker, "r", 30);
    let all = pull(&mut worker, "r", 30);
    let (t1, t2, t3) = (all[0], all[1], all[2]);
    // everything is leased; give the rest back to have tasks above the ones that return
    worker.batch_execute(&format!("SELECT eventq.ack('r', ARRAY[{t1}, {t2}, {t3}])")).unwrap();
    for t in &all[3..] {
        worker
            .batch_execute(&format!("SELECT eventq.retry('r', {t}, 'again', '0 seconds')"))
            .unwrap();
    }
    let again = pull(&mut other, "r", 5);
    assert_eq!(again, all[3..8].to_vec());
    assert_eq!(pull(&mut other, "r", 5), all[8..13].to_vec());

    // a retry due at once, below where pulls start now
    let retried = again[0];
    worker
        .batch_execute(&format!("SELECT eventq.retry('r', {retried}, 'boom', '0 seconds')"))
        .unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![retried]);

    // an expired lease
    let short = again[1];
    worker
        .batch_execute(&format!(
            "UPDATE eventq_internal.tasks SET lease_until = now() - interval '1 second'
             WHERE seq = {short} AND consumer_id = (SELECT id FROM eventq_internal.consumers WHERE name = 'r')"
        ))
        .unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![short]);

    // a redrive
    let dropped = again[2];
    worker.batch_execute(&format!("SELECT eventq.discard('r', {dropped}, 'no')")).unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![all[13]]);
    worker.batch_execute(&format!("SELECT eventq.redrive('r', ARRAY[{dropped}])")).unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![dropped]);

    // a retry brought forward (an operator's retry_now)
    let later = again[3];
    worker.batch_execute(&format!("SELECT eventq.retry('r', {later}, 'later', '1 hour')")).unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![all[14]]);
    worker.batch_execute(&format!("SELECT eventq.retry_now('r', ARRAY[{later}])")).unwrap();
    assert_eq!(pull(&mut other, "r", 1), vec![later]);
}

#[test]
fn a_key_handed_on_below_the_start_is_pulled() {
    let cluster = cluster("pull-start-keys");
    let mut worker = cluster.connect();
    let mut other = cluster.connect();
    worker
        .batch_execute(
            "SELECT eventq.create_stream('k_s');
             SELECT eventq.create_consumer('k', 'k_s', ordering => 'key');
             SELECT eventq.publish('k_s', 'e', key => k) FROM unnest('{a,a,b,c}'::text[]) k;",
        )
        .unwrap();
    let a1 = pull(&mut worker, "k", 1);
    let b1 = pull(&mut other, "k", 1);
    let c1 = pull(&mut other, "k", 1);
    assert_eq!(a1.len() + b1.len() + c1.len(), 3);
    assert!(a1[0] < b1[0] && b1[0] < c1[0]);
    // the second task of key a lies between a1 and b1: below where pulls start now
    worker.batch_execute(&format!("SELECT eventq.ack('k', ARRAY[{}])", a1[0])).unwrap();
    assert_eq!(pull(&mut other, "k", 1), vec![a1[0] + 1]);
    assert_eq!(
        column(
            &mut other,
            "SELECT count(*)::text FROM eventq.tasks WHERE consumer = 'k' AND state = 'running'"
        ),
        ["3"]
    );
}

#[test]
fn rows_locked_by_anyone_are_pulled_once_free() {
    let cluster = cluster("pull-start-locked");
    let mut dba = cluster.connect();
    let mut worker = cluster.connect();
    setup(&mut worker, "l", 20);
    let base = pull(&mut worker, "l", 1)[0];
    dba.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM eventq_internal.tasks WHERE seq = {} FOR UPDATE",
        base + 1
    ))
    .unwrap();
    assert_eq!(pull(&mut worker, "l", 3), range(base + 2, base + 4));
    assert_eq!(pull(&mut worker, "l", 3), range(base + 5, base + 7));
    dba.batch_execute("COMMIT").unwrap();
    assert_eq!(pull(&mut worker, "l", 1), vec![base + 1]);
}

#[test]
fn consumer_ids_that_start_over_start_from_the_beginning() {
    let cluster = cluster("pull-start-recreated");
    let mut db = cluster.connect();
    setup(&mut db, "x", 50);
    assert_eq!(pull(&mut db, "x", 25).len(), 25);
    assert_eq!(pull(&mut db, "x", 25).len(), 25);
    db.batch_execute("DROP EXTENSION eventq CASCADE; CREATE EXTENSION eventq").unwrap();
    setup(&mut db, "x", 3);
    assert_eq!(pull(&mut db, "x", 10).len(), 3);
}

#[test]
fn a_change_behind_eventqs_back_is_seen_within_a_second() {
    let cluster = cluster("pull-start-age");
    let mut db = cluster.connect();
    setup(&mut db, "y", 10);
    let all = pull(&mut db, "y", 5);
    db.batch_execute(&format!("SELECT eventq.ack('y', ARRAY{all:?})")).unwrap();
    assert_eq!(pull(&mut db, "y", 2), all.iter().map(|s| s + 5).take(2).collect::<Vec<_>>());
    db.batch_execute(&format!(
        "UPDATE eventq_internal.tasks SET state = 'available' WHERE seq = {}",
        all[0]
    ))
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(pull(&mut db, "y", 1), vec![all[0]]);
}

/// Index entries the timer pass of one pull read from the index of running tasks.
fn timer_entries_read(db: &mut Client, consumer: &str) -> i64 {
    let mut tx = db.transaction().unwrap();
    tx.query(&format!("SELECT eventq.pull('{consumer}', 1)"), &[]).unwrap();
    let read: i64 = tx
        .query_one(
            "SELECT pg_stat_get_xact_tuples_returned('eventq_internal.tasks_leased'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    tx.rollback().unwrap();
    read
}

#[test]
fn timer_passes_skip_the_leases_of_acked_tasks_under_a_held_snapshot() {
    let cluster = cluster("pull-start-timers");
    let mut db = cluster.connect();
    let mut holder = cluster.connect();
    setup(&mut db, "t", 2100);
    // Vacuum can remove nothing acked from here on: every ack leaves a dead entry in the
    // index of running tasks, at its lease's time.
    holder
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM eventq_internal.tasks",
        )
        .unwrap();
    for _ in 0..20 {
        let seqs: Vec<i64> = db
            .query("SELECT task_id FROM eventq.pull('t', 100, lease => '20 milliseconds')", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        db.batch_execute(&format!("SELECT eventq.ack('t', ARRAY{seqs:?}::bigint[])")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // Each pass claims what lies a second before it; the next one starts there. A pass from
    // the beginning comes at most every 5 s, so of three in a row at least two are bounded.
    let read: Vec<i64> = (0..3).map(|_| timer_entries_read(&mut db, "t")).collect();
    let mut sorted = read.clone();
    sorted.sort();
    assert!(sorted[0] < 100 && sorted[1] < 100, "entries read per pass: {read:?}");
    // and the entries are there: a pass from the beginning walks them
    db.batch_execute("SELECT eventq.run_maintenance()").ok();
    holder.batch_execute("COMMIT").unwrap();
}

#[test]
fn a_lease_committed_after_passes_moved_past_it_still_expires() {
    let cluster = cluster("pull-start-late-lease");
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    setup(&mut b, "l", 1);
    a.batch_execute("BEGIN").unwrap();
    let leased =
        a.query("SELECT task_id FROM eventq.pull('l', 1, lease => '1 millisecond')", &[]).unwrap();
    assert_eq!(leased.len(), 1);
    // passes from b skip the locked row and claim the time before them
    pulls_find_nothing_for_a_while(&mut b, "l");
    a.batch_execute("COMMIT").unwrap();
    // the lease, long expired, appears behind the claim: a pass from the beginning finds it
    rescued_within(&mut b, "l", 8);
}

/// Passes go by for a second and a half, each claiming the time a second before it, while
/// pulls find nothing.
fn pulls_find_nothing_for_a_while(b: &mut Client, consumer: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert!(pull(b, consumer, 1).is_empty());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The next pull of `consumer` gets its task again (attempt 2) within `seconds`.
fn rescued_within(b: &mut Client, consumer: &str, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let again =
            b.query(&format!("SELECT attempt FROM eventq.pull('{consumer}', 1)"), &[]).unwrap();
        if let Some(row) = again.first() {
            assert_eq!(row.get::<_, i32>(0), 2);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired lease was not rescued within {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// An ack holds the row of an expired lease while passes go by, skipping it as locked, and
/// claiming the time past it; the ack rolls back. A pass from the beginning rescues it.
#[test]
fn an_expired_lease_behind_a_rolled_back_ack_still_expires() {
    let cluster = cluster("pull-start-rolled-back-ack");
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    setup(&mut b, "k", 1);
    let task = pull(&mut a, "k", 1);
    a.batch_execute(&format!(
        "UPDATE eventq_internal.tasks SET lease_until = clock_timestamp() + interval '50 milliseconds' WHERE seq = {}",
        task[0]
    ))
    .unwrap();
    a.batch_execute(&format!("BEGIN; SELECT eventq.ack('k', ARRAY[{}]::bigint[])", task[0]))
        .unwrap();
    pulls_find_nothing_for_a_while(&mut b, "k");
    a.batch_execute("ROLLBACK").unwrap();
    rescued_within(&mut b, "k", 8);
}

/// A prepared transaction's lease, committed after passes moved past it: a pass from the
/// beginning rescues it.
#[test]
fn a_lease_of_a_prepared_transaction_still_expires() {
    let cluster = cluster("pull-start-prepared-lease");
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    setup(&mut b, "p", 1);
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(
        a.query("SELECT task_id FROM eventq.pull('p', 1, lease => '1 millisecond')", &[])
            .unwrap()
            .len(),
        1
    );
    a.batch_execute("PREPARE TRANSACTION 'lease'").unwrap();
    pulls_find_nothing_for_a_while(&mut b, "p");
    a.batch_execute("COMMIT PREPARED 'lease'").unwrap();
    rescued_within(&mut b, "p", 8);
}
