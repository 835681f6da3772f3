//! No function or operator that a role without privileges plants in a schema on a caller's
//! or on the database's search_path is ever called by eventq: not by the API (which works
//! as the extension's owner, usually a superuser), not by the views, not by the background
//! worker (a superuser). The database belongs to the attacker, who sets its search_path to
//! put a schema of decoys before pg_catalog: a decoy with the name and argument types of
//! every function, operator and common aggregate of pg_catalog, each of which records that
//! it ran. Then every part of the API is used, by an application role and by a superuser,
//! with the worker draining, rescuing leases and applying retention; no decoy may have run.

mod common;

use common::{wait_for, Cluster, PRELOAD};
use postgres::Client;
use std::time::Duration;

const PLANT: &str = r#"
CREATE TABLE decoys.calls (caller text, what text);
GRANT USAGE ON SCHEMA decoys TO PUBLIC;
GRANT INSERT, SELECT ON decoys.calls TO PUBLIC;

-- every plain and set-returning function of pg_catalog
DO $plant$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid, p.proname,
               pg_catalog.pg_get_function_arguments(p.oid) AS args,
               pg_catalog.pg_get_function_result(p.oid) AS result
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f'
    LOOP
        BEGIN
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION decoys.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                f.proname, f.args, f.result,
                pg_catalog.format('BEGIN INSERT INTO decoys.calls VALUES (current_user, %L); RETURN %s; END',
                                  f.proname || '(' || f.args || ')',
                                  CASE WHEN f.result LIKE 'SETOF %' OR f.result LIKE 'TABLE(%' THEN ''
                                       ELSE 'NULL' END));
        EXCEPTION WHEN OTHERS THEN
            NULL; -- internal, cstring and the like: nothing SQL could call by name anyway
        END;
    END LOOP;
END
$plant$;

-- every binary and prefix operator
DO $plant$
DECLARE
    o record;
    n integer := 0;
BEGIN
    FOR o IN
        SELECT op.oprname, op.oprleft::regtype AS l, op.oprright::regtype AS r,
               op.oprresult::regtype AS result
        FROM pg_catalog.pg_operator op
        WHERE op.oprnamespace = 'pg_catalog'::regnamespace
    LOOP
        n := n + 1;
        BEGIN
            IF o.l = 0 THEN
                EXECUTE pg_catalog.format(
                    'CREATE FUNCTION decoys.op_%s(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                    n, o.r, o.result,
                    pg_catalog.format('BEGIN INSERT INTO decoys.calls VALUES (current_user, %L); RETURN NULL; END',
                                      'operator ' || o.oprname));
                EXECUTE pg_catalog.format('CREATE OPERATOR decoys.%s (RIGHTARG = %s, FUNCTION = decoys.op_%s)',
                                          o.oprname, o.r, n);
            ELSE
                EXECUTE pg_catalog.format(
                    'CREATE FUNCTION decoys.op_%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                    n, o.l, o.r, o.result,
                    pg_catalog.format('BEGIN INSERT INTO decoys.calls VALUES (current_user, %L); RETURN NULL; END',
                                      'operator ' || o.oprname || ' (' || o.l || ', ' || o.r || ')'));
                EXECUTE pg_catalog.format('CREATE OPERATOR decoys.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = decoys.op_%s)',
                                          o.oprname, o.l, o.r, n);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            NULL; -- pseudo-typed operands
        END;
    END LOOP;
END
$plant$;

-- the aggregates eventq's statements use
CREATE FUNCTION decoys.agg_step(state bigint, value anyelement) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO decoys.calls VALUES (current_user, 'aggregate'); RETURN state; END $$;
CREATE FUNCTION decoys.agg_step(state bigint) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO decoys.calls VALUES (current_user, 'count(*)'); RETURN state; END $$;
CREATE AGGREGATE decoys.count(*) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.count(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.max(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.min(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.sum(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.bool_and(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.bool_or(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE decoys.array_agg(anyelement) (SFUNC = decoys.agg_step, STYPE = bigint, INITCOND = '0');
"#;

fn calls(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT caller OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) what FROM decoys.calls",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

fn rows(db: &mut Client, sql: &str) -> usize {
    db.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).len()
}

#[test]
fn decoys_on_every_search_path_are_never_called() {
    let cluster = Cluster::start_without_extension(
        "search-path",
        &[PRELOAD, "eventq.maintenance_interval = '100ms'", "eventq.cleanup_interval = '200ms'"],
    );
    let mut su = cluster.connect();
    su.batch_execute("CREATE ROLE mallory LOGIN; CREATE ROLE app LOGIN").unwrap();
    su.batch_execute("CREATE DATABASE shop OWNER mallory").unwrap();
    let mut mallory = cluster.connect_as("shop", "mallory");
    mallory.batch_execute("CREATE SCHEMA decoys").unwrap();
    mallory.batch_execute(PLANT).unwrap();
    let planted: i64 = mallory
        .query_one("SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc WHERE pronamespace = 'decoys'::regnamespace", &[])
        .unwrap()
        .get(0);
    assert!(planted > 2000, "only {planted} decoys");
    // The database's owner puts them first for everyone, the worker included.
    mallory
        .batch_execute("ALTER DATABASE shop SET search_path = decoys, pg_catalog, public")
        .unwrap();

    let mut admin = cluster.connect_to("shop");
    admin.batch_execute("CREATE EXTENSION eventq").unwrap();
    // The decoys work: a query of our own that does not qualify its names calls them.
    admin.batch_execute("SELECT now(), 1 = 1").unwrap();
    assert_eq!(calls(&mut admin).len(), 2, "{:?}", calls(&mut admin));
    mallory.batch_execute("TRUNCATE decoys.calls").unwrap();
    // The worker has come up in this database (and found nothing to do yet).
    wait_for("the worker", Duration::from_secs(20), || {
        match rows(
            &mut admin,
            "SELECT * FROM eventq.workers WHERE database OPERATOR(pg_catalog.=) 'shop'",
        ) {
            1 => Ok(()),
            n => Err(format!("{n} workers")),
        }
    });

    let admin_script = [
        "SELECT eventq.create_stream('orders')",
        "SELECT eventq.create_stream('short', retention => '1 second')",
        "SELECT eventq.grant('publish', 'orders', 'app')",
        "SELECT eventq.grant('publish', 'short', 'app', '{a.>}')",
        "SELECT eventq.grant('consume', 'orders', 'app', '{order.>}')",
        "SELECT eventq.grant('manage', 'short', 'app')",
        "SELECT eventq.alter_stream('orders', '30 days')",
        r#"SELECT eventq.apply('{"streams": {"applied": {"retention": "2 days"}},
                              "grants": [{"privilege": "consume", "stream": "applied", "role": "app"}]}', dry_run => true)"#,
        r#"SELECT eventq.apply('{"streams": {"applied": {"retention": "2 days"}},
                              "grants": [{"privilege": "consume", "stream": "applied", "role": "app"}]}')"#,
    ];
    for sql in admin_script {
        admin.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut app = cluster.connect_as("shop", "app");
    for sql in [
        "SELECT eventq.create_consumer('work', 'orders', '{order.*}', max_attempts => 2, backoff_base => '10 milliseconds')",
        "SELECT eventq.create_consumer('keyed', 'orders', '{order.>}', ordering => 'key')",
        "SELECT eventq.create_consumer('log', 'orders', '{order.>}', mode => 'log', start_at => '-infinity')",
        "SELECT eventq.create_consumer('short_work', 'short', lease => '100 milliseconds')",
        "SELECT eventq.publish('orders', 'order.created', '{\"n\": 1}', key => 'k1')",
        "SELECT eventq.publish('orders', 'order.paid', '{\"n\": 2}', key => 'k1', headers => '{\"h\": \"v\"}')",
        "SELECT eventq.publish('orders', 'order.later', deliver_at => '2000-01-01')",
        "SELECT eventq.publish('orders', 'order.retried', max_attempts => 2, backoff => 'fixed', backoff_base => '1 second')",
        r#"SELECT eventq.apply('{"consumers": {"applied_work": {"stream": "applied", "max_attempts": 4, "paused": true}}}')"#,
        r#"SELECT eventq.apply('{"consumers": {"applied_work": {"stream": "applied", "paused": false}}}', dry_run => true)"#,
        "SELECT eventq.publish('orders', 'order.once', dedup_key => 'd1')",
        "SELECT eventq.publish('orders', 'order.once', dedup_key => 'd1')",
        "SELECT eventq.publish_batch('orders', '{order.a,order.b}', ARRAY['{}', '{}']::jsonb[], ARRAY['k2', NULL])",
        "SELECT eventq.publish('short', 'a.b')",
        "SELECT eventq.publish_batch('short', '{a.c,a.d}', ARRAY['{}', '{}']::jsonb[])",
    ] {
        app.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let pulled = app.query("SELECT task_id, attempt FROM eventq.pull('work', 3)", &[]).unwrap();
    assert_eq!(pulled.len(), 3);
    let (t1, t2, t3): (i64, i64, i64) = (pulled[0].get(0), pulled[1].get(0), pulled[2].get(0));
    let a1: i32 = pulled[0].get(1);
    app.execute("SELECT eventq.ack('work', ARRAY[$1::bigint], ARRAY[$2::int])", &[&t1, &a1])
        .unwrap();
    app.execute("SELECT eventq.extend_lease('work', $1, '1 minute')", &[&t2]).unwrap();
    app.execute("SELECT eventq.retry('work', $1, 'failed', '1 millisecond')", &[&t2]).unwrap();
    app.execute("SELECT eventq.discard('work', $1, 'no')", &[&t3]).unwrap();
    app.batch_execute("SELECT eventq.publish('orders', 'order.ignored')").unwrap();
    let t4: i64 = app.query_one("SELECT task_id FROM eventq.pull('work', 1)", &[]).unwrap().get(0);
    app.execute("SELECT eventq.ignore('work', $1, 'nothing to do')", &[&t4]).unwrap();
    for sql in [
        "SELECT eventq.retry_now('work')",
        "SELECT eventq.cancel('work', ARRAY[1::bigint, 2, 3], 'decoy check')",
        "SELECT eventq.redrive('work')",
        "SELECT * FROM eventq.pull('work', 10)",
        "SELECT * FROM eventq.pull('keyed', 10)",
        "SELECT eventq.pause_consumer('keyed')",
        "SELECT eventq.resume_consumer('keyed')",
        "SELECT eventq.alter_consumer('work', max_attempts => 3, start_at => '-infinity')",
        "SELECT * FROM eventq.fetch('log', 10)",
        "SELECT eventq.commit('log', 2)",
        "SELECT eventq.seek('log', 0::bigint)",
        "SELECT eventq.seek('log', '2000-01-01'::timestamptz)",
        "SELECT * FROM eventq.pull('short_work', 10)",
        "SELECT * FROM eventq.streams",
        "SELECT * FROM eventq.consumers",
        "SELECT * FROM eventq.events",
        "SELECT * FROM eventq.newest_events('orders', 5)",
        "SELECT * FROM eventq.tasks",
        "SELECT * FROM eventq.attempts",
        "SELECT * FROM eventq.workers",
        "SELECT * FROM eventq.grants",
    ] {
        app.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // the worker rescues the short lease and expires the short stream's events
    wait_for("retention of the short stream", Duration::from_secs(20), || {
        match rows(
            &mut admin,
            "SELECT * FROM eventq.events WHERE stream OPERATOR(pg_catalog.=) 'short'",
        ) {
            0 => Ok(()),
            n => Err(format!("{n} events left")),
        }
    });
    for sql in [
        "SELECT eventq.run_maintenance()",
        "SELECT * FROM eventq.workers",
        "SELECT eventq.revoke('manage', 'short', 'app')",
        "SELECT eventq.drop_consumer('short_work')",
        "SELECT eventq.drop_stream('orders', force => true)",
    ] {
        admin.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let seen = calls(&mut mallory);
    assert!(seen.is_empty(), "decoys were called: {seen:?}");
    assert!(!cluster.log().contains("decoys"), "{}", cluster.log());
}
