//! The workers and publishers under `examples/` (Python, Node, Rust), run against a real
//! server with the background worker: every event published is handled once (completed,
//! ignored, or retried until discarded), with the lease guard, and SIGTERM stops a worker
//! gracefully (exit 0, no task left running).

mod common;

use common::{count, sigterm, wait_exit, wait_for, Cluster, PRELOAD};
use std::process::{Command, Stdio};
use std::time::Duration;

const EVENTS: i64 = 30;

/// The example in `language`: its worker (`publish` false, args: consumer) or publisher
/// (args: stream, count).
fn example(language: &str, publish: bool, args: &[&str]) -> Command {
    let mut c = match (language, publish) {
        ("python", _) => Command::new("python3"),
        ("node", _) => Command::new("node"),
        (_, true) => Command::new("examples/rust/target/debug/publish"),
        (_, false) => Command::new("examples/rust/target/debug/worker"),
    };
    match (language, publish) {
        ("python", true) => c.arg("examples/python/publish.py"),
        ("python", false) => c.arg("examples/python/worker.py"),
        ("node", true) => c.arg("examples/node/publish.js"),
        ("node", false) => c.arg("examples/node/worker.js"),
        _ => c.env_remove("RUST_BACKTRACE"),
    };
    c.args(args);
    c
}

const LANGUAGES: [&str; 3] = ["python", "node", "rust"];

fn build_rust_examples() {
    // (its own target directory, whatever the test run's cargo set for ours)
    let status = Command::new("cargo")
        .args(["build", "--quiet", "--manifest-path", "examples/rust/Cargo.toml", "--bins"])
        .args(["--target-dir", "examples/rust/target"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .status()
        .expect("cargo");
    assert!(status.success(), "the Rust examples do not build");
}

#[test]
fn each_examples_worker_handles_every_event_and_stops_gracefully() {
    build_rust_examples();
    let cluster = Cluster::start("examples", &[PRELOAD]);
    let mut db = cluster.connect();
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", cluster.port);
    for language in LANGUAGES {
        let (stream, consumer) = (format!("ex_{language}"), format!("ex_{language}_work"));
        db.batch_execute(&format!(
            "SELECT eventq.create_stream('{stream}');
             SELECT eventq.create_consumer('{consumer}', '{stream}', max_attempts => 2,
                 backoff => 'fixed', backoff_base => '10 milliseconds');
             CREATE TABLE IF NOT EXISTS demo_orders (n int PRIMARY KEY);
             TRUNCATE demo_orders"
        ))
        .unwrap();
        let mut worker = example(language, false, &[&consumer])
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start the worker: {e}", language));
        let published = example(language, true, &[&stream, &EVENTS.to_string()])
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(
            published.status.success(),
            "{}: the publisher failed: {}",
            language,
            String::from_utf8_lossy(&published.stderr)
        );
        let finished = format!(
            "SELECT 1 FROM eventq.tasks WHERE consumer = '{consumer}' AND state IN ('completed', 'discarded')"
        );
        wait_for(&format!("{}: every task finished", language), Duration::from_secs(60), || {
            match count(&mut db, &finished) {
                EVENTS => Ok(()),
                n => Err(format!("{n} of {EVENTS}")),
            }
        });
        // n % 10 == 0 fails twice and is discarded; n % 7 == 0 (and not % 10) is ignored
        let outcomes = |db: &mut postgres::Client, outcome: &str| {
            count(db, &format!("SELECT 1 FROM eventq.attempts WHERE consumer = '{consumer}' AND outcome = '{outcome}'"))
        };
        assert_eq!(outcomes(&mut db, "failed"), 3 * 2, "{}", language);
        assert_eq!(outcomes(&mut db, "ignored"), 4, "{}", language);
        assert_eq!(outcomes(&mut db, "completed"), EVENTS - 3 - 4, "{}", language);
        assert_eq!(outcomes(&mut db, "lost"), 0, "{}", language);
        assert_eq!(count(&mut db, "SELECT 1 FROM demo_orders"), EVENTS, "{}", language);

        // stopped in the middle of work: the batch in hand is reported, nothing stays leased
        db.batch_execute(&format!(
            "SELECT eventq.publish_batch('{stream}', array_fill('demo.created'::text, ARRAY[200]),
                                         array_fill('{{}}'::jsonb, ARRAY[200]))"
        ))
        .unwrap();
        wait_for(
            &format!("{}: work under way", language),
            Duration::from_secs(30),
            || {
                match count(&mut db, &format!("SELECT 1 FROM eventq.tasks WHERE consumer = '{consumer}' AND state = 'completed'")) {
                n if n >= EVENTS - 3 + 10 => Ok(()),
                n => Err(format!("{n} completed")),
            }
            },
        );
        sigterm(&worker);
        let status = wait_exit(&mut worker, Duration::from_secs(10));
        assert!(status.success(), "{}: the worker exited with {status}", language);
        assert_eq!(
            count(&mut db, &format!("SELECT 1 FROM eventq.tasks WHERE consumer = '{consumer}' AND state = 'running'")),
            0,
            "{}: a stopped worker left tasks running",
            language
        );
    }
}
