//! The `eventq` command line against a real server with the background worker: publish
//! (one event, JSON lines from stdin in batches), tail (and following), work (acking,
//! retrying with the command's stderr, stopping gracefully), apply (dry run, idempotent)
//! and status; and HTTP publishing in the console server, with each of its errors.

mod common;

use common::command::http;
use common::{count, sigterm, wait_exit, wait_for_count, Cluster, PRELOAD};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn ok(mut c: Command) -> Output {
    let out = c.output().expect("eventq runs");
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails(mut c: Command) -> String {
    let out = c.output().expect("eventq runs");
    assert!(!out.status.success(), "{c:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn with_stdin(mut c: Command, input: &str) -> Output {
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn publish_one_event_and_json_lines_in_batches() {
    let cluster = Cluster::start("cli-publish", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('orders')").unwrap();
    let out =
        ok(cluster.eventq(&["publish", "orders", "order.created", r#"{"n": 0}"#, "--key", "k1"]));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 36, "an event id: {id}");
    let lines: String = (1..=2500).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    let out = with_stdin(
        cluster.eventq(&["publish", "orders", "order.paid", "-", "--batch", "1000"]),
        &lines,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 2500 events"));
    wait_for_count(
        &mut db,
        "the events to be drained",
        "SELECT 1 FROM eventq.events WHERE stream = 'orders'",
        2501,
    );
    assert_eq!(
        count(&mut db, &format!("SELECT 1 FROM eventq.events WHERE event_id = '{id}' AND key = 'k1' AND payload = '{{\"n\": 0}}'")),
        1
    );
    // in input order, one batch after the other
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM (SELECT (payload->>'n')::int AS n, row_number() OVER (ORDER BY seq) AS r
                        FROM eventq.events WHERE subject = 'order.paid') x WHERE n <> r"
        ),
        0
    );
    // a bad line stops before its batch, saying how many went before
    let out = with_stdin(
        cluster.eventq(&["publish", "orders", "x", "--batch", "2"]),
        "{}\n{}\n{}\nnot json\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4 is not JSON"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // eventq's errors, with their SQLSTATE
    let error = fails(cluster.eventq(&["publish", "nope", "a", "{}"]));
    assert!(error.contains("stream \"nope\" does not exist") && error.contains("42704"), "{error}");
    let error = fails(cluster.eventq(&["publish", "orders", "bad subject", "{}"]));
    assert!(error.contains("22023"), "{error}");
    let error = fails(cluster.eventq(&["publish", "orders", "a", "{oops"]));
    assert!(error.contains("the payload is not JSON"), "{error}");
    // libpq's variables without DATABASE_URL
    let mut c = Command::new(common::command::binary());
    c.env_remove("DATABASE_URL")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .args(["publish", "orders", "order.env", "{}"]);
    ok(c);
}

#[test]
fn tail_prints_and_follows_what_a_stream_or_consumer_selects() {
    let cluster = Cluster::start("cli-tail", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('orders');
         SELECT eventq.create_consumer('shipping', 'orders', subjects => '{order.paid}');
         SELECT eventq.publish('orders', 'order.created', '{\"n\": 1}');
         SELECT eventq.publish('orders', 'order.paid', '{\"n\": 2}', key => 'k');
         SELECT eventq.publish('orders', 'order.created', '{\"n\": 3}');",
    )
    .unwrap();
    wait_for_count(&mut db, "the events to be drained", "SELECT 1 FROM eventq.events", 3);
    let lines = |out: Output| -> Vec<serde_json::Value> {
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    };
    let all = lines(ok(cluster.eventq(&["tail", "orders"])));
    assert_eq!(
        all.iter().map(|e| e["payload"]["n"].as_i64().unwrap()).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(all[1]["subject"], "order.paid");
    assert_eq!(all[1]["key"], "k");
    let newest = lines(ok(cluster.eventq(&["tail", "orders", "-n", "2"])));
    assert_eq!(
        newest.iter().map(|e| e["payload"]["n"].as_i64().unwrap()).collect::<Vec<_>>(),
        [2, 3]
    );
    let created = lines(ok(cluster.eventq(&["tail", "orders", "--subjects", "order.created"])));
    assert_eq!(created.len(), 2);
    // a consumer: its stream through its filter
    let shipping = lines(ok(cluster.eventq(&["tail", "shipping"])));
    assert_eq!(shipping.len(), 1);
    assert_eq!(shipping[0]["subject"], "order.paid");
    let error = fails(cluster.eventq(&["tail", "nothing"]));
    assert!(error.contains("no stream or consumer named \"nothing\""), "{error}");

    // following: new events appear as they are drained
    let mut follower = cluster
        .eventq(&["tail", "shipping", "--follow", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reader = BufReader::new(follower.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // once the follower has listened and read, whatever is drained later reaches it
    wait_for_count(
        &mut db,
        "the follower to read",
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'eventq' AND query LIKE 'SELECT seq, event_id%'",
        1,
    );
    db.batch_execute(
        "SELECT eventq.publish('orders', 'order.created', '{\"n\": 4}');
         SELECT eventq.publish('orders', 'order.paid', '{\"n\": 5}');",
    )
    .unwrap();
    let line = rx.recv_timeout(Duration::from_secs(15)).expect("the followed event");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["payload"]["n"], 5, "only what the consumer selects: {line}");
    sigterm(&follower);
    wait_exit(&mut follower, Duration::from_secs(10));
}

#[test]
fn work_acks_retries_and_stops_gracefully() {
    let cluster = Cluster::start("cli-work", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('jobs');
         SELECT eventq.create_consumer('runner', 'jobs', max_attempts => 2, backoff => 'fixed',
                                       backoff_base => '100 milliseconds');
         SELECT eventq.publish('jobs', 'job.ok', '{\"n\": 1}');
         SELECT eventq.publish('jobs', 'job.bad', '{\"n\": 2, \"fail\": true}');
         SELECT eventq.publish('jobs', 'job.ok', '{\"n\": 3}');",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("eventq-cli-work-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("handled");
    // the payload arrives on stdin, the task in the environment
    let script = format!(
        "read -r payload; case \"$payload\" in *fail*) echo \"cannot do $EVENTQ_SUBJECT (attempt $EVENTQ_ATTEMPT)\" >&2; exit 3;; esac; \
         echo \"$EVENTQ_TASK_ID $EVENTQ_SUBJECT $payload\" >> {}",
        log.display()
    );
    let mut worker = cluster
        .eventq(&["work", "runner", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_count(&mut db, "every task to end", "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state IN ('completed', 'discarded')", 3);
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(10)).success());
    let handled = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = handled.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{handled}");
    assert!(lines.iter().all(|l| l.contains("job.ok") && l.contains("\"n\"")), "{handled}");
    assert_eq!(
        common::column(
            &mut db,
            "SELECT attempt || ':' || outcome || ':' || error FROM eventq.attempts
                                 WHERE consumer = 'runner' AND outcome = 'failed' ORDER BY attempt"
        ),
        ["1:failed:cannot do job.bad (attempt 1)", "2:failed:cannot do job.bad (attempt 2)"]
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'completed'"
        ),
        2
    );

    // SIGTERM while a command runs: it finishes, its task is acked, the worker exits 0
    db.batch_execute("SELECT eventq.publish('jobs', 'job.slow', '{}')").unwrap();
    let mut worker = cluster
        .eventq(&["work", "runner", "--", "sh", "-c", "cat > /dev/null; sleep 2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_count(
        &mut db,
        "the slow task to run",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'running'",
        1,
    );
    sigterm(&worker);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'completed'"
        ),
        3
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'running'"
        ),
        0
    );

    // a command that outlives half its lease has the lease extended, not lost
    db.batch_execute("SELECT eventq.publish('jobs', 'job.long', '{}')").unwrap();
    ok(cluster.eventq(&[
        "work",
        "runner",
        "--lease",
        "2 seconds",
        "--drain",
        "--",
        "sh",
        "-c",
        "cat > /dev/null; sleep 5",
    ]));
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.attempts WHERE consumer = 'runner' AND outcome = 'lost'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'completed'"
        ),
        4
    );
    // a batch: the tasks waiting their turn keep their leases too
    db.batch_execute(
        "SELECT eventq.publish('jobs', 'job.batched', '{}') FROM generate_series(1, 3)",
    )
    .unwrap();
    wait_for_count(
        &mut db,
        "the batch's tasks",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'available'",
        3,
    );
    ok(cluster.eventq(&[
        "work",
        "runner",
        "--batch",
        "3",
        "--lease",
        "2 seconds",
        "--drain",
        "--",
        "sh",
        "-c",
        "cat > /dev/null; sleep 1.5",
    ]));
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.attempts WHERE consumer = 'runner' AND outcome = 'lost'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT 1 FROM eventq.tasks WHERE consumer = 'runner' AND state = 'completed'"
        ),
        7
    );
    let error = fails(cluster.eventq(&["work", "nobody", "--", "true"]));
    assert!(error.contains("no task consumer named \"nobody\""), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apply_a_yaml_file_is_idempotent_and_dry_runs_change_nothing() {
    let cluster = Cluster::start("cli-apply", &[]);
    let mut db = cluster.connect();
    let dir = std::env::temp_dir().join(format!("eventq-cli-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("eventq.yaml");
    std::fs::write(
        &file,
        "streams:\n  orders:\n    retention: 30 days\nconsumers:\n  mailer:\n    stream: orders\n    subjects: [order.created]\n    max_attempts: 5\n  search_index:\n    stream: orders\n    mode: log\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let dry = ok(cluster.eventq(&["apply", path, "--dry-run"]));
    assert!(stdout(&dry).contains("create_stream stream=orders"), "{}", stdout(&dry));
    assert!(stdout(&dry).contains("create_consumer consumer=mailer"), "{}", stdout(&dry));
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.streams"), 0);
    let applied = ok(cluster.eventq(&["apply", path]));
    assert_eq!(stdout(&applied).lines().count(), 3, "{}", stdout(&applied));
    assert_eq!(
        count(&mut db, "SELECT 1 FROM eventq.consumers WHERE name = 'mailer' AND max_attempts = 5"),
        1
    );
    let again = ok(cluster.eventq(&["apply", path]));
    assert_eq!(stdout(&again), "", "nothing left to change");
    assert!(String::from_utf8_lossy(&again.stderr).contains("changed 0 things"));
    // JSON too, and the errors of apply itself
    let json = dir.join("bad.json");
    std::fs::write(&json, r#"{"streams": {"orders": {"colour": "red"}}}"#).unwrap();
    let error = fails(cluster.eventq(&["apply", json.to_str().unwrap()]));
    assert!(error.contains("colour") && error.contains("22023"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_shows_streams_consumers_and_health() {
    let cluster = Cluster::start("cli-status", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('orders');
         SELECT eventq.create_consumer('mailer', 'orders');
         SELECT eventq.publish('orders', 'a') FROM generate_series(1, 7);",
    )
    .unwrap();
    wait_for_count(&mut db, "the tasks", "SELECT 1 FROM eventq.tasks", 7);
    let out = stdout(&ok(cluster.eventq(&["status"])));
    let mailer = out.lines().find(|l| l.starts_with("mailer ")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = mailer.split_whitespace().collect();
    // consumer, stream, mode, then available (paused is empty)
    assert_eq!(&cells[..4], ["mailer", "orders", "task", "7"], "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("orders ") && l.split_whitespace().nth(3) == Some("7")),
        "{out}"
    );
    assert!(out.contains("oldest snapshot"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("postgres ")), "the worker's row: {out}");
}

/// The console server's HTTP publishing.
#[test]
fn http_publishing_maps_eventq_errors_to_statuses() {
    let cluster = Cluster::start("cli-http", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('orders');
         CREATE ROLE reader LOGIN;",
    )
    .unwrap();
    let (mut server, port) = cluster.console("postgres", Some("s3cret"), &[]);
    let auth = [("Authorization", "Bearer s3cret"), ("Content-Type", "application/json")];
    let post =
        |path: &str, headers: &[(&str, &str)], body: &str| http(port, "POST", path, headers, body);
    let (status, body) = post("/api/streams/orders/events", &[], r#"{"subject": "a"}"#);
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(
        "/api/streams/orders/events",
        &[("Authorization", "Bearer wrong")],
        r#"{"subject": "a"}"#,
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(
        "/api/streams/orders/events",
        &auth,
        r#"{"subject": "order.created", "payload": {"n": 1}, "key": "k"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = post(
        "/api/streams/orders/events",
        &auth,
        r#"[{"subject": "b.1"}, {"subject": "b.2", "payload": [1]}, {"subject": "b.3", "headers": {"h": 1}}]"#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ids"].as_array().unwrap().len(),
        3
    );
    wait_for_count(&mut db, "the events", "SELECT 1 FROM eventq.events", 4);
    assert_eq!(
        count(
            &mut db,
            &format!("SELECT 1 FROM eventq.events WHERE event_id = '{id}' AND key = 'k'")
        ),
        1
    );
    // the errors
    let (status, body) = post("/api/streams/nope/events", &auth, r#"{"subject": "a"}"#);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("42704") && body.contains("stream \\\"nope\\\" does not exist"),
        "{body}"
    );
    let (status, body) =
        post("/api/streams/orders/events", &auth, r#"{"subject": "not a subject"}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("22023"), "{body}");
    let (status, body) = post("/api/streams/orders/events", &auth, r#"{"payload": {}}"#);
    assert_eq!(status, 422, "{body}");
    let (status, body) = post("/api/streams/orders/events", &auth, "{not json");
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        post("/api/streams/orders/events", &auth, r#"[{"subject": "a", "dedup_key": "d"}]"#);
    assert_eq!(status, 422, "{body}");
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(10)).success());

    // a role without `publish` on the stream: 403; a read-only console: 403 before asking
    let (mut unprivileged, port) = cluster.console("reader", None, &[]);
    let json = [("Content-Type", "application/json")];
    let (status, body) =
        http(port, "POST", "/api/streams/orders/events", &json, r#"{"subject": "a"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("42501"), "{body}");
    // what a page of another site could send: not JSON, or from its origin, or through a
    // DNS name rebound to this machine
    let (status, body) = http(
        port,
        "POST",
        "/api/streams/orders/events",
        &[("Content-Type", "text/plain")],
        r#"{"subject": "a"}"#,
    );
    assert_eq!(status, 415, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/api/streams/orders/events",
        &[("Content-Type", "application/json"), ("Origin", "https://evil.example")],
        r#"{"subject": "a"}"#,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(port, "GET", "/", &[("Host", "evil.example:8080")], "");
    assert_eq!(status, 421, "{body}");
    sigterm(&unprivileged);
    wait_exit(&mut unprivileged, Duration::from_secs(10));
    let (mut read_only, port) = cluster.console("postgres", None, &["--read-only"]);
    let (status, body) =
        http(port, "POST", "/api/streams/orders/events", &[], r#"{"subject": "a"}"#);
    assert_eq!(status, 403, "{body}");
    sigterm(&read_only);
    wait_exit(&mut read_only, Duration::from_secs(10));
    assert_eq!(count(&mut db, "SELECT 1 FROM eventq.events"), 4);
}
