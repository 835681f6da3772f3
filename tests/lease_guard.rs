//! The lease guard: a worker whose lease ran out can never finish, fail, discard, ignore or extend
//! the attempt of the worker that leased the task after it; with key ordering, a stale
//! discard cannot hand the key on while the new holder runs.

mod common;

use common::{column, Cluster};
use postgres::Client;

/// Leases the only available task of `consumer`; returns (task, attempt).
fn lease(db: &mut Client, consumer: &str) -> (i64, i32) {
    let row = db
        .query_one(&format!("SELECT task_id, attempt FROM eventq.pull('{consumer}', 1, lease => '1 millisecond')"), &[])
        .unwrap();
    (row.get(0), row.get(1))
}

fn expire_and_release(db: &mut Client, consumer: &str) -> (i64, i32) {
    std::thread::sleep(std::time::Duration::from_millis(20));
    let row = db
        .query_one(&format!("SELECT task_id, attempt FROM eventq.pull('{consumer}', 1)"), &[])
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn stale_calls_change_nothing() {
    let cluster = Cluster::start("lease-guard", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.publish('s', 'x');",
    )
    .unwrap();
    let (task, stale) = lease(&mut db, "c");
    let (again, fresh) = expire_and_release(&mut db, "c");
    assert_eq!((again, fresh), (task, stale + 1));
    let one = |db: &mut Client, sql: &str| -> String {
        db.query_one(&format!("SELECT ({sql})::text"), &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or("NULL".into())
    };
    assert_eq!(one(&mut db, &format!("eventq.ack('c', ARRAY[{task}], ARRAY[{stale}])")), "0");
    assert_eq!(
        one(&mut db, &format!("eventq.retry('c', {task}, 'late', attempt => {stale})")),
        "NULL"
    );
    assert_eq!(
        one(&mut db, &format!("eventq.discard('c', {task}, 'late', attempt => {stale})")),
        "false"
    );
    assert_eq!(
        one(&mut db, &format!("eventq.ignore('c', {task}, 'late', attempt => {stale})")),
        "false"
    );
    assert_eq!(
        one(&mut db, &format!("eventq.extend_lease('c', {task}, '1 hour', attempt => {stale})")),
        "NULL"
    );
    assert_eq!(column(&mut db, "SELECT state FROM eventq.tasks"), ["running"]);
    // the current attempt is honoured
    assert_ne!(
        one(&mut db, &format!("eventq.extend_lease('c', {task}, '1 hour', attempt => {fresh})")),
        "NULL"
    );
    assert_eq!(one(&mut db, &format!("eventq.ack('c', ARRAY[{task}], ARRAY[{fresh}])")), "1");
    // ack's attempts must be parallel to its ids
    assert_eq!(
        common::fails_with(&mut db, &format!("SELECT eventq.ack('c', ARRAY[{task}], ARRAY[1, 2])")),
        "22023"
    );
}

#[test]
fn a_stale_discard_does_not_hand_a_key_on() {
    let cluster = Cluster::start("lease-guard-key", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's', ordering => 'key');
         SELECT eventq.publish('s', 'first', key => 'k');
         SELECT eventq.publish('s', 'second', key => 'k');",
    )
    .unwrap();
    let (task, stale) = lease(&mut db, "c");
    let (_, fresh) = expire_and_release(&mut db, "c");
    db.batch_execute(&format!("SELECT eventq.discard('c', {task}, 'stale', attempt => {stale})"))
        .unwrap();
    assert!(
        column(&mut db, "SELECT subject FROM eventq.pull('c', 10)").is_empty(),
        "two tasks of a key in flight"
    );
    db.batch_execute(&format!("SELECT eventq.ack('c', ARRAY[{task}], ARRAY[{fresh}])")).unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["second"]);
}
