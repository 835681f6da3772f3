//! HTTP publishing: `POST /api/streams/{stream}/events` with one event (a JSON object) or a
//! batch (an array of them), published under the console's role in one transaction.
//!
//! An event: `{"subject": "order.created", "payload": {...}, "key": "...", "headers": {...}}`,
//! and for a single event also `"dedup_key"` and `"deliver_at"`. Answers 201 with `{"id"}`
//! or `{"ids": [...]}`; errors are `{"error", "sqlstate"}` with a status from eventq's
//! SQLSTATE: 404 unknown stream, 422 invalid subject or payload, 403 no privilege, 503 when
//! trying again may work; 401 without the bearer token when `EVENTQ_TOKEN` is set, 415
//! for a body not sent as `application/json`.

use super::{status_of, Failure, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The most events one request may carry.
const MAX_BATCH: usize = 10_000;

fn error(status: StatusCode, message: impl Into<String>, sqlstate: Option<&str>) -> Response {
    (status, Json(json!({"error": message.into(), "sqlstate": sqlstate}))).into_response()
}

impl Failure {
    fn into_json(self) -> Response {
        let status = match &self.sqlstate {
            Some(code) => status_of(code),
            None => self.status,
        };
        error(status, self.message, self.sqlstate.as_deref())
    }
}

/// Whether the request carries the token (compared in constant time).
fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    super::same_secret(given, expected)
}

/// JSON only: a page of another origin cannot post it without a preflight, which is not
/// answered.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

#[derive(Debug)]
struct Event {
    subject: String,
    payload: Value,
    key: Option<String>,
    headers: Option<Value>,
    dedup_key: Option<String>,
    deliver_at: Option<String>,
}

fn event(v: &Value, at: &str) -> Result<Event, String> {
    let Some(fields) = v.as_object() else {
        return Err(format!("{at}: an event is a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|k| {
        !["subject", "payload", "key", "headers", "dedup_key", "deliver_at"].contains(&k.as_str())
    }) {
        return Err(format!("{at}: unknown field \"{unknown}\""));
    }
    let text = |name: &str| -> Result<Option<String>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{at}: \"{name}\" must be a string")),
        }
    };
    Ok(Event {
        subject: text("subject")?.ok_or_else(|| format!("{at}: \"subject\" is required"))?,
        payload: fields.get("payload").cloned().unwrap_or_else(|| json!({})),
        key: text("key")?,
        headers: fields.get("headers").cloned().filter(|h| !h.is_null()),
        dedup_key: text("dedup_key")?,
        deliver_at: text("deliver_at")?,
    })
}

pub async fn publish(
    State(app): State<Shared>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &app.api_token {
        if !authorized(token, &headers) {
            return error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer …)",
                None,
            );
        }
    }
    if app.read_only {
        return error(StatusCode::FORBIDDEN, "the console is read-only", None);
    }
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the event as Content-Type: application/json",
            None,
        );
    }
    let document: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"), None)
        }
    };
    let result = match &document {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("a batch has 1 to {MAX_BATCH} events"),
                    None,
                );
            }
            let mut events = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match event(item, &format!("event {i}")) {
                    Ok(e) if e.dedup_key.is_some() || e.deliver_at.is_some() => {
                        return error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("event {i}: dedup_key and deliver_at are for single events"),
                            None,
                        )
                    }
                    Ok(e) => events.push(e),
                    Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, message, None),
                }
            }
            publish_batch(&app, &stream, events).await.map(|ids| json!({"ids": ids}))
        }
        single => match event(single, "the event") {
            Ok(e) => publish_one(&app, &stream, e).await.map(|id| json!({"id": id})),
            Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, message, None),
        },
    };
    match result {
        Ok(answer) => (StatusCode::CREATED, Json(answer)).into_response(),
        Err(failure) => failure.into_json(),
    }
}

async fn publish_one(app: &super::App, stream: &str, e: Event) -> Result<String, Failure> {
    let db = app.pool.get().await?;
    let row = db
        .query_one(
            "SELECT eventq.publish($1, $2, $3::jsonb, key => $4, headers => $5::jsonb,
                                   deliver_at => $6::text::timestamptz, dedup_key => $7)::text",
            &[&stream, &e.subject, &e.payload, &e.key, &e.headers, &e.deliver_at, &e.dedup_key],
        )
        .await?;
    Ok(row.get(0))
}

async fn publish_batch(
    app: &super::App,
    stream: &str,
    events: Vec<Event>,
) -> Result<Vec<String>, Failure> {
    let db = app.pool.get().await?;
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
    let keys: Vec<Option<&str>> = events.iter().map(|e| e.key.as_deref()).collect();
    let headers: Vec<Option<&Value>> = events.iter().map(|e| e.headers.as_ref()).collect();
    let rows = db
        .query(
            "SELECT id::text FROM eventq.publish_batch($1, $2::text[], $3::jsonb[], $4::text[], $5::jsonb[]) AS id",
            &[&stream, &subjects, &payloads, &keys, &headers],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorized("s3cret", &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized("s3cret", &h));
        assert!(!authorized("s3cre", &h));
        h.insert(header::AUTHORIZATION, "Bearer s3creT".parse().unwrap());
        assert!(!authorized("s3cret", &h));
    }

    #[test]
    fn events_need_a_subject_and_known_fields() {
        assert!(event(&json!({"subject": "a.b"}), "e").is_ok());
        assert!(event(&json!({"payload": {}}), "e").unwrap_err().contains("subject"));
        assert!(event(&json!({"subject": "a", "colour": 1}), "e").unwrap_err().contains("colour"));
        assert!(event(&json!({"subject": 1}), "e").unwrap_err().contains("string"));
        assert!(event(&json!([1]), "e").is_err());
    }

    #[test]
    fn sqlstates_map_to_statuses() {
        assert_eq!(status_of("42704"), StatusCode::NOT_FOUND);
        assert_eq!(status_of("22023"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status_of("42501"), StatusCode::FORBIDDEN);
        assert_eq!(status_of("XX000"), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
