//! Upgrades: a database created at version 0.1.0 (its frozen SQL is kept in
//! sql/released/), holding streams, consumers, cursors, events, unfinished tasks, ordered
//! keys and staged events, keeps working after `ALTER EXTENSION eventq UPDATE`; until then,
//! the new library refuses every call with a clear error and its worker waits, never
//! crashing. An updated database has exactly the schema of a new one.

mod common;

use common::{column, count, wait_for, Cluster, PRELOAD};
use postgres::Client;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const OLDEST: &str = "0.1.0";

/// Puts the frozen SQL of every released version next to the installed extension.
fn install_released_sql() {
    let out = Command::new(std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into()))
        .arg("--sharedir")
        .output()
        .unwrap();
    let dir = Path::new(String::from_utf8(out.stdout).unwrap().trim()).join("extension");
    let released = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/released");
    for entry in std::fs::read_dir(released).unwrap() {
        let path = entry.unwrap().path();
        let target = dir.join(path.file_name().unwrap());
        let tmp = dir.join(format!("{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::copy(&path, &tmp).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
    }
}

/// What 0.1.0 would have stored: rows written straight into its tables.
fn populate_0_1_0(db: &mut Client) {
    db.batch_execute(
        r#"
        INSERT INTO eventq_internal.streams (name, retention) VALUES ('orders', '7 days');
        INSERT INTO eventq_internal.consumers
            (name, stream_id, mode, subjects, exclude, include_re, exclude_re, ordering,
             max_attempts, backoff, backoff_base, backoff_max, lease, cursor_seq, expired)
        VALUES
            ('mailer', 1, 'task', '{order.*}', '{}', '^(?:order\.[^.]+)$', NULL, 'none',
             5, 'exponential', '1 second', '1 hour', '30 seconds', 0, 0),
            ('ledger', 1, 'task', '{>}', '{}', NULL, NULL, 'key',
             5, 'fixed', '1 second', '1 hour', '30 seconds', 0, 2),
            ('audit', 1, 'log', '{>}', '{}', NULL, NULL, 'none',
             10, 'exponential', '1 second', '1 hour', '30 seconds', 2, 0);
        INSERT INTO eventq_internal.events (stream_id, seq, id, subject, key, payload, published_at)
        SELECT 1, n, gen_random_uuid(), 'order.e' || n, 'k', jsonb_build_object('n', n), now()
        FROM generate_series(1, 4) n;
        SELECT setval('eventq_internal.event_seq', 4);
        -- mailer: 1 completed, 2 running (lease run out), 3 and 4 available
        INSERT INTO eventq_internal.tasks (consumer_id, seq, state, attempt, run_at, lease_until, started_at, finished_at)
        VALUES (1, 1, 'completed', 1, now(), NULL, now(), now()),
               (1, 2, 'running', 1, now(), now() - interval '1 minute', now() - interval '2 minutes', NULL),
               (1, 3, 'available', 0, now(), NULL, NULL, NULL),
               (1, 4, 'available', 0, now(), NULL, NULL, NULL);
        -- ledger: key k, 1 in flight, the rest waiting
        INSERT INTO eventq_internal.tasks (consumer_id, seq, state, attempt, run_at, order_key)
        VALUES (2, 1, 'available', 0, now(), 'k'), (2, 2, 'waiting', 0, now(), 'k'),
               (2, 3, 'waiting', 0, now(), 'k'), (2, 4, 'waiting', 0, now(), 'k');
        INSERT INTO eventq_internal.key_heads (consumer_id, order_key, head_seq) VALUES (2, 'k', 1);
        INSERT INTO eventq_internal.dedup (stream_id, dedup_key, event_id)
        SELECT 1, 'once', id FROM eventq_internal.events WHERE seq = 1;
        -- published, not drained yet
        INSERT INTO eventq_internal.staged (slot, id, stream_id, subject, key, payload)
        VALUES (0, gen_random_uuid(), 1, 'order.staged', 'k', '{}');
        -- an application role, given rights as 0.1.0's README said
        CREATE ROLE legacy_app LOGIN;
        GRANT USAGE ON SCHEMA eventq, eventq_internal TO legacy_app;
        GRANT SELECT ON ALL TABLES IN SCHEMA eventq TO legacy_app;
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA eventq_internal TO legacy_app;
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA eventq_internal TO legacy_app;
        "#,
    )
    .unwrap();
}

#[test]
fn a_database_created_at_0_1_0_works_after_alter_extension_update() {
    install_released_sql();
    let cluster = Cluster::start_without_extension(
        "upgrade",
        &[PRELOAD, "eventq.maintenance_interval = '100ms'"],
    );
    let mut db = cluster.connect();
    db.batch_execute(&format!("CREATE EXTENSION eventq VERSION '{OLDEST}'")).unwrap();
    populate_0_1_0(&mut db);

    // Before the update: clear errors, with the arguments of 0.1.0 and of today alike.
    for call in [
        "SELECT eventq.publish('orders', 'order.x')",
        "SELECT * FROM eventq.pull('mailer')",
        "SELECT eventq.ack('mailer', ARRAY[3::bigint])",
        "SELECT eventq.retry('mailer', 3, 'x', '1 second')",
        "SELECT eventq.discard('mailer', 3, 'x')",
        "SELECT eventq.extend_lease('mailer', 3, '1 minute')",
        "SELECT eventq.run_maintenance()",
    ] {
        let error = db.batch_execute(call).unwrap_err();
        let db_error = error.as_db_error().unwrap_or_else(|| panic!("{call}: {error}"));
        assert_eq!(db_error.code().code(), "55000", "{call}: {error}");
        assert!(db_error.hint().unwrap_or("").contains("ALTER EXTENSION eventq UPDATE"), "{call}");
    }
    // the worker waits and says why, without crashing
    wait_for("the worker to ask for the update", Duration::from_secs(20), || {
        if cluster.log().contains("run ALTER EXTENSION eventq UPDATE") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(
        count(&mut db, "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'eventq worker'"),
        1
    );

    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut db = {
        let warnings = warnings.clone();
        cluster.connect_with_notices(move |notice| {
            warnings.lock().unwrap().push(notice.message().to_string())
        })
    };
    // Under REPEATABLE READ the counts would be seeded from a snapshot older than the
    // update's locks: refused, and nothing changed.
    assert_eq!(
        common::fails_with(
            &mut db,
            "BEGIN ISOLATION LEVEL REPEATABLE READ; ALTER EXTENSION eventq UPDATE",
        ),
        "25001"
    );
    db.batch_execute("ROLLBACK").unwrap();
    db.batch_execute("ALTER EXTENSION eventq UPDATE").unwrap();
    // the counts the views show start from the rows 0.1.0 left
    common::assert_counts_match_rows(&mut db, "after the update");
    // 0.1.0's applications got their rights on the tables; now they hold grants instead,
    // and the table rights are gone (and named)
    assert!(
        warnings.lock().unwrap().iter().any(|w| w.contains("revoked the privileges of legacy_app")),
        "{:?}",
        warnings.lock().unwrap()
    );
    assert_eq!(
        column(&mut db, "SELECT privilege FROM eventq_internal.grants WHERE grantee = 'legacy_app'::regrole ORDER BY 1"),
        ["manage", "publish"]
    );
    let version: String = db
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'eventq'", &[])
        .unwrap()
        .get(0);
    assert_ne!(version, OLDEST);

    // The staged event is drained after the old ones; new events come after it.
    db.batch_execute("SELECT eventq.publish('orders', 'order.new', key => 'k')").unwrap();
    wait_for("the worker to drain", Duration::from_secs(10), || {
        match count(&mut db, "SELECT 1 FROM eventq.events") {
            6 => Ok(()),
            n => Err(format!("{n} events")),
        }
    });
    assert_eq!(
        column(&mut db, "SELECT subject || ':' || seq FROM eventq.events ORDER BY seq"),
        ["order.e1:1", "order.e2:2", "order.e3:3", "order.e4:4", "order.staged:5", "order.new:6"]
    );
    // mailer: the expired lease comes back as a lost attempt, then the rest in order
    let pulled = column(&mut db, "SELECT subject || ':' || attempt FROM eventq.pull('mailer', 10)");
    assert_eq!(pulled, ["order.e2:2", "order.e3:1", "order.e4:1", "order.staged:1", "order.new:1"]);
    assert_eq!(
        column(&mut db, "SELECT outcome FROM eventq.attempts WHERE consumer = 'mailer'"),
        ["lost", "completed"]
    );
    // ledger: one at a time, in order, the key handed on by acks
    let mut ledger = Vec::new();
    for _ in 0..6 {
        let rows = db.query("SELECT task_id, subject FROM eventq.pull('ledger', 10)", &[]).unwrap();
        assert_eq!(rows.len(), 1);
        ledger.push(rows[0].get::<_, String>(1));
        db.execute("SELECT eventq.ack('ledger', ARRAY[$1::bigint])", &[&rows[0].get::<_, i64>(0)])
            .unwrap();
    }
    assert_eq!(
        ledger,
        ["order.e1", "order.e2", "order.e3", "order.e4", "order.staged", "order.new"]
    );
    // the expired count carried over; the cursor too
    assert_eq!(
        column(&mut db, "SELECT expired::text FROM eventq.consumers WHERE name = 'ledger'"),
        ["2"]
    );
    assert_eq!(
        column(&mut db, "SELECT subject FROM eventq.fetch('audit', 10)"),
        ["order.e3", "order.e4", "order.staged", "order.new"]
    );
    // the dedup claim still holds
    let first: String =
        db.query_one("SELECT event_id::text FROM eventq.events WHERE seq = 1", &[]).unwrap().get(0);
    let again: String = db
        .query_one("SELECT eventq.publish('orders', 'order.x', dedup_key => 'once')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, first);
    // the application role goes on publishing and working the consumers it used
    db.batch_execute("SET ROLE legacy_app").unwrap();
    db.batch_execute("SELECT eventq.publish('orders', 'order.by-app')").unwrap();
    db.batch_execute("SELECT eventq.run_maintenance()").unwrap_err();
    for sql in [
        "INSERT INTO eventq_internal.staged (slot, xid, id, stream_id, subject, payload, origin) VALUES (0, '1', gen_random_uuid(), 1, 'forged', '{}', 0)",
        "SELECT * FROM eventq_internal.events",
        "UPDATE eventq_internal.consumers SET subjects = '{>}'",
    ] {
        assert_eq!(common::fails_with(&mut db, sql), "42501", "{sql}");
    }
    assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('mailer', 10)"), ["order.by-app"]);
    db.batch_execute("RESET ROLE").unwrap();
    assert!(!cluster.log().contains("terminated by signal"), "{}", cluster.log());
}

/// The catalog of eventq's schemas, as comparable text: tables' columns (in any order),
/// constraints, indexes, functions, views and their options, triggers, replica identities, privileges,
/// dumped tables, extension membership.
fn describe(db: &mut Client) -> Vec<String> {
    column(
        db,
        "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                || CASE WHEN a.attidentity <> '' THEN ' identity' ELSE '' END
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE n.nspname IN ('eventq', 'eventq_internal')
         UNION ALL
         SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
         FROM pg_constraint WHERE connamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
         UNION ALL
         SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname IN ('eventq', 'eventq_internal')
         UNION ALL
         SELECT 'function ' || p.oid::regprocedure || ' (' || pg_get_function_arguments(p.oid) || ') '
                || pg_get_function_result(p.oid) || ' '
                || coalesce(nullif(p.prosrc, ''), '') || ' ' || p.prosecdef || ' ' || coalesce(p.proconfig::text, '')
                || ' ' || p.provolatile::text || p.proparallel::text || CASE WHEN p.proisstrict THEN ' strict' ELSE '' END
         FROM pg_proc p WHERE p.pronamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
         UNION ALL
         SELECT 'view ' || schemaname || '.' || viewname || ' ' || definition
         FROM pg_views WHERE schemaname IN ('eventq', 'eventq_internal')
         UNION ALL
         SELECT 'trigger ' || pg_get_triggerdef(t.oid)
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
           AND NOT t.tgisinternal
         UNION ALL
         SELECT 'identity ' || c.oid::regclass || ' ' || c.relreplident::text
         FROM pg_class c WHERE c.relnamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
           AND c.relkind IN ('r', 'p')
         UNION ALL
         SELECT 'privileges ' || c.oid::regclass || ' ' || coalesce(c.relacl::text, 'default')
         FROM pg_class c WHERE c.relnamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
         UNION ALL
         -- storage options: security_barrier of the views, row security of tables
         SELECT 'options ' || c.oid::regclass || ' ' || coalesce(c.reloptions::text, '')
                || ' ' || c.relrowsecurity || ' ' || c.relforcerowsecurity
         FROM pg_class c WHERE c.relnamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
         UNION ALL
         SELECT 'privileges schema ' || nspname || ' ' || coalesce(nspacl::text, 'default')
         FROM pg_namespace WHERE nspname IN ('eventq', 'eventq_internal')
         UNION ALL
         SELECT 'privileges ' || p.oid::regprocedure || ' ' || coalesce(p.proacl::text, 'default')
         FROM pg_proc p WHERE p.pronamespace IN ('eventq'::regnamespace, 'eventq_internal'::regnamespace)
         UNION ALL
         SELECT 'dumped ' || t.relation::regclass || ' ' || coalesce(t.condition, '')
         FROM pg_extension x,
              unnest(x.extconfig, x.extcondition) AS t(relation, condition)
         WHERE x.extname = 'eventq'
         UNION ALL
         SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
         FROM pg_depend WHERE refclassid = 'pg_extension'::regclass
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'eventq') AND deptype = 'e'
           -- the #[pg_test] functions of a test build (`make test` installs one)
           AND pg_describe_object(classid, objid, objsubid) NOT LIKE 'function tests.%'
           AND pg_describe_object(classid, objid, objsubid) <> 'schema tests'
         ORDER BY 1",
    )
}

#[test]
fn an_updated_database_has_the_schema_of_a_new_one() {
    install_released_sql();
    let cluster = Cluster::start_without_extension("upgrade-schema", &[]);
    let mut admin = cluster.connect();
    admin.batch_execute("CREATE DATABASE fresh").unwrap();
    admin.batch_execute("CREATE DATABASE updated").unwrap();
    let mut fresh = cluster.connect_to("fresh");
    fresh.batch_execute("CREATE EXTENSION eventq").unwrap();
    let mut updated = cluster.connect_to("updated");
    updated.batch_execute(&format!("CREATE EXTENSION eventq VERSION '{OLDEST}'")).unwrap();
    updated.batch_execute("ALTER EXTENSION eventq UPDATE").unwrap();
    let (a, b) = (describe(&mut fresh), describe(&mut updated));
    let only_fresh: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_updated: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    assert!(
        only_fresh.is_empty() && only_updated.is_empty(),
        "a new database has {only_fresh:#?}\nan updated one has {only_updated:#?}"
    );
}
