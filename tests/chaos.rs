//! A seeded chaos run checked against a model. Publishers commit, roll back, keep
//! transactions open across seconds, use savepoints and prepared transactions; workers ack,
//! fail, abandon leases and make stale calls; consumers are created and dropped; the
//! worker and run_maintenance() drain concurrently; and the server is shut down
//! immediately every few seconds. In the end:
//! - the log holds every committed event and nothing rolled back;
//! - every task consumer has exactly one task per matching event, and all are finished;
//! - seq follows happens-before (a transaction that committed before another began comes
//!   first) and each transaction's publish order;
//! - a log reader saw seq strictly increase and never missed an event;
//! - tasks of a key ran one after the other, in seq order;
//! - no task was acked twice;
//! - the counts the views show are the rows there are.
//!
//! `make test` runs a short one; `make chaos SEED=… MINUTES=…` runs longer
//! (CHAOS_SEED, CHAOS_SECONDS).

mod common;

use common::{wait_for, Cluster, Rng, PRELOAD};
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const KEYS: u64 = 12;
const TASK_CONSUMERS: [&str; 3] = ["all", "keyed", "odd"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A connection that comes back after the server restarts.
struct Conn {
    url: String,
    client: Option<Client>,
}

impl Conn {
    fn new(cluster: &Cluster) -> Conn {
        Conn {
            url: format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.port),
            client: None,
        }
    }

    fn get(&mut self) -> Option<&mut Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Client::connect(&self.url, NoTls).ok();
        }
        self.client.as_mut()
    }

    /// Forgets the connection after an error that may have been a server restart.
    fn failed(&mut self, error: &postgres::Error) {
        if error.code().is_none() || self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Committed,
    RolledBack,
    /// The connection broke during COMMIT: the database knows.
    Unknown,
}

#[derive(Clone, Debug)]
struct Tx {
    /// (event id, key, subject), in publish order
    events: Vec<(String, String, String)>,
    began: u128,
    /// When COMMIT returned (micros since the start), if it did.
    committed: Option<u128>,
    outcome: Outcome,
}

#[derive(Default)]
struct Model {
    txs: Vec<Tx>,
    /// (consumer, task) -> successful acks
    acks: HashMap<(String, i64), u32>,
    log_errors: Vec<String>,
}

struct World {
    cluster: Cluster,
    origin: Instant,
    stop: AtomicBool,
    /// Every publisher and prepared transaction is done.
    settled: AtomicBool,
    restarting: AtomicBool,
    model: Mutex<Model>,
    gids: AtomicU64,
    /// Prepared transactions waiting for their verdict: gid -> (commit?, due, tx index)
    prepared: Mutex<Vec<(String, bool, Instant, usize)>>,
}

impl World {
    fn now(&self) -> u128 {
        self.origin.elapsed().as_micros()
    }
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
    fn pause(&self) {
        while self.restarting.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn publisher(world: &World, seed: u64) {
    let mut conn = Conn::new(&world.cluster);
    let mut rng = Rng::new(seed);
    while world.running() {
        world.pause();
        let Some(db) = conn.get() else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let began = world.now();
        let mut events = Vec::new();
        let kind = rng.below(100);
        let result: Result<Outcome, postgres::Error> = (|| {
            db.batch_execute("BEGIN")?;
            for _ in 0..1 + rng.below(4) {
                let key = format!("k{}", rng.below(KEYS));
                let subject = if rng.chance(50) { "n.odd" } else { "n.even" };
                let savepoint = rng.chance(10);
                if savepoint {
                    db.batch_execute("SAVEPOINT s")?;
                }
                let id: String = db
                    .query_one(
                        "SELECT eventq.publish('chaos', $1, key => $2)::text",
                        &[&subject, &key],
                    )?
                    .get(0);
                if savepoint && rng.chance(30) {
                    db.batch_execute("ROLLBACK TO SAVEPOINT s")?;
                } else {
                    events.push((id, key, subject.to_string()));
                }
            }
            if kind < 5 {
                // a long transaction, crossing staging slots
                thread::sleep(Duration::from_millis(1100 + rng.below(1500)));
            } else if kind < 15 {
                thread::sleep(Duration::from_millis(rng.below(80)));
            }
            if kind >= 95 {
                let gid = format!("chaos-{seed}-{}", world.gids.fetch_add(1, Ordering::Relaxed));
                db.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))?;
                let commit = rng.chance(80);
                let due = Instant::now() + Duration::from_millis(rng.below(1500));
                let mut model = world.model.lock().unwrap();
                model.txs.push(Tx {
                    events: events.clone(),
                    began,
                    committed: None,
                    outcome: Outcome::Unknown,
                });
                let index = model.txs.len() - 1;
                world.prepared.lock().unwrap().push((gid, commit, due, index));
                return Ok(Outcome::Unknown);
            }
            if rng.chance(15) {
                db.batch_execute("ROLLBACK")?;
                return Ok(Outcome::RolledBack);
            }
            Ok(Outcome::Committed)
        })();
        match result {
            Ok(Outcome::Unknown) => {}
            Ok(Outcome::RolledBack) => world.model.lock().unwrap().txs.push(Tx {
                events,
                began,
                committed: None,
                outcome: Outcome::RolledBack,
            }),
            Ok(Outcome::Committed) => {
                let outcome = match db.batch_execute("COMMIT") {
                    Ok(()) => Outcome::Committed,
                    Err(e) => {
                        conn.failed(&e);
                        Outcome::Unknown
                    }
                };
                let committed = (outcome == Outcome::Committed).then(|| world.now());
                world.model.lock().unwrap().txs.push(Tx { events, began, committed, outcome });
            }
            Err(e) => {
                // failed before COMMIT: nothing of it can have committed
                conn.failed(&e);
                world.model.lock().unwrap().txs.push(Tx {
                    events,
                    began,
                    committed: None,
                    outcome: Outcome::RolledBack,
                });
            }
        }
    }
}

/// Gives prepared transactions their verdict when due (from another session).
fn resolver(world: &World) {
    let mut conn = Conn::new(&world.cluster);
    loop {
        let due: Vec<(String, bool, Instant, usize)> = {
            let mut prepared = world.prepared.lock().unwrap();
            let now = Instant::now();
            let finishing = !world.running();
            let (ready, later): (Vec<_>, Vec<_>) =
                prepared.drain(..).partition(|p| finishing || p.2 <= now);
            *prepared = later;
            ready
        };
        if due.is_empty() && !world.running() {
            return;
        }
        for (gid, commit, due_at, index) in due {
            world.pause();
            let verb = if commit { "COMMIT" } else { "ROLLBACK" };
            let result = match conn.get() {
                Some(db) => db.batch_execute(&format!("{verb} PREPARED '{gid}'")),
                None => {
                    world.prepared.lock().unwrap().push((gid, commit, due_at, index));
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    let mut model = world.model.lock().unwrap();
                    let tx = &mut model.txs[index];
                    if commit {
                        tx.outcome = Outcome::Committed;
                        tx.committed = Some(world.origin.elapsed().as_micros());
                    } else {
                        tx.outcome = Outcome::RolledBack;
                    }
                }
                Err(e) => {
                    conn.failed(&e);
                    // the server restarted: the prepared transaction survives, try again
                    if e.code().is_none() {
                        world.prepared.lock().unwrap().push((gid, commit, due_at, index));
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn worker(world: &World, seed: u64, consumers: Arc<Mutex<Vec<String>>>) {
    let mut conn = Conn::new(&world.cluster);
    let mut rng = Rng::new(seed);
    while world.running() {
        world.pause();
        let names = consumers.lock().unwrap().clone();
        for consumer in names {
            let Some(db) = conn.get() else { break };
            let rows = match db.query(
                "SELECT task_id, attempt FROM eventq.pull($1, 10, lease => '400 milliseconds')",
                &[&consumer],
            ) {
                Ok(rows) => rows,
                Err(e) => {
                    conn.failed(&e);
                    continue;
                }
            };
            for row in rows {
                let (task, attempt): (i64, i32) = (row.get(0), row.get(1));
                let roll = rng.below(100);
                let Some(db) = conn.get() else { break };
                let result: Result<(), postgres::Error> = (|| {
                    if roll < 8 {
                        db.execute(
                            "SELECT eventq.retry($1, $2, 'chaos', '30 milliseconds', $3)",
                            &[&consumer, &task, &attempt],
                        )?;
                    } else if roll < 10 && consumer != "keyed" {
                        // (not on the keyed consumer: redriving it at the end would reorder
                        // its key after the fact)
                        db.execute(
                            "SELECT eventq.discard($1, $2, 'chaos', $3)",
                            &[&consumer, &task, &attempt],
                        )?;
                    } else if roll < 14 {
                        // abandoned: the lease runs out
                    } else {
                        if roll < 17 {
                            // too late: the task may have been leased again meanwhile
                            thread::sleep(Duration::from_millis(450));
                        }
                        let n: i32 = db
                            .query_one(
                                "SELECT eventq.ack($1, ARRAY[$2::bigint], ARRAY[$3::int])",
                                &[&consumer, &task, &attempt],
                            )?
                            .get(0);
                        if n == 1 {
                            *world
                                .model
                                .lock()
                                .unwrap()
                                .acks
                                .entry((consumer.clone(), task))
                                .or_default() += 1;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    conn.failed(&e);
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Fetches and commits in a loop: seq only ever increases.
/// Fetches and commits in a loop. An event it has not seen never comes with a seq at or
/// below one it has seen; seen events may come again after a commit that a restart lost.
fn log_reader(world: &World) -> HashSet<String> {
    let mut conn = Conn::new(&world.cluster);
    let mut seen = HashSet::new();
    let (mut last, mut confirmed) = (0i64, 0i64);
    loop {
        let finishing = world.settled.load(Ordering::Relaxed);
        world.pause();
        let Some(db) = conn.get() else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        match db.query("SELECT seq, event_id::text FROM eventq.fetch('log', 500)", &[]) {
            Ok(rows) => {
                let empty = rows.is_empty();
                for row in &rows {
                    let seq: i64 = row.get(0);
                    let id: String = row.get(1);
                    let new = seen.insert(id);
                    if seq <= confirmed || (new && seq <= last) {
                        world.model.lock().unwrap().log_errors.push(format!(
                            "seq {seq} (new: {new}) after {last}, committed {confirmed}"
                        ));
                    }
                    last = last.max(seq);
                }
                match db.execute("SELECT eventq.commit('log', $1)", &[&last]) {
                    Ok(_) => confirmed = last,
                    Err(e) => conn.failed(&e),
                }
                if empty && finishing {
                    return seen;
                }
            }
            Err(e) => conn.failed(&e),
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn chaos() {
    let seed = env_u64("CHAOS_SEED", 20261127);
    let seconds = env_u64("CHAOS_SECONDS", 20);
    eprintln!("chaos: seed {seed}, {seconds} s (CHAOS_SEED, CHAOS_SECONDS)");
    let cluster = Cluster::start(
        "chaos",
        &[
            PRELOAD,
            "synchronous_commit = on",
            "max_prepared_transactions = 20",
            "eventq.maintenance_interval = '100ms'",
            "eventq.cleanup_interval = '1s'",
            "eventq.keep_finished_tasks = '1h'",
        ],
    );
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('chaos', retention => NULL);
         SELECT eventq.create_consumer('all', 'chaos', max_attempts => 1000, lease => '400 milliseconds');
         SELECT eventq.create_consumer('keyed', 'chaos', ordering => 'key', max_attempts => 1000);
         SELECT eventq.create_consumer('odd', 'chaos', subjects => '{*.odd}', max_attempts => 1000);
         SELECT eventq.create_consumer('log', 'chaos', mode => 'log');",
    )
    .unwrap();
    let world = Arc::new(World {
        cluster,
        origin: Instant::now(),
        stop: AtomicBool::new(false),
        settled: AtomicBool::new(false),
        restarting: AtomicBool::new(false),
        model: Mutex::default(),
        gids: AtomicU64::new(0),
        prepared: Mutex::default(),
    });
    let consumers: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(TASK_CONSUMERS.iter().map(|s| s.to_string()).collect()));
    let mut threads = Vec::new();
    for p in 0..3 {
        let world = world.clone();
        threads.push(thread::spawn(move || publisher(&world, seed * 31 + p)));
    }
    for w in 0..3 {
        let (world, consumers) = (world.clone(), consumers.clone());
        threads.push(thread::spawn(move || worker(&world, seed * 17 + w, consumers)));
    }
    {
        let world = world.clone();
        threads.push(thread::spawn(move || resolver(&world)));
    }
    let reader = {
        let world = world.clone();
        thread::spawn(move || log_reader(&world))
    };
    // maintenance, and consumers that come and go
    let churn = {
        let (world, consumers) = (world.clone(), consumers.clone());
        thread::spawn(move || {
            let mut conn = Conn::new(&world.cluster);
            let mut rng = Rng::new(seed * 7);
            let mut n = 0;
            while world.running() {
                world.pause();
                thread::sleep(Duration::from_millis(150));
                let Some(db) = conn.get() else { continue };
                let result = if rng.chance(30) {
                    n += 1;
                    let name = format!("temp_{n}");
                    let sql = format!(
                        "SELECT eventq.create_consumer('{name}', 'chaos', start_at => '-infinity', max_attempts => 1000)"
                    );
                    let r = db.batch_execute(&sql);
                    if r.is_ok() {
                        consumers.lock().unwrap().push(name);
                    }
                    r
                } else if rng.chance(20) {
                    let doomed =
                        consumers.lock().unwrap().iter().find(|c| c.starts_with("temp_")).cloned();
                    match doomed {
                        Some(name) => {
                            consumers.lock().unwrap().retain(|c| *c != name);
                            db.batch_execute(&format!("SELECT eventq.drop_consumer('{name}')"))
                        }
                        None => Ok(()),
                    }
                } else if rng.chance(30) {
                    db.batch_execute(&format!(
                        "SELECT eventq.alter_consumer('all', lease => '{} milliseconds')",
                        300 + rng.below(200)
                    ))
                } else {
                    db.batch_execute("SELECT eventq.run_maintenance()")
                };
                if let Err(e) = result {
                    conn.failed(&e);
                }
            }
        })
    };
    // immediate shutdowns
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut crashes = 0;
    while Instant::now() < deadline {
        thread::sleep(
            Duration::from_secs(6).min(deadline.saturating_duration_since(Instant::now())),
        );
        if Instant::now() + Duration::from_secs(2) < deadline {
            world.restarting.store(true, Ordering::Relaxed);
            world.cluster.pg_ctl(&["-m", "immediate", "stop"]);
            world.cluster.pg_ctl(&["start"]);
            world.restarting.store(false, Ordering::Relaxed);
            crashes += 1;
        }
    }
    world.stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    world.settled.store(true, Ordering::Relaxed);

    // The counts the views show survived every crash, rollback and drop.
    common::assert_counts_match_rows(&mut world.cluster.connect(), "after the chaos");

    // Finish the work: everything drained, every discarded task redriven, every task acked.
    // A PREPARE whose answer was lost to a restart may have left a prepared transaction
    // nobody knows of: roll it back (its events count as rolled back).
    let mut db = world.cluster.connect();
    for gid in common::column(&mut db, "SELECT gid FROM pg_prepared_xacts") {
        db.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    }
    // every task consumer there is (a drop that a restart interrupted left one behind)
    let final_consumers =
        common::column(&mut db, "SELECT name FROM eventq.consumers WHERE mode = 'task' ORDER BY 1");
    wait_for("everything drained and finished", Duration::from_secs(120), || {
        db.batch_execute("SELECT eventq.run_maintenance()").unwrap();
        for consumer in &final_consumers {
            db.execute("SELECT eventq.redrive($1)", &[consumer]).unwrap();
            loop {
                let rows = db
                    .query("SELECT task_id, attempt FROM eventq.pull($1, 1000)", &[consumer])
                    .unwrap();
                if rows.is_empty() {
                    break;
                }
                let tasks: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let attempts: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
                let acked: Vec<i64> = db
                    .query(
                        "SELECT t FROM unnest($2::bigint[], $3::int[]) AS u(t, a),
                                LATERAL eventq.ack($1, ARRAY[t], ARRAY[a]) AS n WHERE n = 1",
                        &[consumer, &tasks, &attempts],
                    )
                    .unwrap()
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut model = world.model.lock().unwrap();
                for task in acked {
                    *model.acks.entry((consumer.clone(), task)).or_default() += 1;
                }
            }
        }
        let unfinished: i64 = db
            .query_one("SELECT count(*) FROM eventq.tasks WHERE state <> 'completed'", &[])
            .unwrap()
            .get(0);
        let staged: i64 =
            db.query_one("SELECT count(*) FROM eventq_internal.staged", &[]).unwrap().get(0);
        if unfinished == 0 && staged == 0 {
            Ok(())
        } else {
            let states = common::column(
                &mut db,
                "SELECT consumer || ':' || state || ':' || count(*) FROM eventq.tasks
                 WHERE state <> 'completed' GROUP BY consumer, state ORDER BY 1",
            );
            Err(format!("{unfinished} unfinished, {staged} staged: {states:?}"))
        }
    });
    let seen_by_reader = reader.join().unwrap();

    let model = world.model.lock().unwrap();
    eprintln!(
        "chaos: {} transactions, {} crashes, {} acks",
        model.txs.len(),
        crashes,
        model.acks.len()
    );
    assert!(model.log_errors.is_empty(), "log reader: {:?}", model.log_errors);

    // The log: committed events, nothing rolled back.
    let logged: HashMap<String, (i64, String, String)> = db
        .query(
            "SELECT event_id::text, seq, key, subject FROM eventq.events WHERE stream = 'chaos'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    for tx in &model.txs {
        for (id, _, _) in &tx.events {
            match tx.outcome {
                Outcome::Committed => {
                    assert!(logged.contains_key(id), "committed event {id} missing")
                }
                Outcome::RolledBack => {
                    assert!(!logged.contains_key(id), "rolled back event {id} logged")
                }
                Outcome::Unknown => {}
            }
        }
    }
    let published: HashSet<&String> =
        model.txs.iter().flat_map(|t| t.events.iter().map(|e| &e.0)).collect();
    assert!(
        logged.keys().all(|id| published.contains(id)),
        "the log holds events nobody published"
    );
    assert!(logged.keys().all(|id| seen_by_reader.contains(id)), "the log reader missed events");

    // Publish order within a transaction, and happens-before across transactions.
    for tx in model.txs.iter().filter(|t| t.events.iter().all(|e| logged.contains_key(&e.0))) {
        let seqs: Vec<i64> = tx.events.iter().map(|e| logged[&e.0].0).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "publish order in a transaction: {seqs:?}");
    }
    let logged_ref = &logged;
    let mut spans: Vec<(i64, u128, u128)> = model
        .txs
        .iter()
        .filter(|t| !t.events.is_empty() && logged_ref.contains_key(&t.events[0].0))
        .flat_map(|t| {
            let committed = t.committed.unwrap_or(u128::MAX);
            t.events.iter().map(move |e| (logged_ref[&e.0].0, t.began, committed))
        })
        .collect();
    spans.sort();
    let mut earliest_commit_after = u128::MAX;
    for &(seq, began, committed) in spans.iter().rev() {
        assert!(earliest_commit_after >= began, "happens-before broken at seq {seq}");
        earliest_commit_after = earliest_commit_after.min(committed);
    }

    // One task per matching event for every consumer, all completed, none acked twice.
    for consumer in &final_consumers {
        let tasks: BTreeMap<i64, String> = db
            .query("SELECT task_id, state FROM eventq.tasks WHERE consumer = $1", &[consumer])
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: HashSet<i64> = logged
            .values()
            .filter(|(_, _, subject)| consumer != "odd" || subject == "n.odd")
            .map(|(seq, _, _)| *seq)
            .collect();
        let have: HashSet<i64> = tasks.keys().copied().collect();
        let mut missing: Vec<&i64> = expected.difference(&have).collect();
        let mut extra: Vec<&i64> = have.difference(&expected).collect();
        missing.sort();
        extra.sort();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{consumer}: missing tasks for {missing:?}, extra {extra:?}"
        );
        assert!(tasks.values().all(|s| s == "completed"), "{consumer}: unfinished tasks");
    }
    assert!(model.acks.values().all(|&n| n == 1), "a task was acked twice");

    // Key order: a task of a key started its last attempt only after the previous one ended.
    let overlaps: i64 = db
        .query_one(
            "SELECT count(*) FROM (
                 SELECT started_at, lag(finished_at) OVER (PARTITION BY key ORDER BY seq) AS previous_done
                 FROM eventq.tasks WHERE consumer = 'keyed'
             ) t WHERE started_at < previous_done",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(overlaps, 0, "tasks of a key overlapped or ran out of order");
}
