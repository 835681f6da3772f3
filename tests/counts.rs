//! The counts that `eventq.consumers` and `eventq.streams` show come from rows that
//! triggers add beside each change (see task_counts in sql/schema.sql), not from counting
//! tasks and events. Every path that changes tasks or events must leave them equal to the
//! rows: each operation of the API, rollbacks, prepared transactions, retention, drops,
//! folding, and every isolation level.

mod common;

use common::{assert_counts_match_rows, count, Cluster, PRELOAD};
use postgres::Client;

fn maintain(db: &mut Client) {
    db.execute("SELECT eventq.run_maintenance()", &[]).unwrap();
}

/// The ids of the tasks one pull of `max` leased.
fn pull_ids(db: &mut Client, consumer: &str, max: i32) -> Vec<i64> {
    db.query("SELECT task_id FROM eventq.pull($1, $2)", &[&consumer, &max])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn the_counts_follow_every_change_of_tasks_and_events() {
    let cluster = Cluster::start("counts", &["max_prepared_transactions = 4"]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_stream('other');
         SELECT eventq.create_consumer('plain', 's', max_attempts => 2, backoff_base => '1 hour');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');
         SELECT eventq.create_consumer('some', 's', subjects => '{b.*}');
         SELECT eventq.create_consumer('reader', 's', mode => 'log');
         SELECT eventq.create_consumer('late', 'other', lease => '1 second');
         SELECT eventq.publish_batch('s', ARRAY['a.x','b.y','a.x','b.z','a.x','b.y'],
                                     array_fill('{}'::jsonb, ARRAY[6]), ARRAY['k1','k1','k2','k1','k3','k2']);
         SELECT eventq.publish('s', 'a.later', deliver_at => now() + interval '1 hour');
         SELECT eventq.publish('other', 'x');",
    )
    .unwrap();
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "after publishing");
    assert_eq!(
        count(&mut db, "SELECT 1 FROM eventq.tasks WHERE consumer = 'keyed' AND state = 'waiting'"),
        3
    );

    // pull, ack, retry, discard, extend_lease, ignore
    let plain = pull_ids(&mut db, "plain", 5);
    db.execute("SELECT eventq.ack('plain', $1)", &[&vec![plain[0], plain[1]]]).unwrap();
    db.execute("SELECT eventq.retry('plain', $1, 'boom')", &[&plain[2]]).unwrap();
    db.execute("SELECT eventq.discard('plain', $1, 'no')", &[&plain[3]]).unwrap();
    db.execute("SELECT eventq.extend_lease('plain', $1)", &[&plain[4]]).unwrap();
    let keyed = pull_ids(&mut db, "keyed", 10);
    db.execute("SELECT eventq.ignore('keyed', $1)", &[&keyed[0]]).unwrap();
    db.execute("SELECT eventq.ack('keyed', $1)", &[&keyed[1..].to_vec()]).unwrap();
    assert_counts_match_rows(&mut db, "after pull, ack, retry, discard and ignore");

    // an operator's actions
    db.batch_execute(
        "SELECT eventq.retry_now('plain');
         SELECT eventq.redrive('plain');
         SELECT eventq.cancel('some', ARRAY(SELECT task_id FROM eventq.tasks WHERE consumer = 'some'));",
    )
    .unwrap();
    assert_counts_match_rows(&mut db, "after retry_now, redrive and cancel");

    // rolled back, in a savepoint, and prepared: counted only once committed
    db.batch_execute(
        "BEGIN;
         SELECT eventq.ack('plain', ARRAY(SELECT task_id FROM eventq.pull('plain', 2)));
         ROLLBACK;
         BEGIN;
         SAVEPOINT one;
         SELECT eventq.ack('plain', ARRAY(SELECT task_id FROM eventq.pull('plain', 1)));
         ROLLBACK TO one;
         SELECT eventq.publish('s', 'a.saved');
         COMMIT;
         BEGIN;",
    )
    .unwrap();
    assert_eq!(db.query("SELECT eventq.pull('plain', 1)", &[]).unwrap().len(), 1);
    db.batch_execute("PREPARE TRANSACTION 'held'").unwrap();
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "with a prepared pull");
    db.batch_execute("COMMIT PREPARED 'held'").unwrap();
    assert_counts_match_rows(&mut db, "after COMMIT PREPARED");

    // under every isolation level
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        db.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL {level}; SELECT eventq.publish('s', 'b.iso');"
        ))
        .unwrap();
        let acked: i32 = db
            .query_one(
                "SELECT eventq.ack('plain', ARRAY(SELECT task_id FROM eventq.pull('plain', 1)))",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(acked, 1, "{level}");
        db.batch_execute("COMMIT").unwrap();
        maintain(&mut db);
        assert_counts_match_rows(&mut db, level);
    }

    // lease expiry (to retryable, then to discarded at the last attempt)
    db.batch_execute("SELECT eventq.pull('late', 1)").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "after a lease ran out");

    // folding keeps the totals and leaves one row per consumer and state
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "after folding");
    assert_eq!(
        common::column(
            &mut db,
            "SELECT consumer_id || ' ' || state FROM eventq_internal.task_counts
             GROUP BY 1 HAVING count(*) > 1"
        ),
        Vec::<String>::new()
    );

    // retention, and drops
    db.batch_execute(
        "SELECT eventq.alter_stream('other', retention => '1 microsecond');
         SELECT pg_sleep(0.01);",
    )
    .unwrap();
    let expired: i64 = db
        .query_one("SELECT (eventq.run_maintenance()->>'expired_events')::bigint", &[])
        .unwrap()
        .get(0);
    assert!(expired > 0);
    assert_counts_match_rows(&mut db, "after retention");
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq_internal.event_counts
                WHERE stream_id = (SELECT id FROM eventq_internal.streams WHERE name = 'other')
                HAVING sum(events) <> 0"
        ),
        0
    );
    db.batch_execute(
        "SELECT eventq.drop_consumer('keyed'); SELECT eventq.drop_stream('other', force => true)",
    )
    .unwrap();
    assert_counts_match_rows(&mut db, "after drops");
    maintain(&mut db);
    assert_eq!(
        common::column(
            &mut db,
            "SELECT consumer_id || ' ' || state || ' ' || tasks FROM eventq_internal.task_counts
             WHERE consumer_id NOT IN (SELECT consumer_id FROM eventq_internal.tasks)"
        ),
        Vec::<String>::new(),
        "counts of tasks that are gone are folded away"
    );
}

/// With and without preloading: what was counted is kept per session, or shared by all
/// sessions (src/unread_counts.rs).
#[test]
fn a_log_consumers_lag_is_counted_for_the_roles_that_see_it_only() {
    log_lag_for_the_roles_that_see_it("counts-log-lag", &[]);
    log_lag_for_the_roles_that_see_it("counts-log-lag-preloaded", &[PRELOAD]);
}

fn log_lag_for_the_roles_that_see_it(name: &str, settings: &[&str]) {
    let cluster = Cluster::start(name, settings);
    let mut db = cluster.connect();
    db.batch_execute(
        "CREATE ROLE app LOGIN;
         CREATE ROLE snoop LOGIN;
         CREATE ROLE manager LOGIN;
         CREATE ROLE colleague LOGIN IN ROLE app;
         SELECT eventq.create_stream('s');
         SELECT eventq.grant('consume', 's', 'app');
         SELECT eventq.grant('consume', 's', 'snoop');
         SELECT eventq.grant('manage', 's', 'manager');
         SELECT eventq.create_consumer('theirs', 's', mode => 'log');
         SELECT eventq.create_consumer('tasks', 's');",
    )
    .unwrap();
    let mut app = cluster.connect_as("postgres", "app");
    app.batch_execute(
        "SELECT eventq.create_consumer('mine', 's', mode => 'log', subjects => '{a.*}')",
    )
    .unwrap();
    db.batch_execute(
        "SELECT eventq.publish('s', 'a.one'); SELECT eventq.publish('s', 'b.two');
         SELECT eventq.publish('s', 'a.three');",
    )
    .unwrap();
    maintain(&mut db);

    let lags = |db: &mut Client| {
        common::column(
            db,
            "SELECT name || ' ' || lag || ' ' || (oldest_due_age IS NOT NULL)
             FROM eventq.consumers WHERE mode = 'log' ORDER BY name",
        )
    };
    // The reading role may not read storage: the counting runs as its owner.
    assert_eq!(lags(&mut app), vec!["mine 2 true"]);
    assert_eq!(lags(&mut cluster.connect_as("postgres", "colleague")), vec!["mine 2 true"]);
    assert_eq!(lags(&mut cluster.connect_as("postgres", "snoop")), Vec::<String>::new());
    let everything = vec!["mine 2 true", "theirs 3 true"];
    assert_eq!(lags(&mut cluster.connect_as("postgres", "manager")), everything);
    assert_eq!(lags(&mut db), everything);
    let fetched: i64 =
        app.query_one("SELECT max(seq) FROM eventq.fetch('mine')", &[]).unwrap().get(0);
    app.execute("SELECT eventq.commit('mine', $1)", &[&fetched]).unwrap();
    assert_eq!(lags(&mut app), vec!["mine 0 false"]);

    // A consumer that does not read: counted once, then only what came since; an unread
    // event deleted below what was counted (retention, by hand) is noticed.
    let theirs_lag = "SELECT lag FROM eventq.consumers WHERE name = 'theirs'";
    assert_eq!(db.query_one(theirs_lag, &[]).unwrap().get::<_, i64>(0), 3);
    db.batch_execute("SELECT eventq.publish('s', 'b.four')").unwrap();
    maintain(&mut db);
    assert_eq!(db.query_one(theirs_lag, &[]).unwrap().get::<_, i64>(0), 4);
    db.batch_execute(
        "DELETE FROM eventq_internal.events
         WHERE seq = (SELECT min(seq) FROM eventq_internal.events)",
    )
    .unwrap();
    assert_eq!(db.query_one(theirs_lag, &[]).unwrap().get::<_, i64>(0), 3);
    db.batch_execute("SELECT eventq.publish('s', 'b.five')").unwrap();
    maintain(&mut db);
    assert_eq!(db.query_one(theirs_lag, &[]).unwrap().get::<_, i64>(0), 4);

    // A filter that matches nothing: the second read skips what the first found empty, and
    // an event that matches later is counted all the same.
    db.batch_execute(
        "SELECT eventq.create_consumer('none', 's', mode => 'log', subjects => '{z.*}')",
    )
    .unwrap();
    let none = "SELECT lag FROM eventq.consumers WHERE name = 'none'";
    for _ in 0..2 {
        db.batch_execute("SELECT eventq.publish('s', 'a.four')").unwrap();
        maintain(&mut db);
        assert_eq!(db.query_one(none, &[]).unwrap().get::<_, i64>(0), 0);
    }
    db.batch_execute("SELECT eventq.publish('s', 'z.one'); SELECT eventq.publish('s', 'a.five')")
        .unwrap();
    maintain(&mut db);
    for _ in 0..2 {
        assert_eq!(db.query_one(none, &[]).unwrap().get::<_, i64>(0), 1);
    }
    db.batch_execute("SELECT eventq.seek('none', 0)").unwrap();
    assert_eq!(db.query_one(none, &[]).unwrap().get::<_, i64>(0), 1);

    // Called directly, it answers for the consumers the caller sees, and no others, even
    // for a role that was let into the storage schema by mistake.
    let theirs: i32 = db
        .query_one("SELECT id FROM eventq_internal.consumers WHERE name = 'theirs'", &[])
        .unwrap()
        .get(0);
    let mut snoop = cluster.connect_as("postgres", "snoop");
    let denied =
        common::fails_with(&mut snoop, &format!("SELECT * FROM eventq_internal.unread({theirs})"));
    assert_eq!(denied, "42501");
    db.batch_execute("GRANT USAGE ON SCHEMA eventq_internal TO snoop").unwrap();
    let mut snoop = cluster.connect_as("postgres", "snoop");
    assert_eq!(count(&mut snoop, &format!("SELECT * FROM eventq_internal.unread({theirs})")), 0);
    assert_eq!(count(&mut db, &format!("SELECT * FROM eventq_internal.unread({theirs})")), 1);
    // A task consumer has no unread events.
    assert_eq!(
        count(&mut db, "SELECT * FROM eventq_internal.unread((SELECT id FROM eventq_internal.consumers WHERE name = 'tasks'))"),
        0
    );
}

/// Rows of the log a statement read, by index or by scan, in this session's transaction.
fn log_rows_read(db: &mut Client, sql: &str) -> (i64, i64) {
    let read = "SELECT pg_stat_get_xact_tuples_fetched('eventq_internal.events'::regclass)
                     + pg_stat_get_xact_tuples_returned('eventq_internal.events'::regclass)";
    db.batch_execute("BEGIN").unwrap();
    let before: i64 = db.query_one(read, &[]).unwrap().get(0);
    let value: i64 = db.query_one(sql, &[]).unwrap().get(0);
    let after: i64 = db.query_one(read, &[]).unwrap().get(0);
    db.batch_execute("COMMIT").unwrap();
    (value, after - before)
}

/// With eventq preloaded, a log consumer's lag counted in one session serves the next
/// sessions: a dashboard that connects for each read counts only what came since, not
/// the whole backlog (1.1 s at a million events). Events gone below the count are noticed.
#[test]
fn a_log_consumers_lag_counted_in_one_session_serves_the_others() {
    let cluster = Cluster::start("counts-lag-shared", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('stuck', 's', mode => 'log', subjects => '{a.*}');
         SELECT eventq.publish_batch('s', array_agg(CASE WHEN i % 2 = 0 THEN 'a.x' ELSE 'b.x' END),
                                     array_fill('{}'::jsonb, ARRAY[20000]))
         FROM generate_series(1, 20000) i;",
    )
    .unwrap();
    maintain(&mut db);
    let lag = "SELECT lag FROM eventq.consumers WHERE name = 'stuck'";
    let (first, read) = log_rows_read(&mut cluster.connect(), lag);
    assert_eq!(first, 10000);
    assert!(read >= 20000, "the first count read {read} rows of 20000");
    for _ in 0..2 {
        let (again, read) = log_rows_read(&mut cluster.connect(), lag);
        assert_eq!(again, 10000);
        assert!(read < 100, "a new session read {read} rows of the log to show the lag");
    }
    db.batch_execute("SELECT eventq.publish('s', 'a.y'); SELECT eventq.publish('s', 'b.y')")
        .unwrap();
    maintain(&mut db);
    let (more, read) = log_rows_read(&mut cluster.connect(), lag);
    assert_eq!(more, 10001);
    assert!(read < 100, "a new session read {read} rows of the log for 2 new events");
    db.batch_execute(
        "DELETE FROM eventq_internal.events
         WHERE seq = (SELECT min(seq) FROM eventq_internal.events WHERE subject = 'a.x')",
    )
    .unwrap();
    assert_eq!(log_rows_read(&mut cluster.connect(), lag).0, 10000);
    assert_eq!(log_rows_read(&mut db, lag).0, 10000);
}

/// Rows of `table` read by sequential scans so far, this session's included.
fn rows_scanned(db: &mut Client, table: &str) -> i64 {
    table_statistic(db, table, "seq_tup_read")
}

/// A column of `pg_stat_user_tables` for a table of eventq's storage, this session's
/// pending statistics included.
fn table_statistic(db: &mut Client, table: &str, column: &str) -> i64 {
    db.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    db.query_one(
        &format!(
            "SELECT {column} FROM pg_stat_user_tables
             WHERE relid = ('eventq_internal.' || $1)::regclass"
        ),
        &[&table],
    )
    .unwrap()
    .get(0)
}

/// A fold reads its rows a fixed number of times, whatever the planner makes of the
/// statistics. The folds
/// once chose the groups to fold by joining the table to its own groups: analyzed right
/// after a fold (a few rows in the pages of many), the table looked nearly empty, the join
/// became a nested loop that read the table (or its sorted copy) again for every group or
/// row, and run_maintenance() after a burst ran for more than ten minutes. Here every join
/// must be a nested loop: a fold that joins its table to itself reads it once per group.
/// And a fold with nothing to fold writes nothing (under a held snapshot, rows it rewrote
/// would stay).
#[test]
fn folding_the_counts_reads_them_a_fixed_number_of_times() {
    let cluster = Cluster::start("counts-fold", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.create_consumer('gone', 's');
         SELECT eventq.publish_batch('s', ARRAY['a','b','c'], array_fill('{}'::jsonb, ARRAY[3]));",
    )
    .unwrap();
    maintain(&mut db);
    // The statistics of a table just folded: a few rows in many pages.
    db.batch_execute(
        "INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
         SELECT id, 'available', 0 FROM eventq_internal.consumers, generate_series(1, 20000);
         DELETE FROM eventq_internal.task_counts WHERE tasks = 0;
         ANALYZE eventq_internal.task_counts;",
    )
    .unwrap();
    // Rows that change no count, as many as a busy minute leaves between folds, and
    // expirations of a consumer that is then dropped.
    db.batch_execute(
        "INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
         SELECT c.id, s.state, 0 FROM eventq_internal.consumers c,
                unnest(ARRAY['available', 'running', 'completed']::eventq_internal.task_state[]) s(state),
                generate_series(1, 20000);
         INSERT INTO eventq_internal.event_counts (stream_id, events)
         SELECT id, 0 FROM eventq_internal.streams, generate_series(1, 50000);
         INSERT INTO eventq_internal.expirations (consumer_id, tasks)
         SELECT id, 1 FROM eventq_internal.consumers, generate_series(1, 25000);
         SELECT eventq.drop_consumer('gone');",
    )
    .unwrap();
    let rows =
        |db: &mut Client, table: &str| count(db, &format!("SELECT * FROM eventq_internal.{table}"));
    let tables = ["task_counts", "event_counts", "expirations"];
    let before: Vec<(i64, i64)> =
        tables.iter().map(|t| (rows(&mut db, t), rows_scanned(&mut db, t))).collect();
    assert_eq!(
        count(&mut db, "SELECT * FROM eventq.consumers WHERE name = 'c' AND expired = 25000"),
        1
    );
    db.batch_execute(
        "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_material = off;
         SET statement_timeout = '60s'",
    )
    .unwrap();
    maintain(&mut db);
    db.batch_execute("RESET ALL").unwrap();
    for (table, (rows_before, scanned_before)) in tables.iter().zip(before) {
        let scanned = rows_scanned(&mut db, table) - scanned_before;
        // (a pass to see whether there is anything to fold, one more for expirations of
        // consumers that are gone, and the fold's own)
        assert!(
            scanned <= 3 * rows_before + 100,
            "folding {table} read {scanned} rows of {rows_before}"
        );
    }
    for (table, most) in [("task_counts", 7), ("event_counts", 1), ("expirations", 1)] {
        let left = rows(&mut db, table);
        assert!(left <= most, "{table} has {left} rows after a fold");
    }
    assert_eq!(
        count(&mut db, "SELECT * FROM eventq.consumers WHERE name = 'c' AND expired = 25000"),
        1
    );
    assert_counts_match_rows(&mut db, "after folding");
    // Folded already, and nothing changed since: a fold writes nothing.
    let written = |db: &mut Client| -> Vec<i64> {
        tables.iter().map(|t| table_statistic(db, t, "n_tup_ins + n_tup_del")).collect()
    };
    let before = written(&mut db);
    maintain(&mut db);
    assert_eq!(written(&mut db), before, "rows written by a fold with nothing to fold");
}

#[test]
fn truncating_empties_the_counts_and_recount_repairs_writes_the_triggers_missed() {
    let cluster = Cluster::start("counts-repair", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         SELECT eventq.publish_batch('s', ARRAY['a','b','c','d'], array_fill('{}'::jsonb, ARRAY[4]));",
    )
    .unwrap();
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "after publishing");

    // Rows changed while triggers do not fire (as a data-only restore with
    // --disable-triggers loads them): the counts are wrong until recount().
    db.batch_execute(
        "SET session_replication_role = replica;
         DELETE FROM eventq_internal.tasks WHERE seq = (SELECT min(seq) FROM eventq_internal.tasks);
         UPDATE eventq_internal.tasks SET state = 'completed', finished_at = now()
          WHERE seq = (SELECT max(seq) FROM eventq_internal.tasks);
         DELETE FROM eventq_internal.events WHERE seq = (SELECT min(seq) FROM eventq_internal.events);
         RESET session_replication_role;",
    )
    .unwrap();
    let shown: i64 = db
        .query_one("SELECT available FROM eventq.consumers WHERE name = 'c'", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, 4, "the triggers fired after all: this test no longer tests recount");
    assert_eq!(
        common::fails_with(
            &mut db,
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT eventq.recount()"
        ),
        "25001"
    );
    db.batch_execute("ROLLBACK").unwrap();
    db.batch_execute("SELECT eventq.recount()").unwrap();
    assert_counts_match_rows(&mut db, "after recount");
    db.batch_execute("CREATE ROLE app LOGIN").unwrap();
    let mut app = cluster.connect_as("postgres", "app");
    assert_eq!(common::fails_with(&mut app, "SELECT eventq.recount()"), "42501");

    // recount() holds off writers of tasks until it commits.
    db.batch_execute("BEGIN; SELECT eventq.recount();").unwrap();
    let mut other = cluster.connect();
    other.batch_execute("SET lock_timeout = '200ms'").unwrap();
    assert_eq!(common::fails_with(&mut other, "SELECT eventq.pull('c', 1)"), "55P03");
    db.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut other, "SELECT eventq.pull('c', 1)"), 1);
    assert_counts_match_rows(&mut db, "after a pull behind recount");

    // TRUNCATE by hand: the counts go with the rows.
    db.batch_execute("TRUNCATE eventq_internal.tasks, eventq_internal.events CASCADE").unwrap();
    assert_counts_match_rows(&mut db, "after TRUNCATE");
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.task_counts"), 0);
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq_internal.event_counts"), 0);
}

/// recount() takes its locks in whatever order the writers leave them free: run beside
/// drains, pulls, acks and drops, none of them fails (a lock-order cycle would make one
/// of them a deadlock victim) and the counts match the rows afterwards.
#[test]
fn recount_runs_beside_drains_pulls_and_drops() {
    let cluster = Cluster::start("counts-recount-busy", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');",
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawn = |work: &'static str| {
        let mut db = cluster.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for statement in work.split(';').filter(|s| !s.trim().is_empty()) {
                    db.batch_execute(statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
                }
                rounds += 1;
            }
            rounds
        })
    };
    let publisher = spawn(
        "SELECT eventq.publish_batch('s', array_fill('a'::text, ARRAY[20]), array_fill('{}'::jsonb, ARRAY[20]));
         SELECT eventq.run_maintenance()",
    );
    let worker = spawn("SELECT eventq.ack('c', ARRAY(SELECT task_id FROM eventq.pull('c', 10)))");
    let churn = spawn(
        "SELECT eventq.create_consumer('brief', 's');
         SELECT eventq.publish('s', 'b');
         SELECT eventq.run_maintenance();
         SELECT eventq.drop_consumer('brief')",
    );
    for _ in 0..15 {
        db.batch_execute("SELECT eventq.recount()").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (name, thread) in [("publisher", publisher), ("worker", worker), ("churn", churn)] {
        assert!(thread.join().unwrap() > 0, "the {name} never got through");
    }
    maintain(&mut db);
    assert_counts_match_rows(&mut db, "after recounts beside writers");
}

/// Tasks of the storage table that a query over the views read: rows every scan of it
/// returned plus rows its filters threw away, from the query's EXPLAIN ANALYZE.
fn tasks_read(db: &mut Client, sql: &str) -> f64 {
    fn walk(node: &serde_json::Value) -> f64 {
        let mut read = 0.0;
        if node["Relation Name"] == "tasks" {
            let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
            let per_loop = node["Actual Rows"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
                + node["Rows Removed by Index Recheck"].as_f64().unwrap_or(0.0);
            read += per_loop * loops;
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            read += walk(child);
        }
        read
    }
    let plan: serde_json::Value =
        db.query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), &[]).unwrap().get(0);
    walk(&plan[0]["Plan"])
}

#[test]
fn a_state_filter_on_the_tasks_view_reads_only_tasks_in_that_state() {
    let cluster = Cluster::start("tasks_by_state", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('busy', 's', max_attempts => 5, backoff_base => '1 hour');
         SELECT eventq.create_consumer('keyed', 's', ordering => 'key');
         SELECT eventq.publish_batch('s', array_fill('a.x'::text, ARRAY[600]),
                                     array_fill('{}'::jsonb, ARRAY[600]),
                                     ARRAY(SELECT CASE WHEN g <= 6 THEN 'k' END
                                           FROM generate_series(1, 600) g));
         SELECT eventq.publish('s', 'a.later', deliver_at => now() + interval '1 hour');",
    )
    .unwrap();
    maintain(&mut db);
    // busy: 590 completed, 2 retryable, 1 discarded, 4 running, 3 + 1 scheduled available;
    // keyed: 595 completed (the first of key k among them), the next of k available and 4
    // waiting behind it, 1 scheduled.
    let pulled = pull_ids(&mut db, "busy", 597);
    db.execute("SELECT eventq.ack('busy', $1)", &[&pulled[..590].to_vec()]).unwrap();
    for id in &pulled[590..592] {
        db.execute("SELECT eventq.retry('busy', $1, 'later')", &[id]).unwrap();
    }
    db.execute("SELECT eventq.discard('busy', $1, 'no')", &[&pulled[592]]).unwrap();
    let keyed = pull_ids(&mut db, "keyed", 600);
    assert_eq!(keyed.len(), 595);
    db.execute("SELECT eventq.ack('keyed', $1)", &[&keyed]).unwrap();
    db.batch_execute("ANALYZE eventq_internal.tasks; ANALYZE eventq_internal.consumers").unwrap();
    assert_counts_match_rows(&mut db, "with tasks in every state");

    let expected = [
        ("busy", "available", 4),
        ("busy", "running", 4),
        ("busy", "retryable", 2),
        ("busy", "discarded", 1),
        ("busy", "completed", 590),
        ("keyed", "waiting", 4),
        ("keyed", "available", 2),
        ("keyed", "completed", 595),
    ];
    for (consumer, state, tasks) in expected {
        let sql = format!(
            "SELECT count(*) FROM eventq.tasks WHERE consumer = '{consumer}' AND state = '{state}'"
        );
        let shown: i64 = db.query_one(&sql, &[]).unwrap().get(0);
        assert_eq!(shown, tasks, "{sql}");
        // Completed tasks have no index of their own (an ack would pay for it): they are
        // read with the consumer's other tasks.
        if state == "completed" {
            continue;
        }
        // Scheduled and retryable tasks share an index (3 of them here).
        let bound = (tasks + 3) as f64;
        let read = tasks_read(&mut db, &sql);
        assert!(read <= bound, "{sql} read {read} tasks; {tasks} are {state}");
    }
    // Without a filter on state every task is still there, once.
    assert_eq!(count(&mut db, "SELECT DISTINCT consumer, task_id FROM eventq.tasks"), 1202);
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.tasks"), 1202);
    // The view has one branch per stored state: a state added to the type without its
    // branch would vanish from it.
    let states = common::column(
        &mut db,
        "SELECT string_agg(enumlabel::text, ' ' ORDER BY enumsortorder) FROM pg_enum
         WHERE enumtypid = 'eventq_internal.task_state'::regtype",
    );
    assert_eq!(states, ["available scheduled waiting running retryable completed discarded"]);

    // A role that sees one consumer, its own, learns nothing of the others' tasks through
    // conditions of its own: a function that raises on any task not of its consumer, a cast
    // that fails on another consumer's error text, a division by zero.
    db.batch_execute("CREATE ROLE spy LOGIN; SELECT eventq.grant('consume', 's', 'spy');").unwrap();
    let mut spy = cluster.connect_as("postgres", "spy");
    spy.batch_execute("SELECT eventq.create_consumer('mine', 's')").unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'a.y'); SELECT eventq.publish('s', 'a.y');")
        .unwrap();
    maintain(&mut db);
    spy.batch_execute(
        "SET enable_hashjoin = off;
         SET enable_mergejoin = off;
         CREATE FUNCTION pg_temp.peek(text, bigint, text) RETURNS boolean
         LANGUAGE plpgsql STABLE COST 0.000001
         AS $$ BEGIN
             IF $1 IS DISTINCT FROM 'mine' THEN RAISE EXCEPTION 'saw task % of %: %', $2, $1, $3; END IF;
             RETURN true;
         END $$;",
    )
    .unwrap();
    for (condition, visible) in [
        ("pg_temp.peek(consumer, task_id, last_error)", 2),
        ("state = 'available' AND pg_temp.peek(consumer, task_id, last_error)", 2),
        ("state = 'retryable' AND pg_temp.peek(consumer, task_id, last_error)", 0),
        ("consumer = 'busy' AND pg_temp.peek(consumer, task_id, last_error)", 0),
        ("state = 'retryable' AND last_error::int = 0", 0),
        ("state = 'available' AND task_id / (CASE consumer WHEN 'mine' THEN 1 ELSE 0 END) > 0", 2),
    ] {
        let seen = spy
            .query_one(&format!("SELECT count(*) FROM eventq.tasks WHERE {condition}"), &[])
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| e.as_db_error().map(|d| d.message().to_string()));
        assert_eq!(seen, Ok(visible), "{condition}");
    }
}
