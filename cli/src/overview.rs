//! The overview both `eventq status` and the console's front page show: streams,
//! consumers and health, read from eventq's views (so a role sees what it may see) and from
//! Postgres's own statistics views.

use tokio_postgres::{Client, Error};

/// Rows of text under headers: printed as a table by `status`, rendered by the console.
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

fn text<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Seconds as a short age: `42 s`, `3 min`, `2.5 h`, `4 d`.
pub fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s < 100.0 => format!("{s:.1} s"),
        Some(s) if s < 6000.0 => format!("{:.0} min", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        Some(s) => format!("{:.0} d", s / 86400.0),
    }
}

pub async fn streams(db: &Client) -> Result<Table, Error> {
    let rows = db
        .query(
            "SELECT s.name, coalesce(s.retention::text, 'forever'), s.events, s.head_seq,
                    (SELECT count(*) FROM eventq.events e
                      WHERE e.stream = s.name AND e.published_at > now() - interval '1 minute'
                        AND e.published_at > '-infinity'),
                    extract(epoch FROM now() - s.oldest_at)::float8,
                    extract(epoch FROM now() - s.newest_at)::float8
             FROM eventq.streams s ORDER BY s.name",
            &[],
        )
        .await?;
    Ok(Table {
        headers: vec![
            "stream",
            "retention",
            "events",
            "head seq",
            "last minute",
            "oldest",
            "newest",
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2).to_string(),
                    text(r.get::<_, Option<i64>>(3)),
                    r.get::<_, i64>(4).to_string(),
                    age(r.get(5)),
                    age(r.get(6)),
                ]
            })
            .collect(),
    })
}

/// Columns of `consumers`; the console links the first to the consumer's page. `lag` is in
/// unfinished tasks (task consumers) or unread events (log consumers); `oldest due` is the
/// lag in time: how long the oldest task that could be pulled now has waited, or how old
/// the oldest unread event is. Only `eventq.consumers` is read: the tasks view joins every
/// task to its event, far too much for a page that refreshes itself.
pub const CONSUMER_HEADERS: [&str; 13] = [
    "consumer",
    "stream",
    "mode",
    "paused",
    "available",
    "waiting",
    "running",
    "retryable",
    "completed",
    "discarded",
    "expired",
    "lag",
    "oldest due",
];

pub async fn consumers(db: &Client) -> Result<Table, Error> {
    let rows = db
        .query(
            "SELECT c.name, c.stream, c.mode, c.paused, c.available, c.waiting, c.running,
                    c.retryable, c.completed, c.discarded, c.expired, c.lag,
                    extract(epoch FROM c.oldest_due_age)::float8
             FROM eventq.consumers c ORDER BY c.name",
            &[],
        )
        .await?;
    Ok(Table {
        headers: CONSUMER_HEADERS.to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                let task = r.get::<_, String>(2) == "task";
                let count =
                    |i: usize| if task { r.get::<_, i64>(i).to_string() } else { String::new() };
                vec![
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    if r.get::<_, bool>(3) { "paused".into() } else { String::new() },
                    count(4),
                    count(5),
                    count(6),
                    count(7),
                    count(8),
                    count(9),
                    r.get::<_, i64>(10).to_string(),
                    r.get::<_, i64>(11).to_string(),
                    age(r.get(12)),
                ]
            })
            .collect(),
    })
}

pub async fn workers(db: &Client) -> Result<Table, Error> {
    let rows = db
        .query(
            "SELECT database, pid, extract(epoch FROM now() - started_at)::float8,
                    extract(epoch FROM now() - last_drain_at)::float8, drained,
                    coalesce(last_error, ''), extract(epoch FROM now() - last_error_at)::float8
             FROM eventq.workers ORDER BY database",
            &[],
        )
        .await?;
    Ok(Table {
        headers: vec!["database", "pid", "up", "last drain", "drained", "last error", "error age"],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.get::<_, String>(0),
                    text(r.get::<_, Option<i32>>(1)),
                    age(r.get(2)),
                    age(r.get(3)),
                    text(r.get::<_, Option<i64>>(4)),
                    r.get::<_, String>(5),
                    age(r.get(6)),
                ]
            })
            .collect(),
    })
}

/// What holds the xmin horizon back the most (the oldest snapshot: a session, a prepared
/// transaction or a replication slot), and how many committed events wait to be drained
/// (only for roles that may read eventq's storage).
pub async fn health(db: &Client) -> Result<Table, Error> {
    let holder = db
        .query_opt(
            "SELECT holder, xmin_age, seconds FROM (
                 SELECT format('session %s (%s, %s, %s): %s', pid, usename,
                               coalesce(nullif(application_name, ''), '-'), state,
                               left(coalesce(query, ''), 80)) AS holder,
                        age(backend_xmin) AS xmin_age,
                        extract(epoch FROM now() - xact_start)::float8 AS seconds
                 FROM pg_stat_activity
                 WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
                   AND datname = current_database()
                 UNION ALL
                 SELECT format('prepared transaction %s (%s)', gid, owner), age(transaction),
                        extract(epoch FROM now() - prepared)::float8
                 FROM pg_prepared_xacts
                 UNION ALL
                 SELECT format('replication slot %s', slot_name),
                        greatest(age(xmin), age(catalog_xmin)), NULL
                 FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
             ) h ORDER BY xmin_age DESC NULLS LAST LIMIT 1",
            &[],
        )
        .await?;
    let mut rows = Vec::new();
    match holder {
        Some(h) => {
            rows.push(vec!["oldest snapshot".into(), h.get::<_, String>(0)]);
            rows.push(vec![
                "its xmin age".into(),
                format!(
                    "{} transactions, open {}",
                    h.get::<_, i32>(1),
                    match age(h.get(2)) {
                        a if a.is_empty() => "-".to_string(),
                        a => a,
                    }
                ),
            ]);
        }
        None => rows.push(vec!["oldest snapshot".into(), "none open".into()]),
    }
    // Reading staging takes a lock the drain's truncation skips: a moment, never in a
    // transaction left open.
    let staged = match db.query_one("SELECT count(*) FROM eventq_internal.staged", &[]).await {
        Ok(r) => r.get::<_, i64>(0).to_string(),
        Err(_) => "not visible to this role".into(),
    };
    rows.push(vec!["staged, not yet drained".into(), staged]);
    Ok(Table { headers: vec!["health", ""], rows })
}
