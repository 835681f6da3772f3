//! The console's pages. Each reads eventq's views on one pooled connection; a page asked
//! for with `?fragment=…` returns only the part that refreshes itself.

use super::{Failure, Page, Shared};
use crate::html::{esc, page, table, url};
use crate::overview::{self, Table};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::Client;

#[derive(Deserialize, Default)]
pub struct Params {
    fragment: Option<String>,
    notice: Option<String>,
    state: Option<String>,
    key: Option<String>,
    subject: Option<String>,
    stream: Option<String>,
    id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    preview_seq: Option<String>,
    preview_at: Option<String>,
}

/// A filter's value: absent when empty.
fn given(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn notice(params: &Params) -> String {
    match given(&params.notice) {
        Some(n) => format!("<p class=\"notice\" id=\"notice\">{}</p>", esc(&n)),
        None => String::new(),
    }
}

/// A hidden field with the form token, and the token's check on the other side.
pub fn form_token(app: &super::App) -> String {
    format!("<input type=\"hidden\" name=\"token\" value=\"{}\">", app.form_token)
}

pub async fn overview(State(app): State<Shared>, Query(params): Query<Params>) -> Page {
    let db = app.pool.get().await?;
    let streams = overview::streams(&db).await?;
    let consumers = overview::consumers(&db).await?;
    let workers = overview::workers(&db).await?;
    let health = overview::health(&db).await?;
    let body = format!(
        "<h2>Streams</h2>{}<h2>Consumers</h2>{}<h2>Workers</h2>{}{}",
        table(&streams, "streams", |i, row| (i == 0)
            .then(|| format!("/events?stream={}", url(&row[0])))),
        table(&consumers, "consumers", |i, row| (i == 0)
            .then(|| format!("/consumers/{}", url(&row[0])))),
        table(&workers, "workers", |_, _| None),
        table(&health, "health", |_, _| None),
    );
    if params.fragment.is_some() {
        return Ok(Html(body));
    }
    let workers_note = if workers.rows.is_empty() {
        "<p class=\"muted\">No background worker reports to this role: without eventq in \
         shared_preload_libraries, run <code>eventq.run_maintenance()</code> on a schedule.</p>"
    } else {
        ""
    };
    Ok(Html(page(
        "Overview",
        app.read_only,
        &format!("<h1>Overview</h1>{workers_note}<div id=\"overview\" data-refresh=\"/?fragment=overview\" data-every=\"{}\">{body}</div>", app.refresh_ms),
    )))
}

/// One consumer's row of `eventq.consumers`, as JSON (every column, whatever the version).
async fn consumer_row(db: &Client, name: &str) -> Result<Value, Failure> {
    db.query_opt("SELECT to_jsonb(c) FROM eventq.consumers c WHERE c.name = $1", &[&name])
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("consumer \"{name}\" does not exist (or this role may not see it)"),
            )
        })
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

const STATES: [&str; 6] =
    ["available", "waiting", "running", "retryable", "completed", "discarded"];

/// The per-state counts of a task consumer, each linking to the tasks in that state.
fn counts(name: &str, c: &Value) -> String {
    let mut out = String::from("<table id=\"counts\"><tr>");
    for s in STATES.iter().chain(["expired", "lag"].iter()) {
        out.push_str(&format!("<th>{s}</th>"));
    }
    out.push_str("</tr><tr>");
    for s in STATES {
        out.push_str(&format!(
            "<td class=\"n\" data-state=\"{s}\"><a href=\"/consumers/{}?state={s}\">{}</a></td>",
            url(name),
            show(&c[s])
        ));
    }
    out.push_str(&format!(
        "<td class=\"n\" data-state=\"expired\">{}</td><td class=\"n\" data-state=\"lag\">{}</td></tr></table>",
        show(&c["expired"]),
        show(&c["lag"])
    ));
    out
}

pub async fn consumer(
    State(app): State<Shared>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Page {
    let db = app.pool.get().await?;
    let c = consumer_row(&db, &name).await?;
    if c["mode"] == "log" {
        return log_consumer(&app, &db, &name, &c, &params).await;
    }
    if params.fragment.as_deref() == Some("counts") {
        return Ok(Html(counts(&name, &c)));
    }
    let paused = c["paused"] == Value::Bool(true);
    let mut body = format!(
        "<h1>Consumer {} {}</h1>{}<p>Stream <a href=\"/events?stream={}\">{}</a> · subjects {} · exclude {} · \
         ordering {} · max attempts {} · backoff {} from {} to {} · lease {}{}</p>",
        esc(&name),
        if paused { "<span class=\"badge paused\" id=\"paused\">paused</span>" } else { "" },
        notice(&params),
        url(&show(&c["stream"])),
        esc(&show(&c["stream"])),
        esc(&show(&c["subjects"])),
        esc(&show(&c["exclude"])),
        esc(&show(&c["ordering"])),
        esc(&show(&c["max_attempts"])),
        esc(&show(&c["backoff"])),
        esc(&show(&c["backoff_base"])),
        esc(&show(&c["backoff_max"])),
        esc(&show(&c["lease"])),
        match c.get("sequence") {
            Some(Value::Array(s)) if !s.is_empty() => format!(
                " · sequence {} (timeout {})",
                esc(&show(&c["sequence"])),
                esc(&match show(&c["sequence_timeout"]) {
                    t if t.is_empty() => "none".to_string(),
                    t => t,
                })
            ),
            _ => String::new(),
        }
    );
    body.push_str(&format!(
        "<div data-refresh=\"/consumers/{}?fragment=counts\" data-every=\"{}\">{}</div>",
        url(&name),
        app.refresh_ms,
        counts(&name, &c)
    ));
    if !app.read_only {
        let (verb, question) = if paused { ("resume", "Resume") } else { ("pause", "Pause") };
        body.push_str(&format!(
            "<form class=\"inline\" method=\"post\" action=\"/consumers/{n}/actions\" data-confirm=\"{question} {e}?\">\
             {t}<input type=\"hidden\" name=\"action\" value=\"{verb}\"><button id=\"{verb}\">{question}</button></form>\
             <form class=\"inline\" method=\"post\" action=\"/consumers/{n}/actions\" \
             data-confirm=\"Redrive every discarded task of {e}?\">{t}\
             <input type=\"hidden\" name=\"action\" value=\"redrive-all\"><button id=\"redrive-all\">Redrive all discarded</button></form>",
            n = url(&name),
            e = esc(&name),
            t = form_token(&app),
        ));
    }
    if c["ordering"] == "key" {
        body.push_str(&blocked_keys(&db, &name).await?);
    }
    body.push_str(&tasks(&app, &db, &name, &params).await?);
    Ok(Html(page(&format!("Consumer {name}"), app.read_only, &body)))
}

/// Keys whose tasks wait, the most first, with what holds each: its task in flight, or
/// the consumer's sequence. One pass over the consumer's unfinished tasks.
async fn blocked_keys(db: &Client, name: &str) -> Result<String, Failure> {
    let rows = db
        .query(
            "SELECT key,
                    count(*) FILTER (WHERE state = 'waiting') AS waiting,
                    min(task_id) FILTER (WHERE state = 'waiting'),
                    min(format('task %s (%s, attempt %s)', task_id, state, attempt))
                        FILTER (WHERE state IN ('available', 'running', 'retryable'))
             FROM eventq.tasks
             WHERE consumer = $1 AND state IN ('waiting', 'available', 'running', 'retryable')
               AND key IS NOT NULL
             GROUP BY key
             HAVING count(*) FILTER (WHERE state = 'waiting') > 0
             ORDER BY waiting DESC, key LIMIT 20",
            &[&name],
        )
        .await?;
    let t = Table {
        headers: vec!["key", "waiting", "oldest waiting task", "held by"],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.get::<_, Option<String>>(0).unwrap_or_default(),
                    r.get::<_, i64>(1).to_string(),
                    r.get::<_, Option<i64>>(2).map(|t| t.to_string()).unwrap_or_default(),
                    r.get::<_, Option<String>>(3)
                        .unwrap_or_else(|| "its sequence (earlier subjects not finished)".into()),
                ]
            })
            .collect(),
    };
    Ok(format!(
        "<h2>Blocked keys</h2>{}",
        table(&t, "blocked-keys", |i, row| match i {
            0 => Some(format!("/consumers/{}?key={}", url(name), url(&row[0]))),
            2 => Some(format!("/consumers/{}/tasks/{}", url(name), row[2])),
            _ => None,
        })
    ))
}

/// The newest tasks that match the filter, selectable for the bulk actions.
async fn tasks(
    app: &super::App,
    db: &Client,
    name: &str,
    params: &Params,
) -> Result<String, Failure> {
    let (state, key, subject) = (given(&params.state), given(&params.key), given(&params.subject));
    let rows = db
        .query(
            "SELECT task_id, subject, coalesce(key, ''), state, attempt,
                    coalesce(to_char(run_at, 'YYYY-MM-DD HH24:MI:SS.MS'), ''),
                    coalesce(to_char(lease_until, 'YYYY-MM-DD HH24:MI:SS.MS'), ''),
                    coalesce(last_error, '')
             FROM eventq.tasks
             WHERE consumer = $1 AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR key = $3)
               AND ($4::text IS NULL OR eventq.subject_matches($4, subject))
             ORDER BY task_id DESC LIMIT 100",
            &[&name, &state, &key, &subject],
        )
        .await?;
    let options: String = std::iter::once("")
        .chain(STATES)
        .map(|s| {
            let selected = if state.as_deref() == Some(s) { " selected" } else { "" };
            format!(
                "<option value=\"{s}\"{selected}>{}</option>",
                if s.is_empty() { "any" } else { s }
            )
        })
        .collect();
    let mut out = format!(
        "<h2>Tasks</h2><form method=\"get\" id=\"filter\"><label>state <select name=\"state\">{options}</select></label>\
         <label>key <input type=\"text\" name=\"key\" value=\"{}\"></label>\
         <label>subject <input type=\"text\" name=\"subject\" placeholder=\"order.>\" value=\"{}\"></label>\
         <button>Filter</button></form>",
        esc(key.as_deref().unwrap_or("")),
        esc(subject.as_deref().unwrap_or("")),
    );
    let selectable = !app.read_only;
    if selectable {
        out.push_str(&format!(
            "<form method=\"post\" action=\"/consumers/{}/actions\" id=\"selected\" \
             data-confirm=\"Apply this to the selected tasks?\">{}",
            url(name),
            form_token(app)
        ));
    }
    out.push_str("<table id=\"tasks\"><thead><tr>");
    if selectable {
        out.push_str("<th></th>");
    }
    for h in ["task", "subject", "key", "state", "attempt", "run at", "lease until", "last error"] {
        out.push_str(&format!("<th>{h}</th>"));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"muted\">none</td></tr>");
    }
    for r in &rows {
        let id: i64 = r.get(0);
        out.push_str(&format!("<tr data-task=\"{id}\">"));
        if selectable {
            out.push_str(&format!(
                "<td><input type=\"checkbox\" name=\"task_id\" value=\"{id}\"></td>"
            ));
        }
        out.push_str(&format!(
            "<td class=\"n\"><a href=\"/consumers/{}/tasks/{id}\">{id}</a></td><td>{}</td><td>{}</td>\
             <td data-column=\"state\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            url(name),
            esc(&r.get::<_, String>(1)),
            esc(&r.get::<_, String>(2)),
            esc(&r.get::<_, String>(3)),
            r.get::<_, i32>(4),
            esc(&r.get::<_, String>(5)),
            esc(&r.get::<_, String>(6)),
            esc(&r.get::<_, String>(7)),
        ));
    }
    out.push_str("</tbody></table>");
    if selectable {
        out.push_str(
            "<button name=\"action\" value=\"retry-now\" id=\"retry-now\">Retry now</button>\
             <button name=\"action\" value=\"redrive\" id=\"redrive\">Redrive</button>\
             <button name=\"action\" value=\"discard\" id=\"discard\">Discard</button>\
             <span class=\"muted\">Retry now: retryable tasks become available at once. \
             Redrive: discarded tasks start over. Discard: tasks not yet finished end as discarded.</span></form>",
        );
    }
    Ok(out)
}

pub async fn task(
    State(app): State<Shared>,
    Path((name, id)): Path<(String, i64)>,
    Query(params): Query<Params>,
) -> Page {
    let db = app.pool.get().await?;
    let t = db
        .query_opt(
            "SELECT to_jsonb(t) FROM eventq.tasks t WHERE t.consumer = $1 AND t.task_id = $2",
            &[&name, &id],
        )
        .await?
        .map(|r| r.get::<_, Value>(0))
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("consumer \"{name}\" has no task {id} (or this role may not see it)"),
            )
        })?;
    let event = db
        .query_opt(
            "SELECT e.stream, e.seq, e.payload, e.headers, e.published_at::text FROM eventq.events e
             WHERE e.event_id = $1::text::uuid",
            &[&show(&t["event_id"])],
        )
        .await?;
    let attempts = db
        .query(
            "SELECT attempt, outcome, coalesce(error, ''), coalesce(started_at::text, ''), coalesce(finished_at::text, '')
             FROM eventq.attempts WHERE consumer = $1 AND task_id = $2
             ORDER BY attempt, started_at NULLS FIRST",
            &[&name, &id],
        )
        .await?;
    let timeline = Table {
        headers: vec!["attempt", "outcome", "error", "started", "finished"],
        rows: attempts
            .iter()
            .map(|r| vec![r.get::<_, i32>(0).to_string(), r.get(1), r.get(2), r.get(3), r.get(4)])
            .collect(),
    };
    let fields = [
        "state",
        "attempt",
        "subject",
        "key",
        "run_at",
        "lease_until",
        "last_error",
        "created_at",
        "started_at",
        "finished_at",
    ];
    let details: String = fields
        .iter()
        .map(|f| format!("<tr><th>{f}</th><td data-field=\"{f}\">{}</td></tr>", esc(&show(&t[*f]))))
        .collect();
    let mut body = format!(
        "<h1>Task {id} of <a href=\"/consumers/{}\">{}</a></h1>{}<table id=\"task\">{details}</table>",
        url(&name),
        esc(&name),
        notice(&params)
    );
    if !app.read_only {
        let state = show(&t["state"]);
        let mut buttons = Vec::new();
        if state == "retryable" {
            buttons.push(("retry-now", "Retry now"));
        }
        if state == "discarded" {
            buttons.push(("redrive", "Redrive"));
        }
        if !matches!(state.as_str(), "completed" | "discarded") {
            buttons.push(("discard", "Discard"));
        }
        for (action, label) in buttons {
            body.push_str(&format!(
                "<form class=\"inline\" method=\"post\" action=\"/consumers/{n}/actions\" data-confirm=\"{label} task {id}?\">\
                 {t}<input type=\"hidden\" name=\"action\" value=\"{action}\"><input type=\"hidden\" name=\"task_id\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"back\" value=\"task\"><button id=\"{action}\">{label}</button></form>",
                n = url(&name),
                t = form_token(&app),
            ));
        }
    }
    body.push_str(&format!("<h2>Attempts</h2>{}", table(&timeline, "attempts", |_, _| None)));
    match event {
        Some(e) => {
            let pretty = |v: Option<Value>| {
                v.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()).unwrap_or_default()
            };
            body.push_str(&format!(
                "<h2>Event <a href=\"/events/{}/{}\">{} #{}</a>, published {}</h2><h2>Payload</h2><pre id=\"payload\">{}</pre><h2>Headers</h2><pre>{}</pre>",
                url(&e.get::<_, String>(0)),
                e.get::<_, i64>(1),
                esc(&e.get::<_, String>(0)),
                e.get::<_, i64>(1),
                esc(&e.get::<_, String>(4)),
                esc(&pretty(e.get(2))),
                esc(&pretty(e.get(3))),
            ));
        }
        None => body.push_str("<p class=\"muted\">Its event is no longer retained.</p>"),
    }
    Ok(Html(page(&format!("Task {id}"), app.read_only, &body)))
}

/// A log consumer: its cursor and lag, and seeking, with a preview of what a seek replays.
async fn log_consumer(
    app: &super::App,
    db: &Client,
    name: &str,
    c: &Value,
    params: &Params,
) -> Page {
    let stream = show(&c["stream"]);
    let cursor: i64 = c["cursor_seq"].as_i64().unwrap_or(0);
    let mut body = format!(
        "<h1>Log consumer {}</h1>{}<table id=\"log\"><tr><th>stream</th><td><a href=\"/events?stream={}\">{}</a></td></tr>\
         <tr><th>cursor</th><td data-field=\"cursor\">{cursor}</td></tr>\
         <tr><th>lag</th><td data-field=\"lag\">{}</td></tr><tr><th>oldest unread</th><td>{}</td></tr>\
         <tr><th>subjects</th><td>{}</td></tr><tr><th>exclude</th><td>{}</td></tr></table>",
        esc(name),
        notice(params),
        url(&stream),
        esc(&stream),
        esc(&show(&c["lag"])),
        esc(&show(&c["oldest_due_age"])),
        esc(&show(&c["subjects"])),
        esc(&show(&c["exclude"])),
    );
    let (preview_seq, preview_at) = (given(&params.preview_seq), given(&params.preview_at));
    body.push_str(&format!(
        "<h2>Seek</h2><form method=\"get\" id=\"preview\"><label>to seq <input type=\"text\" name=\"preview_seq\" value=\"{}\"></label>\
         <label>or to time <input type=\"text\" name=\"preview_at\" placeholder=\"2026-11-27 10:00\" value=\"{}\"></label>\
         <button>Preview</button></form>",
        esc(preview_seq.as_deref().unwrap_or("")),
        esc(preview_at.as_deref().unwrap_or("")),
    ));
    if preview_seq.is_some() || preview_at.is_some() {
        // where the cursor would go: the seq given, or just below the first event published
        // at or after the time (as `seek(consumer, at)` places it)
        let target: i64 = db
            .query_one(
                "SELECT CASE WHEN $2::text IS NOT NULL THEN $2::text::bigint
                        ELSE coalesce((SELECT min(seq) - 1 FROM eventq.events
                                       WHERE stream = $1 AND published_at >= $3::text::timestamptz
                                         AND published_at > '-infinity'),
                                      (SELECT coalesce(max(seq), 0) FROM eventq.events WHERE stream = $1)) END",
                &[&stream, &preview_seq, &preview_at],
            )
            .await?
            .get(0);
        let selected = "FROM eventq.events e, eventq.consumers c
             WHERE c.name = $1 AND e.stream = c.stream
               AND EXISTS (SELECT 1 FROM unnest(c.subjects) p WHERE eventq.subject_matches(p, e.subject))
               AND NOT EXISTS (SELECT 1 FROM unnest(c.exclude) p WHERE eventq.subject_matches(p, e.subject))
               AND (c.start_at IS NULL OR e.published_at >= c.start_at)";
        let counts = db
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE e.seq > $2 AND e.seq <= $3),
                            count(*) FILTER (WHERE e.seq > $2),
                            count(*) FILTER (WHERE e.seq > $3 AND e.seq <= $2) {selected}"
                ),
                &[&name, &target, &cursor],
            )
            .await?;
        let (again, delivered, skipped): (i64, i64, i64) =
            (counts.get(0), counts.get(1), counts.get(2));
        let first = db
            .query(
                &format!(
                    "SELECT e.seq::text, e.subject, coalesce(e.key, ''), e.published_at::text {selected}
                       AND e.seq > $2 ORDER BY e.seq LIMIT 20"
                ),
                &[&name, &target],
            )
            .await?;
        let t = Table {
            headers: vec!["seq", "subject", "key", "published"],
            rows: first.iter().map(|r| vec![r.get(0), r.get(1), r.get(2), r.get(3)]).collect(),
        };
        body.push_str(&format!(
            "<p id=\"seek-preview\">The cursor would move from {cursor} to <b>{target}</b>: the next fetches deliver \
             <b data-field=\"replayed\">{delivered}</b> events, <b data-field=\"again\">{again}</b> of them read before; \
             <b data-field=\"skipped\">{skipped}</b> unread events would be skipped.</p>{}",
            table(&t, "replay", |i, row| (i == 0).then(|| format!("/events/{}/{}", url(&stream), row[0])))
        ));
        if !app.read_only {
            body.push_str(&format!(
                "<form method=\"post\" action=\"/consumers/{}/seek\" data-confirm=\"Move the cursor of {} to {target}?\">{}\
                 <input type=\"hidden\" name=\"{}\" value=\"{}\"><button id=\"seek\">Seek to {target}</button></form>",
                url(name),
                esc(name),
                form_token(app),
                // by time, the seek is `seek(consumer, at)` itself
                if preview_seq.is_some() { "seq" } else { "at" },
                esc(&preview_seq.clone().or(preview_at.clone()).unwrap_or_default()),
            ));
        }
    }
    Ok(Html(page(&format!("Log consumer {name}"), app.read_only, &body)))
}

pub async fn events(State(app): State<Shared>, Query(params): Query<Params>) -> Page {
    let db = app.pool.get().await?;
    let (stream, subject, key, id, since, until) = (
        given(&params.stream),
        given(&params.subject),
        given(&params.key),
        given(&params.id),
        given(&params.since),
        given(&params.until),
    );
    // The newest first, by seq (commit order). Looked for among the newest 10 000 events,
    // then the newest million, then all: a page of a busy log must not sort all of it.
    let head: Option<i64> = db
        .query_one(
            "SELECT max(head_seq) FROM eventq.streams WHERE ($1::text IS NULL OR name = $1)",
            &[&stream],
        )
        .await?
        .get(0);
    let mut rows = Vec::new();
    for window in [Some(10_000i64), Some(1_000_000), None] {
        let after: Option<i64> = match (head, window) {
            (Some(head), Some(w)) if head > w => Some(head - w),
            (_, Some(_)) => continue,
            (_, None) => None,
        };
        rows = db
            .query(
                &format!(
                    "SELECT stream, seq, event_id::text, subject, coalesce(key, ''),
                            to_char(published_at, 'YYYY-MM-DD HH24:MI:SS.MS'), left(payload::text, 100)
                     FROM eventq.events
                     WHERE ($1::text IS NULL OR stream = $1)
                       AND ($2::text IS NULL OR eventq.subject_matches($2, subject))
                       AND ($3::text IS NULL OR key = $3)
                       AND ($4::text IS NULL OR event_id = $4::text::uuid)
                       AND ($5::text IS NULL OR published_at >= $5::text::timestamptz)
                       AND ($6::text IS NULL OR published_at < $6::text::timestamptz)
                       {}
                     ORDER BY seq DESC LIMIT 50",
                    if after.is_some() { "AND seq > $7" } else { "AND $7::bigint IS NULL" }
                ),
                &[&stream, &subject, &key, &id, &since, &until, &after],
            )
            .await?;
        if rows.len() >= 50 {
            break;
        }
    }
    let t = Table {
        headers: vec!["stream", "seq", "event id", "subject", "key", "published", "payload"],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.get(0),
                    r.get::<_, i64>(1).to_string(),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                ]
            })
            .collect(),
    };
    let field = |label: &str, name: &str, value: &Option<String>, hint: &str| {
        format!(
            "<label>{label} <input type=\"text\" name=\"{name}\" placeholder=\"{hint}\" value=\"{}\"></label>",
            esc(value.as_deref().unwrap_or(""))
        )
    };
    let body = format!(
        "<h1>Events</h1><form method=\"get\" id=\"search\">{}{}{}{}{}{}<button>Search</button></form>\
         <p class=\"muted\">The newest 50 that match.</p>{}",
        field("stream", "stream", &stream, "orders"),
        field("subject", "subject", &subject, "order.>"),
        field("key", "key", &key, ""),
        field("id", "id", &id, "event id"),
        field("since", "since", &since, "2026-11-27 10:00"),
        field("until", "until", &until, ""),
        table(&t, "events", |i, row| (i == 1).then(|| format!("/events/{}/{}", url(&row[0]), row[1]))),
    );
    Ok(Html(page("Events", app.read_only, &body)))
}

pub async fn event(State(app): State<Shared>, Path((stream, seq)): Path<(String, i64)>) -> Page {
    let db = app.pool.get().await?;
    let e = db
        .query_opt(
            "SELECT event_id::text, subject, coalesce(key, ''), payload, headers, published_at::text,
                    coalesce(deliver_at::text, '')
             FROM eventq.events WHERE stream = $1 AND seq = $2",
            &[&stream, &seq],
        )
        .await?
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("stream \"{stream}\" has no event {seq} (or this role may not see it)")))?;
    let tasks = db
        .query(
            "SELECT t.consumer, t.task_id::text, t.state, t.attempt::text, coalesce(t.last_error, ''),
                    coalesce(t.finished_at::text, '')
             FROM eventq.tasks t
             WHERE t.task_id = $2 AND t.consumer IN (SELECT name FROM eventq.consumers WHERE stream = $1)
             ORDER BY t.consumer",
            &[&stream, &seq],
        )
        .await?;
    let t = Table {
        headers: vec!["consumer", "task", "state", "attempt", "last error", "finished"],
        rows: tasks.iter().map(|r| (0..6).map(|i| r.get::<_, String>(i)).collect()).collect(),
    };
    let pretty = |v: Option<Value>| {
        v.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()).unwrap_or_default()
    };
    let body = format!(
        "<h1>Event {} #{seq}</h1><table id=\"event\"><tr><th>id</th><td>{}</td></tr><tr><th>subject</th><td>{}</td></tr>\
         <tr><th>key</th><td>{}</td></tr><tr><th>published</th><td>{}</td></tr><tr><th>deliver at</th><td>{}</td></tr></table>\
         <h2>Payload</h2><pre id=\"payload\">{}</pre><h2>Headers</h2><pre>{}</pre><h2>Tasks</h2>{}",
        esc(&stream),
        esc(&e.get::<_, String>(0)),
        esc(&e.get::<_, String>(1)),
        esc(&e.get::<_, String>(2)),
        esc(&e.get::<_, String>(5)),
        esc(&e.get::<_, String>(6)),
        esc(&pretty(e.get(3))),
        esc(&pretty(e.get(4))),
        table(&t, "tasks", |i, row| match i {
            0 => Some(format!("/consumers/{}", url(&row[0]))),
            1 => Some(format!("/consumers/{}/tasks/{}", url(&row[0]), row[1])),
            _ => None,
        }),
    );
    Ok(Html(page(&format!("Event {seq}"), app.read_only, &body)))
}
