//! Hostile input through the SQL API: names, subjects, patterns, keys, roles, headers and
//! payloads that are huge, empty, NULL, deeply nested or shaped like SQL injection. Each is
//! refused with the SQLSTATE of DESIGN.md (22023 for a bad value, 42704 for an unknown
//! object) and a message that quotes at most a short prefix of it, or works as data; none
//! panics (XX000), runs as SQL, or takes the server's memory.

mod common;

use common::{column, count, sqlstate, Cluster};
use postgres::Client;

/// Runs `sql` with `value` as $1; returns the SQLSTATE and message it failed with.
fn refusal(db: &mut Client, sql: &str, value: &str) -> (String, String) {
    match db.execute(sql, &[&value]) {
        Ok(_) => panic!(
            "{sql} accepted {} bytes starting {:?}",
            value.len(),
            &value[..value.len().min(40)]
        ),
        Err(e) => {
            (sqlstate(&e), e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default())
        }
    }
}

const INJECTIONS: &[&str] = &[
    "'; DROP TABLE eventq_internal.events; --",
    "\"; SELECT pg_sleep(10); --",
    "a' OR '1'='1",
    "$$ LANGUAGE sql $$",
    "%s%s%n",
    "a\nb",
    "a\tb",
    "eventq_x; NOTIFY x",
    "Robert'); DROP TABLE students;--",
    "(a|b)",
    "^.*$",
    "",
    " ",
    "ordér",
];

#[test]
fn names_subjects_and_patterns_of_any_shape_are_refused_as_values() {
    let cluster = Cluster::start("hostile-names", &[]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.create_consumer('c', 's')")
        .unwrap();
    let huge = "x".repeat(1 << 20);
    let mut values: Vec<String> = INJECTIONS.iter().map(|s| s.to_string()).collect();
    values.push(huge.clone());
    values.push(format!("{huge}.'; DROP TABLE x; --"));
    for value in &values {
        for (sql, code) in [
            ("SELECT eventq.create_stream($1)", "22023"),
            ("SELECT eventq.create_consumer($1, 's')", "22023"),
            ("SELECT eventq.create_consumer('n', $1)", "42704"),
            ("SELECT eventq.publish($1, 'a')", "42704"),
            ("SELECT eventq.publish('s', $1)", "22023"),
            ("SELECT eventq.publish_batch('s', ARRAY[$1], ARRAY['{}'::jsonb])", "22023"),
            ("SELECT eventq.create_consumer('n', 's', ARRAY[$1])", "22023"),
            ("SELECT eventq.create_consumer('n', 's', exclude => ARRAY[$1])", "22023"),
            ("SELECT eventq.alter_consumer('c', subjects => ARRAY['a', $1])", "22023"),
            ("SELECT * FROM eventq.pull($1)", "42704"),
            ("SELECT * FROM eventq.fetch($1)", "42704"),
            ("SELECT eventq.subject_matches($1, 'a')", "22023"),
            ("SELECT eventq.subject_matches('a', $1)", "22023"),
            ("SELECT eventq.grant('publish', 's', $1)", "42704"),
            ("SELECT eventq.grant($1, 's', 'postgres')", "22023"),
            ("SELECT eventq.grant('consume', 's', 'postgres', ARRAY[$1])", "22023"),
            ("SELECT eventq.create_consumer('n', 's', mode => $1)", "22023"),
            ("SELECT eventq.create_consumer('n', 's', backoff => $1)", "22023"),
        ] {
            let (state, message) = refusal(&mut db, sql, value);
            assert_eq!(state, code, "{sql} with {} bytes: {message}", value.len());
            assert!(message.len() < 400, "{sql}: a {} byte message", message.len());
        }
    }
    // lists of patterns: at most 100, and the longest and most general of those still
    // make regular expressions Postgres accepts, for the views and the log reader
    let wide: Vec<String> = (0..100).map(|i| format!("{}t{i}.>", "*.".repeat(120))).collect();
    let too_many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    for sql in [
        "SELECT eventq.create_consumer('n', 's', $1)",
        "SELECT eventq.create_consumer('n', 's', exclude => $1)",
        "SELECT eventq.alter_consumer('c', subjects => $1)",
        "SELECT eventq.grant('consume', 's', 'postgres', $1)",
    ] {
        let error = db.execute(sql, &[&too_many]).unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{sql}: {error}");
    }
    db.execute("SELECT eventq.create_consumer('wide', 's', $1, exclude => $1)", &[&wide]).unwrap();
    db.execute(
        "SELECT eventq.create_consumer('wide_log', 's', $1, exclude => $1, mode => 'log')",
        &[&wide],
    )
    .unwrap();
    db.batch_execute("SELECT eventq.publish('s', 'a.b')").unwrap();
    db.batch_execute("SELECT * FROM eventq.consumers; SELECT * FROM eventq.fetch('wide_log'); SELECT * FROM eventq.pull('wide')").unwrap();

    // NULL where a value is needed, and NULL inside arrays
    for sql in [
        "SELECT eventq.create_stream(NULL)",
        "SELECT eventq.publish(NULL, 'a')",
        "SELECT eventq.publish('s', NULL)",
        "SELECT eventq.publish('s', 'a', NULL)",
        "SELECT eventq.publish_batch('s', ARRAY[NULL]::text[], ARRAY['{}'::jsonb])",
        "SELECT eventq.publish_batch('s', ARRAY['a'], ARRAY[NULL]::jsonb[])",
        "SELECT eventq.create_consumer('n', 's', ARRAY[NULL]::text[])",
        "SELECT eventq.create_consumer('n', 's', '{}')",
        "SELECT eventq.grant('consume', 's', 'postgres', ARRAY[NULL]::text[])",
        "SELECT eventq.grant(NULL, 's', 'postgres')",
        "SELECT eventq.grant('publish', 's', NULL)",
        "SELECT eventq.ack('c', NULL)",
        "SELECT * FROM eventq.pull(NULL)",
    ] {
        assert_eq!(common::fails_with(&mut db, sql), "22023", "{sql}");
    }
    // nothing ran: the tables are all there, and nobody slept
    assert_eq!(count(&mut db, "SELECT * FROM eventq.streams"), 1);
    assert_eq!(
        count(
            &mut db,
            "SELECT * FROM pg_tables WHERE schemaname = 'eventq_internal' AND tablename = 'events'"
        ),
        1
    );
}

#[test]
fn keys_headers_and_payloads_are_data_however_they_look() {
    let cluster = Cluster::start("hostile-data", &[]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('s');
         SELECT eventq.create_consumer('c', 's', ordering => 'key')",
    )
    .unwrap();
    for (i, value) in INJECTIONS.iter().enumerate() {
        db.execute(
            "SELECT eventq.publish('s', 'a', jsonb_build_object('v', $1::text), key => $1, headers => jsonb_build_object($1::text, $1::text), dedup_key => $1 || $2)",
            &[value, &i.to_string()],
        )
        .unwrap();
    }
    // a document nested 2000 levels deep is just a document
    let deep = format!("{}1{}", "{\"a\": ".repeat(2000), "}".repeat(2000));
    db.execute(
        "SELECT eventq.publish('s', 'deep', $1::text::jsonb, headers => $1::text::jsonb)",
        &[&deep],
    )
    .unwrap();
    let pulled = column(&mut db, "SELECT key FROM eventq.pull('c', 100) ORDER BY seq");
    assert_eq!(pulled.len(), INJECTIONS.len() + 1);
    let keys = column(&mut db, "SELECT coalesce(key, '<none>') FROM eventq.events ORDER BY seq");
    assert_eq!(
        keys[..INJECTIONS.len()],
        INJECTIONS.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
    );
    let depth: String = db
        .query_one("SELECT jsonb_path_query_first(payload, 'strict $.**{1999}')::text FROM eventq.events WHERE subject = 'deep'", &[])
        .unwrap()
        .get(0);
    assert_eq!(depth, "{\"a\": 1}");
    // headers that are not an object
    for headers in ["[]", "1", "\"text\"", "null"] {
        assert_eq!(
            common::fails_with(
                &mut db,
                &format!("SELECT eventq.publish('s', 'a', headers => '{headers}')")
            ),
            "22023",
            "{headers}"
        );
    }
}

#[test]
fn a_hundred_megabyte_payload_is_refused_with_a_clear_error() {
    let cluster = Cluster::start("hostile-size", &[]);
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s')").unwrap();
    for sql in [
        "SELECT eventq.publish('s', 'a', jsonb_build_object('b', repeat('x', 100 * 1024 * 1024)))",
        "SELECT eventq.publish('s', 'a', '{}', headers => jsonb_build_object('b', repeat('x', 100 * 1024 * 1024)))",
        "SELECT eventq.publish_batch('s', '{a,b}', ARRAY['{}', jsonb_build_object('b', repeat('x', 100 * 1024 * 1024))])",
        "SELECT eventq.publish('s', 'a', jsonb_build_object('b', repeat('x', 100 * 1024 * 1024)), dedup_key => 'k')",
    ] {
        let error = db.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{error}");
        let message = error.as_db_error().unwrap().message().to_string();
        assert!(message.contains("100.0 MB") && message.contains("eventq.max_payload_size (1.0 MB)"), "{message}");
    }
    // the limit is the server's to set, not an application's
    db.batch_execute("CREATE ROLE app LOGIN; SELECT eventq.grant('publish', 's', 'app')").unwrap();
    let mut app = cluster.connect_as("postgres", "app");
    // (before eventq's library is loaded, SET keeps a placeholder that the library then
    // refuses; afterwards it refuses at once)
    let _ = app.batch_execute("SET eventq.max_payload_size = '200MB'");
    assert_eq!(
        common::fails_with(
            &mut app,
            "SELECT eventq.publish('s', 'a', jsonb_build_object('b', repeat('x', 2000000)))"
        ),
        "22023"
    );
    assert_eq!(common::fails_with(&mut app, "SET eventq.max_payload_size = '200MB'"), "42501");
    // up to the limit, payloads go through whole
    db.batch_execute(
        "SELECT eventq.publish('s', 'a', jsonb_build_object('b', repeat('x', 1000000)))",
    )
    .unwrap();
    db.batch_execute("SET eventq.max_payload_size = '200MB'").unwrap();
    db.batch_execute(
        "SELECT eventq.publish('s', 'a', jsonb_build_object('b', repeat('x', 100 * 1024 * 1024)))",
    )
    .unwrap();
    assert_eq!(count(&mut db, "SELECT * FROM eventq_internal.staged"), 2);
}
