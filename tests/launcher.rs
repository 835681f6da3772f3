//! The launcher serves every database where eventq is created: a worker each, draining
//! within milliseconds of a commit, started when the extension is created and stopped when
//! it or the database goes; commands that need a database free are never refused because
//! of a worker; `eventq.max_workers` bounds them; `eventq.workers` shows their health.

mod common;

use common::{column, count, wait_for, Cluster, PRELOAD};
use postgres::Client;
use std::time::{Duration, Instant};

fn setup(db: &mut Client) {
    db.batch_execute(
        "CREATE EXTENSION eventq;
         SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');",
    )
    .unwrap();
}

fn workers(db: &mut Client) -> Vec<String> {
    column(
        db,
        "SELECT datname::text FROM pg_stat_activity WHERE backend_type = 'eventq worker' ORDER BY 1",
    )
}

/// Publishes one event and returns how long until the worker had drained it (nobody reads).
fn drain_latency(db: &mut Client) -> Duration {
    let before = count(db, "SELECT 1 FROM eventq.events");
    let started = Instant::now();
    db.batch_execute("SELECT eventq.publish('s', 'x')").unwrap();
    wait_for("the worker to drain", Duration::from_secs(10), || {
        if count(db, "SELECT 1 FROM eventq.events") > before {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    started.elapsed()
}

#[test]
fn every_database_with_eventq_gets_a_worker() {
    let cluster = Cluster::start_without_extension("launcher", &[PRELOAD]);
    let mut admin = cluster.connect();
    for name in ["one", "two", "three"] {
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    }
    let mut dbs: Vec<Client> =
        ["one", "two", "three"].iter().map(|n| cluster.connect_to(n)).collect();
    for db in dbs.iter_mut() {
        setup(db);
    }
    wait_for("a worker per database", Duration::from_secs(20), || {
        match workers(&mut admin).as_slice() {
            [a, b, c] if (a.as_str(), b.as_str(), c.as_str()) == ("one", "three", "two") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for db in dbs.iter_mut() {
        let latency = drain_latency(db);
        assert!(latency < Duration::from_millis(500), "{latency:?}");
    }
    // eventq.workers reads shared memory: it shows the workers of every database
    let mut one = cluster.connect_to("one");
    let seen_from_one = column(
        &mut one,
        "SELECT database || ':' || (pid > 0) || ':' || (drained > 0) || ':' || (last_drain_at IS NOT NULL)
                || ':' || coalesce(last_error, '-')
         FROM eventq.workers ORDER BY 1",
    );
    assert_eq!(
        seen_from_one,
        ["one:true:true:true:-", "three:true:true:true:-", "two:true:true:true:-"]
    );
    drop(one);

    // Dropping the extension stops its worker; creating it again brings one, no restart.
    dbs[1].batch_execute("DROP EXTENSION eventq").unwrap();
    wait_for("the worker of two to stop", Duration::from_secs(20), || {
        match workers(&mut admin).as_slice() {
            [a, b] if (a.as_str(), b.as_str()) == ("one", "three") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    setup(&mut dbs[1]);
    wait_for("a worker for two again", Duration::from_secs(5), || {
        if workers(&mut admin).contains(&"two".to_string()) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let latency = drain_latency(&mut dbs[1]);
    assert!(latency < Duration::from_millis(500), "{latency:?}");

    // Commands that need a database without connections are not refused because of it.
    drop(dbs);
    admin.batch_execute("CREATE DATABASE copy TEMPLATE one").unwrap();
    admin.batch_execute("ALTER DATABASE three RENAME TO third").unwrap();
    admin.batch_execute("DROP DATABASE two").unwrap();
    wait_for("workers for what is left", Duration::from_secs(20), || {
        match workers(&mut admin).as_slice() {
            [a, b, c] if (a.as_str(), b.as_str(), c.as_str()) == ("copy", "one", "third") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let mut copy = cluster.connect_to("copy");
    let latency = drain_latency(&mut copy);
    assert!(latency < Duration::from_millis(500), "{latency:?}");
}

#[test]
fn max_workers_bounds_them_and_the_rest_drain_when_read() {
    let cluster =
        Cluster::start_without_extension("launcher-max", &[PRELOAD, "eventq.max_workers = 2"]);
    let mut admin = cluster.connect();
    for name in ["a", "b", "c"] {
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        setup(&mut cluster.connect_to(name));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(workers(&mut admin).len(), 2);
    for name in ["a", "b", "c"] {
        let mut db = cluster.connect_to(name);
        db.batch_execute("SELECT eventq.publish('s', 'x')").unwrap();
        assert_eq!(column(&mut db, "SELECT subject FROM eventq.pull('c')"), ["x"], "{name}");
    }
}

/// A worker that keeps failing says why, at most once a minute, and shows it in
/// eventq.workers.
#[test]
fn a_failing_worker_warns_once_a_minute_and_shows_why() {
    let cluster = Cluster::start("launcher-failing", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's');
         ALTER TABLE eventq_internal.tasks ADD CONSTRAINT broken CHECK (seq < 0) NOT VALID;",
    )
    .unwrap();
    for _ in 0..20 {
        db.batch_execute("SELECT eventq.publish('s', 'x')").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let error = column(&mut db, "SELECT coalesce(last_error, '') FROM eventq.workers");
    assert_eq!(error.len(), 1);
    assert!(error[0].contains("broken"), "{error:?}");
    let warnings = cluster.log().matches("violates check constraint \"broken\"").count();
    assert_eq!(warnings, 1, "{}", cluster.log());
}
