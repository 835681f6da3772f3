//! Task delivery under concurrency, against a real server with many connections and no
//! background worker (pull drains inline).
//!
//! Publishers commit, roll back, or keep their transaction open while others commit.
//! Workers ack, fail (retry), abandon tasks (the lease runs out), or ack after their lease
//! ran out. In the end every committed event must have reached every matching consumer,
//! no rolled-back event anywhere, every task completed exactly once, and tasks of one key
//! handled one after the other in seq order.

mod common;

use common::{wait_for, Cluster, Rng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const PUBLISHERS: u64 = 4;
const TRANSACTIONS_PER_PUBLISHER: usize = 60;
const WORKERS: u64 = 4;
const CONSUMERS: [&str; 3] = ["every", "odd", "keyed"];

#[derive(Default)]
struct Published {
    committed: HashMap<String, String>, // id -> subject
    rolled_back: HashSet<String>,
}

fn publish(cluster: &Cluster, seed: u64) -> Published {
    let mut db = cluster.connect();
    let mut rng = Rng::new(seed);
    let mut out = Published::default();
    for _ in 0..TRANSACTIONS_PER_PUBLISHER {
        let mut tx = db.transaction().unwrap();
        let mut ids = Vec::new();
        for _ in 0..1 + rng.below(5) {
            let n = rng.below(1000);
            let subject = if n % 2 == 1 { "n.odd" } else { "n.even" };
            let key = format!("k{}", rng.below(8));
            let id: String = tx
                .query_one(
                    "SELECT eventq.publish('work', $1, jsonb_build_object('n', $2::int), key => $3)::text",
                    &[&subject, &(n as i32), &key],
                )
                .unwrap()
                .get(0);
            ids.push((id, subject.to_string()));
        }
        if rng.chance(10) {
            // commit late: other transactions publish and commit meanwhile
            thread::sleep(Duration::from_millis(100 + rng.below(400)));
        }
        if rng.chance(15) {
            tx.rollback().unwrap();
            out.rolled_back.extend(ids.into_iter().map(|(id, _)| id));
        } else {
            tx.commit().unwrap();
            out.committed.extend(ids);
        }
    }
    out
}

/// Per (consumer, task): how many acks succeeded.
type Acks = Arc<Mutex<BTreeMap<(String, i64), u32>>>;

fn work(cluster: &Cluster, seed: u64, stop: Arc<AtomicBool>, acks: Acks) {
    let mut db = cluster.connect();
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for consumer in CONSUMERS {
            let rows = db
                .query(
                    "SELECT task_id FROM eventq.pull($1, 10, lease => '300 milliseconds')",
                    &[&consumer],
                )
                .unwrap();
            for row in rows {
                idle = false;
                let task: i64 = row.get(0);
                let roll = rng.below(100);
                if roll < 8 {
                    let state: Option<String> = db
                        .query_one(
                            "SELECT eventq.retry($1, $2, 'simulated failure', '20 milliseconds')",
                            &[&consumer, &task],
                        )
                        .unwrap()
                        .get(0);
                    // NULL when this batch took so long that the lease ran out
                    assert!(matches!(state.as_deref(), None | Some("retryable")), "{state:?}");
                    continue;
                }
                if roll < 12 {
                    continue; // abandoned: the lease runs out and the task comes back
                }
                if roll < 15 {
                    thread::sleep(Duration::from_millis(350)); // ack after the lease ran out
                }
                let changed: i32 = db
                    .query_one("SELECT eventq.ack($1, ARRAY[$2::bigint])", &[&consumer, &task])
                    .unwrap()
                    .get(0);
                if changed == 1 {
                    *acks.lock().unwrap().entry((consumer.to_string(), task)).or_default() += 1;
                }
            }
        }
        if idle {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn every_committed_event_reaches_every_matching_consumer_once() {
    let cluster = Cluster::start("delivery", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('work');
         SELECT eventq.create_consumer('every', 'work', max_attempts => 1000);
         SELECT eventq.create_consumer('odd', 'work', subjects => '{*.odd}', max_attempts => 1000);
         SELECT eventq.create_consumer('keyed', 'work', ordering => 'key', max_attempts => 1000);",
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let cluster = Arc::new(cluster);
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (cluster, stop, acks) = (cluster.clone(), stop.clone(), acks.clone());
            thread::spawn(move || work(&cluster, 100 + i, stop, acks))
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let cluster = cluster.clone();
            thread::spawn(move || publish(&cluster, i + 1))
        })
        .collect();
    let mut published = Published::default();
    for p in publishers {
        let p = p.join().unwrap();
        published.committed.extend(p.committed);
        published.rolled_back.extend(p.rolled_back);
    }
    assert!(published.committed.len() > 300 && !published.rolled_back.is_empty());

    wait_for("every task to complete", Duration::from_secs(60), || {
        let status: Vec<String> = db
            .query(
                "SELECT concat_ws(' ', name, available, waiting, running, retryable, discarded, completed)
                 FROM eventq.consumers
                 UNION ALL SELECT 'staged ' || count(*) FROM eventq_internal.staged",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let finished = db
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM eventq.tasks WHERE state <> 'completed')
                    AND NOT EXISTS (SELECT 1 FROM eventq_internal.staged)",
                &[],
            )
            .unwrap()
            .get::<_, bool>(0);
        if finished {
            Ok(())
        } else {
            Err(status.join("; "))
        }
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // The log holds exactly the committed events.
    let logged: HashMap<String, (i64, String)> = db
        .query("SELECT event_id::text, seq, subject FROM eventq.events WHERE stream = 'work'", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let logged_ids: HashSet<&String> = logged.keys().collect();
    let committed_ids: HashSet<&String> = published.committed.keys().collect();
    assert_eq!(logged_ids, committed_ids, "the log holds exactly the committed events");
    assert!(published.rolled_back.iter().all(|id| !logged.contains_key(id)));

    // Each consumer has one task per matching event, each completed by exactly one ack.
    let acks = acks.lock().unwrap();
    for consumer in CONSUMERS {
        let expected: HashSet<i64> = logged
            .values()
            .filter(|(_, subject)| consumer != "odd" || subject == "n.odd")
            .map(|(seq, _)| *seq)
            .collect();
        let tasks: Vec<i64> = db
            .query("SELECT task_id FROM eventq.tasks WHERE consumer = $1", &[&consumer])
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tasks.len(), expected.len(), "{consumer}: one task per event");
        assert_eq!(
            tasks.iter().copied().collect::<HashSet<_>>(),
            expected,
            "{consumer}: the matching events"
        );
        for task in tasks {
            assert_eq!(
                acks.get(&(consumer.to_string(), task)),
                Some(&1),
                "{consumer}/{task} acked once"
            );
        }
    }
    assert_eq!(acks.values().sum::<u32>() as usize, acks.len());

    // Failures and lost leases really happened, and were recorded.
    let outcomes: HashMap<String, i64> = db
        .query("SELECT outcome, count(*) FROM eventq.attempts GROUP BY outcome", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(outcomes.get("failed").copied().unwrap_or(0) > 0, "{outcomes:?}");
    assert!(outcomes.get("lost").copied().unwrap_or(0) > 0, "{outcomes:?}");

    // Key order: a task of a key started its final attempt only after the previous task of
    // that key had completed.
    let out_of_order: i64 = db
        .query_one(
            "SELECT count(*) FROM (
                 SELECT started_at,
                        lag(finished_at) OVER (PARTITION BY key ORDER BY seq) AS previous_done
                 FROM eventq.tasks WHERE consumer = 'keyed'
             ) t WHERE started_at < previous_done",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(out_of_order, 0, "tasks of a key overlapped or ran out of order");
}

#[test]
fn pull_in_repeatable_read_sees_what_others_drained_after_its_snapshot() {
    let cluster = Cluster::start("delivery-rr", &[]);
    let mut db = cluster.connect();
    common::script(
        &mut db,
        "SELECT eventq.create_stream('rr');
         SELECT eventq.create_consumer('rr_c', 'rr');
         SELECT eventq.publish('rr', 'a');
         SELECT eventq.run_maintenance();
         SELECT eventq.publish('rr', 'b');",
    );
    let mut other = cluster.connect();
    let mut tx = db
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let first: Vec<String> = tx
        .query("SELECT subject FROM eventq.pull('rr_c', 10)", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(first, ["a", "b"]);
    common::script(&mut other, "SELECT eventq.publish('rr', 'c'); SELECT eventq.run_maintenance()");
    // drained by someone else after this snapshot was taken: still seen, without failing
    let next: Vec<String> = tx
        .query("SELECT subject FROM eventq.pull('rr_c', 10)", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(next, ["c"]);
    tx.commit().unwrap();
}

/// The race key ordering must survive: a drain adds the next task of a key while a worker
/// acks the head. Whichever takes the key's row first, the key moves on to the new task:
/// the ack waits for the drain and hands over, or the drain finds the row busy, lets the
/// task wait and leaves a recheck that the next drain or pull settles.
#[test]
fn a_key_handed_over_while_a_drain_adds_to_it_is_not_stranded() {
    let cluster = Arc::new(Cluster::start("delivery-race", &[]));
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('race');
         SELECT eventq.create_consumer('race_c', 'race', ordering => 'key');",
    )
    .unwrap();
    for round in 0..6 {
        db.batch_execute(&format!("SELECT eventq.publish('race', 'first{round}', key => 'k')"))
            .unwrap();
        let head: i64 =
            db.query_one("SELECT task_id FROM eventq.pull('race_c')", &[]).unwrap().get(0);
        // a large drain, with the next task of the key somewhere in it
        db.batch_execute(&format!(
            "BEGIN;
             SELECT eventq.publish_batch('race', array_fill('other'::text, ARRAY[20000]),
                                         array_fill('{{}}'::jsonb, ARRAY[20000]),
                                         keys => array_fill('o{round}'::text, ARRAY[20000]));
             SELECT eventq.publish('race', 'second{round}', key => 'k');
             COMMIT;"
        ))
        .unwrap();
        let drainer = {
            let cluster = cluster.clone();
            thread::spawn(move || {
                cluster.connect().batch_execute("SELECT eventq.run_maintenance()").unwrap()
            })
        };
        thread::sleep(Duration::from_millis(50 * round));
        let acked: i32 = db
            .query_one("SELECT eventq.ack('race_c', ARRAY[$1::bigint])", &[&head])
            .unwrap()
            .get(0);
        assert_eq!(acked, 1);
        drainer.join().unwrap();
        let next: Vec<(i64, String)> = db
            .query(
                "SELECT task_id, subject FROM eventq.pull('race_c', 100) WHERE subject <> 'other'",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            next.iter().map(|n| n.1.clone()).collect::<Vec<_>>(),
            [format!("second{round}")],
            "round {round}"
        );
        db.execute("SELECT eventq.ack('race_c', ARRAY[$1::bigint])", &[&next[0].0]).unwrap();
        db.batch_execute(
            "UPDATE eventq_internal.tasks SET state = 'completed' WHERE state <> 'completed'",
        )
        .unwrap();
        db.batch_execute("UPDATE eventq_internal.key_heads SET head_seq = NULL").unwrap();
    }
}

/// An event's own retry settings, against the real clock: its tasks in every consumer
/// retry after the event's backoff and give up after the event's attempts, counting leases
/// that ran out; other events keep their consumer's policy.
#[test]
fn an_events_retry_settings_hold_in_every_consumer_with_real_leases() {
    let cluster = Cluster::start("delivery-event-retry", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('r');
         SELECT eventq.create_consumer('patient', 'r', max_attempts => 10, backoff => 'fixed', backoff_base => '1 hour');
         SELECT eventq.create_consumer('other', 'r', max_attempts => 10, backoff => 'fixed', backoff_base => '1 hour');
         SELECT eventq.publish('r', 'strict', max_attempts => 2, backoff => 'fixed', backoff_base => '50 milliseconds');
         SELECT eventq.publish('r', 'lenient');",
    )
    .unwrap();
    for consumer in ["patient", "other"] {
        // attempt 1 fails: due again after the event's 50 ms, not the consumer's hour
        let rows = db
            .query(&format!("SELECT task_id, subject, attempt FROM eventq.pull('{consumer}', 10, lease => '200 milliseconds') ORDER BY seq"), &[])
            .unwrap();
        assert_eq!(rows.len(), 2, "{consumer}");
        let (strict, lenient): (i64, i64) = (rows[0].get(0), rows[1].get(0));
        let retry = |db: &mut postgres::Client, task: i64| -> String {
            db.query_one(&format!("SELECT eventq.retry('{consumer}', $1, 'failed')"), &[&task])
                .unwrap()
                .get(0)
        };
        assert_eq!(retry(&mut db, strict), "retryable");
        assert_eq!(retry(&mut db, lenient), "retryable");
        let again = wait_for("the strict event's retry", Duration::from_secs(5), || {
            let rows = db.query(&format!("SELECT task_id, attempt FROM eventq.pull('{consumer}', 10, lease => '200 milliseconds')"), &[]).unwrap();
            match rows.first() {
                Some(r) => Ok((r.get::<_, i64>(0), r.get::<_, i32>(1), rows.len())),
                None => Err("nothing due".to_string()),
            }
        });
        assert_eq!(again, (strict, 2, 1), "{consumer}: only the strict event is due again");
        // attempt 2 is abandoned: its lease runs out, which uses up the event's two attempts
        let state = wait_for("the lost lease", Duration::from_secs(5), || {
            db.batch_execute(&format!("SELECT * FROM eventq.pull('{consumer}', 10)")).unwrap();
            let s: String = db
                .query_one(&format!("SELECT state FROM eventq.tasks WHERE consumer = '{consumer}' AND task_id = $1"), &[&strict])
                .unwrap()
                .get(0);
            if s == "discarded" {
                Ok(s)
            } else {
                Err(s)
            }
        });
        assert_eq!(state, "discarded");
        let lost: i64 = db
            .query_one(&format!("SELECT count(*) FROM eventq.attempts WHERE consumer = '{consumer}' AND task_id = $1 AND outcome = 'lost'"), &[&strict])
            .unwrap()
            .get(0);
        assert_eq!(lost, 1, "{consumer}");
    }
}

/// A drain claims each new key of a key-ordered consumer in one pass. Each claim once
/// looked its readiness up among all the drain's claims: 10k new keys in a drain round
/// took 10 s, 40k in one round would take minutes (linearly, a few seconds). The
/// statement timeout is what makes the quadratic form fail here rather than hang.
#[test]
fn a_drain_of_many_new_keys_claims_them_in_one_pass() {
    let cluster = Cluster::start("delivery-new-keys", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');
         SELECT eventq.publish_batch('s', array_fill('o.c'::text, ARRAY[40000]),
                                     array_fill('{}'::jsonb, ARRAY[40000]),
                                     (SELECT array_agg('k' || i) FROM generate_series(1, 40000) i));
         SET eventq.drain_batch_size = 40000;
         SET statement_timeout = '60s';",
    )
    .unwrap();
    db.execute("SELECT eventq.run_maintenance()", &[]).unwrap();
    let available: i64 = db
        .query_one("SELECT available FROM eventq.consumers WHERE name = 'keyed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(available, 40000);
}
