//! Declared action order (a consumer's `sequence`) under concurrency: publishers emit each
//! key's subjects in a random order, workers fail some attempts and abandon some leases, the
//! server restarts once (immediate shutdown) in the middle. Every task is completed exactly
//! once, and no attempt of a subject started before the subjects declared before it had
//! finished for its key (checked on the server's own timestamps).

mod common;

use common::{wait_for, Cluster, Rng, PRELOAD};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const KEYS: usize = 60;
const SEQUENCE: [&str; 3] = ["user.created", "user.purchased", "user.paid"];

fn connect(cluster_port: u16) -> Option<Client> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster_port)
        .user("postgres")
        .dbname("postgres")
        .connect(postgres::NoTls)
        .ok()
}

/// Pulls, fails 15% of attempts, abandons 5% of leases (they expire), acks the rest;
/// reconnects after errors (the restart).
fn worker(port: u16, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed);
    let mut db: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = db.as_mut() else {
            db = connect(port);
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let tasks =
            match client.query("SELECT task_id, attempt FROM eventq.pull('ordered', 5)", &[]) {
                Ok(rows) => rows,
                Err(_) => {
                    db = None;
                    continue;
                }
            };
        if tasks.is_empty() {
            thread::sleep(Duration::from_millis(10));
        }
        for task in tasks {
            let (id, attempt): (i64, i32) = (task.get(0), task.get(1));
            let result = if rng.chance(5) {
                Ok(0) // abandoned: the lease runs out
            } else if rng.chance(15) {
                client.execute(
                    "SELECT eventq.retry('ordered', $1, 'failed', delay => '0', attempt => $2)",
                    &[&id, &attempt],
                )
            } else {
                client.execute(
                    "SELECT eventq.ack('ordered', ARRAY[$1::bigint], ARRAY[$2::int])",
                    &[&id, &attempt],
                )
            };
            if result.is_err() {
                db = None;
                break;
            }
        }
    }
}

#[test]
fn sequences_hold_under_failing_workers_expiring_leases_and_a_restart() {
    // (commits survive the immediate shutdown only if they are flushed)
    let cluster = Cluster::start(
        "sequence",
        &[PRELOAD, "eventq.maintenance_interval = '100ms'", "synchronous_commit = on"],
    );
    let mut db = cluster.connect();
    db.batch_execute(&format!(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('ordered', 's', ordering => 'key', max_attempts => 1000,
             backoff => 'fixed', backoff_base => '10 milliseconds', lease => '300 milliseconds',
             sequence => ARRAY['{}', '{}', '{}']);",
        SEQUENCE[0], SEQUENCE[1], SEQUENCE[2]
    ))
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            let port = cluster.port;
            thread::spawn(move || worker(port, 1000 + i, stop))
        })
        .collect();

    // each key's subjects, in a random order, from two publishers taking keys in turn
    let mut rng = Rng::new(7);
    let mut plan: Vec<(String, &str)> = Vec::new();
    for k in 0..KEYS {
        let mut subjects = SEQUENCE.to_vec();
        for i in (1..subjects.len()).rev() {
            subjects.swap(i, rng.below(i as u64 + 1) as usize);
        }
        plan.extend(subjects.into_iter().map(|s| (format!("k{k}"), s)));
    }
    let half = plan.len() / 2;
    let mut publishers = Vec::new();
    for part in [plan[..half].to_vec(), plan[half..].to_vec()] {
        let port = cluster.port;
        publishers.push(thread::spawn(move || {
            let mut db = connect(port).unwrap();
            for (n, (key, subject)) in part.iter().enumerate() {
                loop {
                    match db.execute("SELECT eventq.publish('s', $1, key => $2)", &[subject, key]) {
                        Ok(_) => break,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(100));
                            if let Some(again) = connect(port) {
                                db = again;
                            }
                        }
                    }
                }
                if n % 5 == 0 {
                    thread::sleep(Duration::from_millis(30));
                }
            }
        }));
    }
    // the restart comes once a third of the events are in, and work on them under way
    wait_for("a third of the events", Duration::from_secs(30), || {
        let n: i64 = db.query_one("SELECT count(*) FROM eventq.events", &[]).unwrap().get(0);
        if n >= plan.len() as i64 / 3 {
            Ok(())
        } else {
            Err(format!("{n} events"))
        }
    });
    cluster.pg_ctl(&["restart", "-m", "immediate"]);
    for p in publishers {
        p.join().unwrap();
    }
    // (an event whose publish was cut by the restart was published again: count what is there)
    let mut db = cluster.connect();
    let published = wait_for("every event drained", Duration::from_secs(30), || {
        let n: i64 = db
            .query_one("SELECT count(*) FROM eventq.events WHERE stream = 's'", &[])
            .unwrap()
            .get(0);
        if n >= plan.len() as i64 {
            Ok(n)
        } else {
            Err(format!("{n} events"))
        }
    });
    wait_for("every task completed", Duration::from_secs(90), || {
        let done: i64 = db
            .query_one("SELECT count(*) FROM eventq.tasks WHERE consumer = 'ordered' AND state = 'completed'", &[])
            .unwrap()
            .get(0);
        if done == published {
            Ok(())
        } else {
            Err(format!("{done} of {published}"))
        }
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // Every attempt of a subject started after each subject declared before it had a
    // completed task of the same key (the first of them).
    let violations: Vec<String> = db
        .query(
            "WITH t AS (
                 SELECT task_id, key, subject, finished_at,
                        array_position(ARRAY['user.created', 'user.purchased', 'user.paid'], subject) AS pos
                 FROM eventq.tasks WHERE consumer = 'ordered'
             ), starts AS (
                 SELECT task_id, started_at FROM eventq.attempts WHERE consumer = 'ordered'
             )
             SELECT later.key || ' ' || later.subject || ' started at ' || s.started_at
                    || ' before ' || earlier.subject || ' finished at ' || first_finish
             FROM t later
             JOIN starts s ON s.task_id = later.task_id
             JOIN LATERAL (
                 SELECT e.subject, min(e.finished_at) AS first_finish FROM t e
                 WHERE e.key = later.key AND e.pos < later.pos GROUP BY e.subject
             ) earlier ON true
             WHERE s.started_at < earlier.first_finish",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        violations.is_empty(),
        "{} out of order: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let (lost, failed): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE outcome = 'lost'), count(*) FILTER (WHERE outcome = 'failed')
                 FROM eventq.attempts WHERE consumer = 'ordered'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(lost > 0 && failed > 0, "lost {lost}, failed {failed}: the run should have had both");
    // every key has each declared subject completed at least once (none left waiting)
    let waiting: i64 = db
        .query_one(
            "SELECT count(*) FROM eventq.tasks WHERE consumer = 'ordered' AND state <> 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, 0);
}
