//! The console's actions: each one call of eventq's SQL API, under the connecting role's
//! privileges, then back to the page with what it did.

use super::{Failure, Shared};
use crate::html::url;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// A posted form: its fields in order (`task_id` may repeat).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// Refuses in read-only mode and without the form's token.
fn allowed(app: &super::App, form: &Form) -> Result<(), Failure> {
    if app.read_only {
        return Err(Failure::new(StatusCode::FORBIDDEN, "the console is read-only"));
    }
    if !super::same_secret(form.get("token").unwrap_or(""), &app.form_token) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the form is stale or from elsewhere: reload the page",
        ));
    }
    Ok(())
}

fn back_to(location: String) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

pub async fn consumer_action(
    State(app): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    allowed(&app, &form)?;
    let ids: Vec<i64> = form
        .all("task_id")
        .iter()
        .map(|id| {
            id.parse::<i64>().map_err(|_| {
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, format!("not a task id: {id}"))
            })
        })
        .collect::<Result<_, _>>()?;
    let action = form.get("action").unwrap_or("");
    let needs_tasks = matches!(action, "retry-now" | "redrive" | "discard");
    if needs_tasks && ids.is_empty() {
        return Ok(back_to(format!(
            "/consumers/{}?notice={}",
            url(&name),
            url("Select tasks first.")
        )));
    }
    let db = app.pool.get().await?;
    let notice = match action {
        "pause" => {
            db.execute("SELECT eventq.pause_consumer($1)", &[&name]).await?;
            "Paused: pulls return nothing until it is resumed.".to_string()
        }
        "resume" => {
            db.execute("SELECT eventq.resume_consumer($1)", &[&name]).await?;
            "Resumed.".to_string()
        }
        "redrive-all" => {
            let n: i32 = db.query_one("SELECT eventq.redrive($1)", &[&name]).await?.get(0);
            format!("Redrove {n} discarded tasks.")
        }
        "redrive" => {
            let n: i32 = db
                .query_one("SELECT eventq.redrive($1, $2::bigint[])", &[&name, &ids])
                .await?
                .get(0);
            format!(
                "Redrove {n} of {} selected tasks (only discarded tasks are redriven).",
                ids.len()
            )
        }
        "retry-now" => {
            let n: i32 = db
                .query_one("SELECT eventq.retry_now($1, $2::bigint[])", &[&name, &ids])
                .await?
                .get(0);
            format!("{n} of {} selected tasks are due now (only retryable tasks are).", ids.len())
        }
        "discard" => {
            let n: i32 = db
                .query_one(
                    "SELECT eventq.cancel($1, $2::bigint[], 'discarded from the console')",
                    &[&name, &ids],
                )
                .await?
                .get(0);
            format!("Discarded {n} of {} selected tasks (finished and waiting tasks are left as they are).", ids.len())
        }
        other => {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("unknown action \"{other}\""),
            ))
        }
    };
    let page = match (form.get("back"), ids.as_slice()) {
        (Some("task"), [id]) => format!("/consumers/{}/tasks/{id}", url(&name)),
        _ => format!("/consumers/{}", url(&name)),
    };
    Ok(back_to(format!("{page}?notice={}", url(&notice))))
}

pub async fn seek(
    State(app): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    allowed(&app, &form)?;
    let db = app.pool.get().await?;
    let (seq, at) = (form.get("seq").map(str::trim), form.get("at").map(str::trim));
    match (seq, at) {
        (Some(seq), _) => {
            let seq: i64 = seq.parse().map_err(|_| {
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, format!("not a seq: {seq}"))
            })?;
            db.execute("SELECT eventq.seek($1, $2::bigint)", &[&name, &seq]).await?;
        }
        (None, Some(at)) => {
            db.execute("SELECT eventq.seek($1, $2::text::timestamptz)", &[&name, &at]).await?;
        }
        (None, None) => {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "seek needs a seq or a time",
            ))
        }
    }
    let cursor: i64 = db
        .query_one("SELECT cursor_seq FROM eventq.consumers WHERE name = $1", &[&name])
        .await?
        .get(0);
    Ok(back_to(format!(
        "/consumers/{}?notice={}",
        url(&name),
        url(&format!("The cursor is at {cursor}."))
    )))
}
