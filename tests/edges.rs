//! Values at the edges of every argument, and races between maintenance and changes: each
//! gets a clear 22023 or works, and none stops the drain or maintenance for anyone else.

mod common;

use common::{column, count, fails_with, Cluster};
use postgres::Client;
use std::thread;
use std::time::Duration;

fn stream_with(db: &mut Client, consumers: &str) {
    db.batch_execute(&format!("SELECT eventq.create_stream('s'); {consumers}")).unwrap();
}

#[test]
fn keys_too_long_for_an_index_are_refused_at_publish() {
    let cluster = Cluster::start("edge-keys", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('keyed', 's', ordering => 'key');");
    let long = "x".repeat(3000);
    for sql in [
        format!("SELECT eventq.publish('s', 'a', key => '{long}')"),
        format!("SELECT eventq.publish('s', 'a', dedup_key => '{long}')"),
        format!(
            "SELECT eventq.publish_batch('s', '{{a}}', '{{\"{{}}\"}}', keys => ARRAY['{long}'])"
        ),
    ] {
        assert_eq!(fails_with(&mut db, &sql), "22023");
    }
    let fits = "k".repeat(1024);
    db.execute("SELECT eventq.publish('s', 'a', key => $1)", &[&fits]).unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'b', key => 'short')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('keyed', 10)"), ["a", "b"]);
}

#[test]
fn edge_values_of_times_and_intervals() {
    let cluster = Cluster::start("edge-times", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    for sql in [
        "SELECT eventq.create_stream('t', retention => '10000 years')",
        "SELECT eventq.alter_stream('s', '200 years')",
        "SELECT eventq.publish('s', 'a', deliver_at => '-infinity')",
        "SELECT eventq.publish('s', 'a', deliver_at => 'infinity')",
        "SELECT eventq.create_consumer('x', 's', start_at => 'infinity')",
        "SELECT eventq.create_consumer('x', 's', lease => '1000 years')",
        "SELECT eventq.create_consumer('x', 's', backoff_max => '200 years')",
        "SELECT * FROM eventq.pull('c', 1, lease => '1000000 years')",
    ] {
        assert_eq!(fails_with(&mut db, sql), "22023", "{sql}");
    }
    common::script(
        &mut db,
        "SELECT eventq.publish('s', 'far', deliver_at => '100000-01-01');
         SELECT eventq.publish('s', 'now');
         SELECT eventq.run_maintenance();",
    );
    let task: i64 = db.query_one("SELECT task_id FROM eventq.pull('c')", &[]).unwrap().get(0);
    assert_eq!(
        fails_with(&mut db, &format!("SELECT eventq.retry('c', {task}, delay => '500 years')")),
        "22023"
    );
    assert_eq!(
        fails_with(&mut db, &format!("SELECT eventq.extend_lease('c', {task}, '500 years')")),
        "22023"
    );
    db.batch_execute(&format!("SELECT eventq.retry('c', {task}, delay => '99 years')")).unwrap();
    // a stored time nobody could enter any more does not break the views
    db.batch_execute(
        "UPDATE eventq_internal.tasks SET run_at = '-infinity', state = 'available';
         SELECT * FROM eventq.consumers; SELECT * FROM eventq.tasks;",
    )
    .unwrap();
}

/// A retention that overflows (stored by hand, or by an older version) fails for its
/// stream alone: maintenance goes on for everyone else and says what failed.
#[test]
fn one_streams_failure_does_not_stop_maintenance() {
    let cluster = Cluster::start("edge-isolated", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('bad');
         SELECT eventq.create_stream('good', retention => '1 second');
         SELECT eventq.create_consumer('c', 'good');
         UPDATE eventq_internal.streams SET retention = '10000 years' WHERE name = 'bad';
         SELECT eventq.publish('good', 'old');
         SELECT eventq.publish('bad', 'x');",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(1100));
    db.batch_execute("SELECT eventq.publish('good', 'new')").unwrap();
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["drained_events"], 3, "{report}");
    assert_eq!(report["expired_events"], 1, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(errors[0].as_str().unwrap().contains("out of range"), "{report}");
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["new"]);
}

/// Retention expiring the heads of many keys, with sorts that spill to disk, hands every
/// key on to its next task.
#[test]
fn retention_hands_every_expired_key_on() {
    let cluster = Cluster::start("edge-retention-keys", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('keyed', 's', ordering => 'key');");
    common::script(&mut db, "SELECT eventq.alter_stream('s', '1 hour');
         SELECT eventq.publish_batch('s', array_agg('head'::text), array_agg('{}'::jsonb), array_agg('key-' || k))
           FROM generate_series(1, 4000) k;
         SELECT eventq.publish_batch('s', array_agg('next'::text), array_agg('{}'::jsonb), array_agg('key-' || k))
           FROM generate_series(1, 4000) k;
         SELECT eventq.run_maintenance();
         UPDATE eventq_internal.events SET published_at = now() - interval '2 hours' WHERE subject = 'head';");
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'waiting'"), 4000);
    db.batch_execute("SET work_mem = '64kB'").unwrap();
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["expired_tasks"], 4000, "{report}");
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'available'"), 4000);
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE state = 'waiting'"), 0);
    assert_eq!(column(&mut db, "SELECT expired::text FROM eventq.consumers"), ["4000"]);
}

/// A task whose event is gone (retention raced a replay) is expired when pulled, not
/// handed out empty with an attempt burned.
#[test]
fn tasks_without_their_event_expire_when_pulled() {
    let cluster = Cluster::start("edge-orphans", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    common::script(
        &mut db,
        "SELECT eventq.publish('s', 'gone'); SELECT eventq.publish('s', 'kept');
         SELECT eventq.run_maintenance();
         DELETE FROM eventq_internal.events WHERE subject = 'gone';",
    );
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["kept"]);
    assert_eq!(column(&mut db, "SELECT expired::text FROM eventq.consumers"), ["1"]);
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks WHERE subject IS NULL"), 0);
}

/// A replay holds its consumer: retention leaves the stream for the next pass meanwhile.
#[test]
fn retention_waits_for_a_replay() {
    let cluster = Cluster::start("edge-replay-retention", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    common::script(
        &mut db,
        "SELECT eventq.alter_stream('s', '1 hour');
         SELECT eventq.publish('s', 'e') FROM generate_series(1, 10);
         SELECT eventq.run_maintenance();
         UPDATE eventq_internal.events SET published_at = now() - interval '2 hours';",
    );
    let mut replayer = cluster.connect();
    replayer
        .batch_execute("BEGIN; SELECT eventq.alter_consumer('c', start_at => '-infinity')")
        .unwrap();
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["skipped_streams"], 1, "{report}");
    assert_eq!(report["expired_events"], 0, "{report}");
    replayer.batch_execute("COMMIT").unwrap();
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["expired_events"], 10, "{report}");
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.tasks"), 0);
}

/// A dedup claim stays while its event is retained, even when retention could not delete
/// the event in this pass.
#[test]
fn dedup_claims_outlive_nothing_they_guard() {
    let cluster = Cluster::start("edge-dedup", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    let first: String = db
        .query_one("SELECT eventq.publish('s', 'a', dedup_key => 'once')::text", &[])
        .unwrap()
        .get(0);
    common::script(
        &mut db,
        "SELECT eventq.alter_stream('s', '1 hour');
         SELECT eventq.run_maintenance();
         UPDATE eventq_internal.events SET published_at = now() - interval '2 hours';
         UPDATE eventq_internal.dedup SET published_at = now() - interval '2 hours';",
    );
    // a worker holds the event's task: retention must keep the event for now
    let mut worker = cluster.connect();
    worker.batch_execute("BEGIN; SELECT * FROM eventq.pull('c')").unwrap();
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["held_events"], 1, "{report}");
    let again: String = db
        .query_one("SELECT eventq.publish('s', 'a', dedup_key => 'once')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, first);
    worker.batch_execute("COMMIT").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.dedup"), 0);
}

/// Switching a consumer to key ordering holds back every task of a key but one.
#[test]
fn switching_to_key_ordering_keeps_one_task_per_key_in_flight() {
    let cluster = Cluster::start("edge-switch", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    common::script(
        &mut db,
        "SELECT eventq.publish('s', 'k' || n, key => 'k') FROM generate_series(1, 3) n;
         SELECT eventq.publish('s', 'j' || n, key => 'j') FROM generate_series(1, 3) n;
         SELECT eventq.run_maintenance();",
    );
    // one of key j is already running when the switch comes
    let running: i64 =
        db.query_one("SELECT task_id FROM eventq.tasks WHERE subject = 'j2'", &[]).unwrap().get(0);
    db.batch_execute(&format!(
        "UPDATE eventq_internal.tasks SET state = 'running', attempt = 1, lease_until = now() + interval '1 hour'
         WHERE seq = {running}"
    ))
    .unwrap();
    db.batch_execute("SELECT eventq.alter_consumer('c', ordering => 'key')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["k1"]);
    db.batch_execute(&format!("SELECT eventq.ack('c', ARRAY[{running}])")).unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["j1"]);
    // and back: nothing waits any more
    db.batch_execute("SELECT eventq.alter_consumer('c', ordering => 'none')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c', 10)"), ["k2", "k3", "j3"]);
}

/// start_at in the future: only events published from then on. A replay re-delivers every
/// retained event at or after its start, finished or not, cleaned up or not.
#[test]
fn start_at_and_replays_are_deterministic() {
    let cluster = Cluster::start("edge-start-at", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "");
    db.batch_execute(
        "SELECT eventq.create_consumer('later', 's', start_at => clock_timestamp() + interval '1500 milliseconds');
         SELECT eventq.create_consumer('later_log', 's', mode => 'log', start_at => clock_timestamp() + interval '1500 milliseconds');
         SELECT eventq.create_consumer('all', 's');
         SELECT eventq.publish('s', 'early');",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(1600));
    db.batch_execute("SELECT eventq.publish('s', 'late')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('later', 10)"), ["late"]);
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.fetch('later_log', 10)"), ["late"]);
    // finish everything; clean up half of it; replay: both halves come back
    let tasks = column(&mut db, "SELECT task_id::text FROM eventq.pull('all', 10)");
    assert_eq!(tasks.len(), 2);
    db.batch_execute(&format!("SELECT eventq.ack('all', ARRAY[{}]::bigint[])", tasks.join(",")))
        .unwrap();
    db.batch_execute(&format!(
        "DELETE FROM eventq_internal.tasks t USING eventq_internal.consumers c
         WHERE c.id = t.consumer_id AND c.name = 'all' AND t.seq = {}",
        tasks[0]
    ))
    .unwrap();
    db.batch_execute("SELECT eventq.alter_consumer('all', start_at => '-infinity')").unwrap();
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('all', 10)"), ["early", "late"]);
    let history = column(
        &mut db,
        "SELECT outcome FROM eventq.attempts WHERE consumer = 'all' ORDER BY task_id, attempt",
    );
    assert!(history.contains(&"completed".to_string()), "{history:?}");
}

/// Cleanup finds finished tasks wherever they are, not only among the oldest.
#[test]
fn cleanup_finds_old_finished_tasks_behind_recent_ones() {
    let cluster = Cluster::start("edge-cleanup", &[]);
    let mut db = cluster.connect();
    stream_with(&mut db, "SELECT eventq.create_consumer('c', 's');");
    common::script(&mut db, "SELECT eventq.publish_batch('s', array_agg('e'::text), array_agg('{}'::jsonb)) FROM generate_series(1, 15000);
         SELECT eventq.run_maintenance();
         UPDATE eventq_internal.tasks SET state = 'completed', attempt = 1,
                finished_at = CASE WHEN seq <= (SELECT min(seq) + 11999 FROM eventq_internal.tasks)
                                   THEN now() ELSE now() - interval '2 hours' END;");
    let report: serde_json::Value =
        db.query_one("SELECT eventq.run_maintenance()", &[]).unwrap().get(0);
    assert_eq!(report["removed_finished_tasks"], 3000, "{report}");
}
