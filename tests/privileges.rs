//! Privileges, logged in as each kind of role: an administrator (member of eventq_admin), a
//! publisher, a worker (member of the role that owns its consumer), a manager, a tenant
//! limited to one seller's subjects, and a role with no grant at all. What each may do
//! works; everything else fails with 42501 naming the stream or consumer, and the views
//! show each role only its own part.

mod common;

use common::{column, count, sqlstate, Cluster};
use postgres::Client;

/// Runs `sql`, which must fail with 42501; returns the message.
fn denied(db: &mut Client, sql: &str) -> String {
    match db.batch_execute(sql) {
        Ok(()) => panic!("expected {sql} to be refused"),
        Err(e) => {
            assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
            e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default()
        }
    }
}

fn ok(db: &mut Client, sql: &str) {
    db.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Streams `orders` and `payments`; roles and grants as the README's recipes make them.
fn setup(cluster: &Cluster) {
    let mut su = cluster.connect();
    ok(
        &mut su,
        "CREATE ROLE ops LOGIN IN ROLE eventq_admin;
         CREATE ROLE shop LOGIN;
         CREATE ROLE billing NOLOGIN;
         CREATE ROLE billing_worker LOGIN IN ROLE billing;
         CREATE ROLE other_worker LOGIN;
         CREATE ROLE auditor LOGIN;
         CREATE ROLE tenant42 LOGIN;
         CREATE ROLE nobody LOGIN;",
    );
    let mut ops = cluster.connect_as("postgres", "ops");
    ok(
        &mut ops,
        "SELECT eventq.create_stream('orders');
         SELECT eventq.create_stream('payments');
         SELECT eventq.grant('publish', 'orders', 'shop');
         SELECT eventq.grant('consume', 'orders', 'billing');
         SELECT eventq.grant('consume', 'orders', 'other_worker');
         SELECT eventq.grant('manage', 'orders', 'auditor');
         SELECT eventq.grant('consume', 'orders', 'tenant42', '{seller.42.>}');
         SELECT eventq.grant('publish', 'payments', 'tenant42', '{seller.42.>}');",
    );
}

fn publish_some(cluster: &Cluster) {
    let mut shop = cluster.connect_as("postgres", "shop");
    ok(
        &mut shop,
        "SELECT eventq.publish('orders', 'seller.42.order.created', '{\"n\": 1}');
         SELECT eventq.publish('orders', 'seller.43.order.created', '{\"n\": 2}');
         SELECT eventq.publish_batch('orders', '{seller.42.order.paid,seller.7.order.paid}', ARRAY['{}', '{}']::jsonb[]);",
    );
}

#[test]
fn an_administrator_runs_streams_grants_and_maintenance() {
    let cluster = Cluster::start("priv-admin", &[]);
    setup(&cluster);
    let mut ops = cluster.connect_as("postgres", "ops");
    ok(
        &mut ops,
        "SELECT eventq.alter_stream('orders', '30 days');
         SELECT eventq.create_consumer('ops_view', 'orders', mode => 'log');
         SELECT eventq.create_stream('scratch');
         SELECT eventq.drop_stream('scratch');
         SELECT eventq.revoke('consume', 'orders', 'other_worker');",
    );
    publish_some(&cluster);
    ok(&mut ops, "SELECT eventq.run_maintenance()");
    assert_eq!(count(&mut ops, "SELECT * FROM eventq.events"), 4);
    assert_eq!(count(&mut ops, "SELECT * FROM eventq.streams"), 2);
    assert_eq!(count(&mut ops, "SELECT * FROM eventq.fetch('ops_view')"), 4);
    // administrators still have no business in storage itself
    assert!(denied(&mut ops, "SELECT * FROM eventq_internal.grants").contains("eventq_internal"));
    // grants name real roles and privileges
    let mut su = cluster.connect();
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('publish', 'orders', 'no_such_role')"),
        "42704"
    );
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('read', 'orders', 'shop')"),
        "22023"
    );
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('publish', 'nowhere', 'shop')"),
        "42704"
    );
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('manage', 'orders', 'shop', '{a.>}')"),
        "22023"
    );
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('consume', 'orders', 'shop', '{a..b}')"),
        "22023"
    );
    assert_eq!(
        common::fails_with(&mut su, "SELECT eventq.grant('consume', 'orders', 'shop', '{}')"),
        "22023"
    );
}

#[test]
fn a_publisher_publishes_and_does_nothing_else() {
    let cluster = Cluster::start("priv-publisher", &[]);
    setup(&cluster);
    publish_some(&cluster);
    let mut shop = cluster.connect_as("postgres", "shop");
    assert!(
        denied(&mut shop, "SELECT eventq.publish('payments', 'x')").contains("stream \"payments\"")
    );
    assert!(denied(
        &mut shop,
        "SELECT eventq.publish_batch('payments', '{x}', ARRAY['{}']::jsonb[])"
    )
    .contains("stream \"payments\""));
    assert!(denied(&mut shop, "SELECT eventq.create_consumer('mine', 'orders')")
        .contains("consumer \"mine\""));
    assert!(denied(&mut shop, "SELECT eventq.create_stream('mine')").contains("create streams"));
    denied(&mut shop, "SELECT eventq.alter_stream('orders', '1 day')");
    denied(&mut shop, "SELECT eventq.drop_stream('orders', force => true)");
    denied(&mut shop, "SELECT eventq.grant('publish', 'payments', 'shop')");
    denied(&mut shop, "SELECT eventq.revoke('publish', 'orders', 'shop')");
    denied(&mut shop, "SELECT eventq.run_maintenance()");
    // publishing is not reading: the stream is listed, its events are not
    assert_eq!(column(&mut shop, "SELECT name FROM eventq.streams"), ["orders"]);
    assert_eq!(count(&mut shop, "SELECT * FROM eventq.events"), 0);
    assert_eq!(count(&mut shop, "SELECT * FROM eventq.consumers"), 0);
    // nor can it reach storage to forge or read rows
    for sql in [
        "SELECT * FROM eventq_internal.events",
        "INSERT INTO eventq_internal.staged (slot, xid, id, stream_id, subject, payload, origin) VALUES (0, '1', gen_random_uuid(), 1, 'x', '{}', 0)",
        "UPDATE eventq_internal.tasks SET state = 'completed'",
        "SELECT eventq_internal.valid_patterns('{x}')",
    ] {
        denied(&mut shop, sql);
    }
}

#[test]
fn workers_work_their_group_s_consumers_only() {
    let cluster = Cluster::start("priv-worker", &[]);
    setup(&cluster);
    let mut worker = cluster.connect_as("postgres", "billing_worker");
    // created as the group role, so that every member can work it
    ok(&mut worker, "SET ROLE billing; SELECT eventq.create_consumer('invoicing', 'orders', '{*.*.order.*}'); RESET ROLE");
    let mut other = cluster.connect_as("postgres", "other_worker");
    ok(&mut other, "SELECT eventq.create_consumer('others', 'orders', mode => 'log')");
    publish_some(&cluster);

    let tasks = column(&mut worker, "SELECT task_id::text FROM eventq.pull('invoicing', 10)");
    assert_eq!(tasks.len(), 4);
    ok(
        &mut worker,
        &format!("SELECT eventq.ack('invoicing', ARRAY[{}]::bigint[])", tasks.join(",")),
    );
    ok(
        &mut worker,
        "SELECT eventq.pause_consumer('invoicing'); SELECT eventq.resume_consumer('invoicing')",
    );
    ok(&mut worker, "SELECT eventq.alter_consumer('invoicing', max_attempts => 3)");
    assert_eq!(
        column(&mut worker, "SELECT name || ':' || owner FROM eventq.consumers"),
        ["invoicing:billing"]
    );
    assert_eq!(count(&mut worker, "SELECT * FROM eventq.tasks"), 4);
    assert_eq!(count(&mut worker, "SELECT * FROM eventq.events"), 4);
    // another role's consumer, though of a stream it may consume
    for sql in [
        "SELECT * FROM eventq.fetch('others')",
        "SELECT eventq.commit('others', 1)",
        "SELECT eventq.seek('others', 0::bigint)",
        "SELECT eventq.drop_consumer('others')",
        "SELECT eventq.alter_consumer('others', subjects => '{x}')",
    ] {
        let message = denied(&mut worker, sql);
        assert!(message.contains("consumer \"others\""), "{message}");
        assert!(message.contains("other_worker"), "{message}");
    }
    for sql in [
        "SELECT * FROM eventq.pull('invoicing')",
        "SELECT eventq.ack('invoicing', ARRAY[1::bigint])",
        "SELECT eventq.retry('invoicing', 1)",
        "SELECT eventq.discard('invoicing', 1)",
        "SELECT eventq.ignore('invoicing', 1)",
        "SELECT eventq.extend_lease('invoicing', 1, '1 minute')",
        "SELECT eventq.redrive('invoicing')",
        "SELECT eventq.retry_now('invoicing')",
        "SELECT eventq.cancel('invoicing', ARRAY[1::bigint])",
        "SELECT eventq.pause_consumer('invoicing')",
    ] {
        assert!(denied(&mut other, sql).contains("consumer \"invoicing\""), "{sql}");
    }
    assert_eq!(column(&mut other, "SELECT name FROM eventq.consumers"), ["others"]);
    assert_eq!(count(&mut other, "SELECT * FROM eventq.tasks"), 0);
    // consuming is not publishing, and not on other streams
    denied(&mut worker, "SELECT eventq.publish('orders', 'x')");
    denied(&mut worker, "SELECT eventq.create_consumer('elsewhere', 'payments')");
    // membership ends: so does the access, in the same session
    let mut su = cluster.connect();
    ok(&mut su, "REVOKE billing FROM billing_worker");
    denied(&mut worker, "SELECT * FROM eventq.pull('invoicing')");
    assert_eq!(count(&mut worker, "SELECT * FROM eventq.consumers"), 0);
}

#[test]
fn a_manager_works_every_consumer_of_its_stream() {
    let cluster = Cluster::start("priv-manager", &[]);
    setup(&cluster);
    let mut worker = cluster.connect_as("postgres", "billing_worker");
    ok(
        &mut worker,
        "SET ROLE billing; SELECT eventq.create_consumer('invoicing', 'orders'); RESET ROLE",
    );
    publish_some(&cluster);
    let mut auditor = cluster.connect_as("postgres", "auditor");
    assert_eq!(count(&mut auditor, "SELECT * FROM eventq.pull('invoicing', 10)"), 4);
    ok(&mut auditor, "SELECT eventq.redrive('invoicing'); SELECT eventq.alter_consumer('invoicing', subjects => '{>}')");
    ok(
        &mut auditor,
        "SELECT eventq.retry_now('invoicing'); SELECT eventq.cancel('invoicing', ARRAY[1::bigint])",
    );
    ok(
        &mut auditor,
        "SELECT eventq.create_consumer('audit', 'orders', mode => 'log', start_at => '-infinity')",
    );
    assert_eq!(count(&mut auditor, "SELECT * FROM eventq.fetch('audit')"), 4);
    assert_eq!(count(&mut auditor, "SELECT * FROM eventq.events"), 4);
    assert_eq!(count(&mut auditor, "SELECT * FROM eventq.newest_events('orders')"), 4);
    assert_eq!(
        column(&mut auditor, "SELECT name FROM eventq.consumers ORDER BY 1"),
        ["audit", "invoicing"]
    );
    ok(&mut auditor, "SELECT eventq.drop_consumer('invoicing')");
    denied(&mut auditor, "SELECT eventq.publish('orders', 'x')");
    denied(&mut auditor, "SELECT eventq.grant('consume', 'orders', 'nobody')");
    denied(&mut auditor, "SELECT eventq.drop_stream('orders', force => true)");
    denied(&mut auditor, "SELECT eventq.create_consumer('p', 'payments')");
}

#[test]
fn a_tenant_sees_and_subscribes_to_its_own_subjects_only() {
    let cluster = Cluster::start("priv-tenant", &[]);
    setup(&cluster);
    publish_some(&cluster);
    let mut tenant = cluster.connect_as("postgres", "tenant42");
    ok(&mut tenant, "SELECT eventq.create_consumer('mine', 'orders', '{seller.42.order.*}', start_at => '-infinity')");
    ok(&mut tenant, "SELECT eventq.create_consumer('mine_log', 'orders', '{seller.42.>}', mode => 'log', start_at => '-infinity')");
    for (sql, pattern) in [
        ("SELECT eventq.create_consumer('all', 'orders')", ">"),
        ("SELECT eventq.create_consumer('sellers', 'orders', '{seller.*.order.*}')", "seller.*.order.*"),
        ("SELECT eventq.create_consumer('bare', 'orders', '{seller.42}')", "seller.42"),
        ("SELECT eventq.create_consumer('two', 'orders', '{seller.42.>,seller.43.>}')", "seller.43.>"),
        // an exclude list does not earn a wider pattern its way in
        ("SELECT eventq.create_consumer('sneaky', 'orders', '{seller.>}', exclude => '{seller.43.>}')", "seller.>"),
        ("SELECT eventq.alter_consumer('mine', subjects => '{seller.>}')", "seller.>"),
    ] {
        let message = denied(&mut tenant, sql);
        assert!(message.contains(&format!("\"{pattern}\"")), "{sql}: {message}");
        assert!(message.contains("seller.42.>"), "{sql}: {message}");
    }
    assert_eq!(
        column(&mut tenant, "SELECT subject FROM eventq.pull('mine', 10) ORDER BY seq"),
        ["seller.42.order.created", "seller.42.order.paid"]
    );
    assert_eq!(
        column(&mut tenant, "SELECT subject FROM eventq.fetch('mine_log') ORDER BY seq"),
        ["seller.42.order.created", "seller.42.order.paid"]
    );
    // the events view shows its subjects only
    assert_eq!(
        column(&mut tenant, "SELECT subject FROM eventq.events ORDER BY seq"),
        ["seller.42.order.created", "seller.42.order.paid"]
    );
    // and so does reading the stream from its end
    assert_eq!(
        column(&mut tenant, "SELECT subject FROM eventq.newest_events('orders')"),
        ["seller.42.order.paid", "seller.42.order.created"]
    );
    assert_eq!(
        column(&mut tenant, "SELECT subject FROM eventq.newest_events('orders', 1)"),
        ["seller.42.order.paid"]
    );
    assert!(denied(&mut tenant, "SELECT * FROM eventq.newest_events('payments')")
        .contains("\"payments\""));
    assert_eq!(
        column(&mut tenant, "SELECT name FROM eventq.consumers ORDER BY 1"),
        ["mine", "mine_log"]
    );
    // a publish grant with subjects limits what it may publish
    ok(&mut tenant, "SELECT eventq.publish('payments', 'seller.42.refund')");
    let message = denied(&mut tenant, "SELECT eventq.publish('payments', 'seller.43.refund')");
    assert!(message.contains("seller.43.refund") && message.contains("payments"), "{message}");
    denied(&mut tenant, "SELECT eventq.publish_batch('payments', '{seller.42.a,seller.43.b}', ARRAY['{}','{}']::jsonb[])");
    assert_eq!(count(&mut tenant, "SELECT * FROM eventq.events WHERE stream = 'payments'"), 0);

    // a narrower grant applies to existing consumers too, and from the next transaction on
    let mut su = cluster.connect();
    ok(
        &mut su,
        "SELECT eventq.grant('consume', 'orders', 'tenant42', '{seller.42.order.created}')",
    );
    assert!(denied(&mut tenant, "SELECT * FROM eventq.pull('mine')").contains("seller.42.order.*"));
    ok(&mut su, "SELECT eventq.revoke('consume', 'orders', 'tenant42')");
    denied(&mut tenant, "SELECT * FROM eventq.fetch('mine_log')");
    denied(&mut tenant, "SELECT * FROM eventq.newest_events('orders')");
    assert_eq!(count(&mut tenant, "SELECT * FROM eventq.events WHERE stream = 'orders'"), 0);
}

#[test]
fn a_role_without_grants_can_do_and_see_nothing() {
    let cluster = Cluster::start("priv-nobody", &[]);
    setup(&cluster);
    let mut worker = cluster.connect_as("postgres", "billing_worker");
    ok(
        &mut worker,
        "SET ROLE billing; SELECT eventq.create_consumer('invoicing', 'orders'); RESET ROLE",
    );
    publish_some(&cluster);
    ok(&mut cluster.connect(), "SELECT eventq.run_maintenance()");
    let mut nobody = cluster.connect_as("postgres", "nobody");
    for sql in [
        "SELECT eventq.publish('orders', 'x')",
        "SELECT eventq.publish('orders', 'x', dedup_key => 'k')",
        "SELECT eventq.publish_batch('orders', '{x}', ARRAY['{}']::jsonb[])",
        "SELECT eventq.create_consumer('n', 'orders')",
        "SELECT * FROM eventq.pull('invoicing')",
        "SELECT eventq.ack('invoicing', ARRAY[1::bigint])",
        "SELECT eventq.drop_consumer('invoicing')",
        "SELECT eventq.create_stream('n')",
        "SELECT eventq.grant('manage', 'orders', 'nobody')",
        "SELECT eventq.run_maintenance()",
        "SELECT * FROM eventq.worker_health()",
        "SELECT * FROM eventq.newest_events('orders')",
        "SELECT * FROM eventq_internal.events",
        "SELECT * FROM eventq_internal.consumers",
        "TRUNCATE eventq_internal.tasks",
        "DELETE FROM eventq_internal.staged",
    ] {
        denied(&mut nobody, sql);
    }
    for view in ["streams", "consumers", "events", "tasks", "attempts", "workers"] {
        assert_eq!(count(&mut nobody, &format!("SELECT * FROM eventq.{view}")), 0, "{view}");
    }
    // nor can its own conditions see what the views hold back: a failing cast would
    // otherwise show the rows in its error
    for sql in [
        "SELECT 1 FROM eventq.events WHERE (payload::text)::int = 0",
        "SELECT 1 FROM eventq.events WHERE subject::int = 0",
        "SELECT 1 FROM eventq.consumers WHERE (subjects::text)::int = 0 OR name::int = 0",
        "SELECT 1 FROM eventq.streams WHERE name::int = 0",
        "SELECT 1 FROM eventq.tasks WHERE consumer::int = 0",
        "SELECT 1 FROM eventq.attempts WHERE consumer::int = 0",
    ] {
        assert_eq!(count(&mut nobody, sql), 0, "{sql}");
    }
    // the pure helper is for everyone
    assert_eq!(column(&mut nobody, "SELECT eventq.subject_matches('a.*', 'a.b')::text"), ["true"]);
}

#[test]
fn privileges_are_those_of_the_role_the_call_runs_as() {
    let cluster = Cluster::start("priv-definer", &[]);
    setup(&cluster);
    let mut su = cluster.connect();
    // An application's own SECURITY DEFINER function publishes as its owner (shop), whoever
    // calls it; a function owned by a role without grants cannot, whoever calls it.
    ok(
        &mut su,
        "CREATE FUNCTION public.place_order() RETURNS uuid LANGUAGE sql SECURITY DEFINER
             AS $$ SELECT eventq.publish('orders', 'seller.42.order.created') $$;
         ALTER FUNCTION public.place_order() OWNER TO shop;
         CREATE FUNCTION public.sneak() RETURNS uuid LANGUAGE sql SECURITY DEFINER
             AS $$ SELECT eventq.publish('orders', 'seller.42.order.created') $$;
         ALTER FUNCTION public.sneak() OWNER TO nobody;",
    );
    let mut nobody = cluster.connect_as("postgres", "nobody");
    ok(&mut nobody, "SELECT public.place_order()");
    let mut shop = cluster.connect_as("postgres", "shop");
    denied(&mut shop, "SELECT public.sneak()");
    // SET ROLE counts, and the role comes back after a call, also after a failed one
    ok(&mut su, "CREATE ROLE wrapper LOGIN IN ROLE shop NOINHERIT");
    let mut wrapper = cluster.connect_as("postgres", "wrapper");
    denied(&mut wrapper, "SELECT eventq.publish('orders', 'x')");
    ok(&mut wrapper, "SET ROLE shop; SELECT eventq.publish('orders', 'x')");
    assert_eq!(column(&mut wrapper, "SELECT current_user::text"), ["shop"]);
    denied(&mut wrapper, "SELECT eventq.publish('payments', 'x')");
    assert_eq!(column(&mut wrapper, "SELECT current_user::text"), ["shop"]);
    ok(&mut wrapper, "RESET ROLE");
    // inside a transaction, after an error caught by a savepoint, the caller is the caller
    ok(
        &mut nobody,
        "BEGIN; SAVEPOINT s;
         DO $$ BEGIN PERFORM eventq.publish('orders', 'x'); EXCEPTION WHEN insufficient_privilege THEN NULL; END $$;
         ROLLBACK TO s;",
    );
    assert_eq!(column(&mut nobody, "SELECT current_user::text"), ["nobody"]);
    denied(&mut nobody, "SELECT * FROM eventq_internal.streams");
    ok(&mut nobody, "ROLLBACK");
}

#[test]
fn grants_apply_at_once_to_sessions_already_open() {
    let cluster = Cluster::start("priv-sessions", &[]);
    setup(&cluster);
    let mut su = cluster.connect();
    let mut shop = cluster.connect_as("postgres", "shop");
    ok(&mut shop, "SELECT eventq.publish('orders', 'x')");
    ok(&mut su, "SELECT eventq.revoke('publish', 'orders', 'shop')");
    denied(&mut shop, "SELECT eventq.publish('orders', 'x')");
    // a grant in a transaction that rolls back never applies
    ok(&mut su, "BEGIN; SELECT eventq.grant('publish', 'orders', 'shop'); ROLLBACK");
    denied(&mut shop, "SELECT eventq.publish('orders', 'x')");
    ok(&mut su, "SELECT eventq.grant('publish', 'orders', 'shop')");
    ok(&mut shop, "SELECT eventq.publish('orders', 'x')");
    // a grant to a role that is then dropped is gone with it, and its consumer goes to the
    // extension's owner; views keep working meanwhile
    ok(&mut su, "CREATE ROLE temp_app LOGIN; SELECT eventq.grant('consume', 'orders', 'temp_app')");
    let mut temp = cluster.connect_as("postgres", "temp_app");
    ok(&mut temp, "SELECT eventq.create_consumer('temporary', 'orders')");
    drop(temp);
    ok(&mut su, "DROP ROLE temp_app");
    let mut tenant = cluster.connect_as("postgres", "tenant42");
    assert_eq!(count(&mut tenant, "SELECT * FROM eventq.streams"), 2);
    assert_eq!(count(&mut tenant, "SELECT * FROM eventq.consumers"), 0);
    ok(&mut su, "SELECT eventq.run_maintenance()");
    assert_eq!(
        count(&mut su, "SELECT * FROM eventq_internal.grants WHERE grantee::text ~ '^[0-9]+$'"),
        0
    );
    assert_eq!(
        column(&mut su, "SELECT owner FROM eventq.consumers WHERE name = 'temporary'"),
        ["postgres"]
    );
}
