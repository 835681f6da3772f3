//! publish, publish_batch: one row per event in the caller's transaction.

use super::required;
use crate::core::subject::validate_subject;
use crate::core::ulid::IdSource;
use crate::datum::{Jsonb, JsonbArray, TextArray};
use crate::error::{self, OrRaise};
use crate::storage::append::{self, Staged};
use crate::storage::isolation::retrying;
use crate::storage::publish::{self, Batch, Deduplicated, Event};
use crate::wakeup;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// One id source per backend, so ids increase across calls (see core::ulid).
    static IDS: RefCell<IdSource> = RefCell::new(IdSource::default());
}

fn next_ids(n: usize) -> Vec<Uuid> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        (0..n).map(|_| Uuid::from_bytes(ids.next_id())).collect()
    })
}

/// The longest ordering key or dedup key: they are indexed, and a btree entry must fit in
/// a third of a page.
pub const MAX_KEY_BYTES: usize = 1024;

fn check_key(key: Option<&str>, what: &str) {
    if key.is_some_and(|k| k.len() > MAX_KEY_BYTES) {
        error::invalid_argument(format!("{what} must be at most {MAX_KEY_BYTES} bytes"));
    }
}

/// Publishing writes: refused in a read-only transaction and on a standby, as any write is.
fn check_writable(call: &std::ffi::CStr) {
    unsafe { pgrx::pg_sys::PreventCommandIfReadOnly(call.as_ptr()) };
}

fn check_deliver_at(deliver_at: Option<TimestampWithTimeZone>) {
    if deliver_at.is_some_and(|d| !d.is_finite()) {
        error::invalid_argument("deliver_at must be a finite time (NULL delivers at once)");
    }
}

fn check_headers(headers: Option<Jsonb>, what: &str) {
    if headers.is_some_and(|h| !h.is_object()) {
        error::invalid_argument(format!("{what} must be a JSON object or NULL"));
    }
}

/// Publishes one event; returns its id. The event exists if and only if the calling
/// transaction commits. With `dedup_key`, publishing a key the stream still retains returns
/// the first event's id and adds nothing.
#[pg_extern]
fn publish(
    stream: Option<&str>,
    subject: Option<&str>,
    payload: default!(Option<Jsonb>, "'{}'"),
    key: default!(Option<&str>, "NULL"),
    headers: default!(Option<Jsonb>, "NULL"),
    deliver_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    dedup_key: default!(Option<&str>, "NULL"),
) -> Uuid {
    super::check_installed_version();
    check_writable(c"publish()");
    let stream = required(stream, "stream");
    let subject = required(subject, "subject");
    validate_subject(subject).or_raise();
    let payload = required(payload, "payload");
    check_headers(headers, "headers");
    check_key(key, "key");
    check_key(dedup_key, "dedup_key");
    check_deliver_at(deliver_at);
    let id = next_ids(1)[0];
    let published = match dedup_key {
        None => append::stream_id(stream).map(|stream_id| {
            append::append(Staged { id, stream_id, subject, key, payload, headers, deliver_at });
            id
        }),
        Some(dedup_key) => retrying(|| Spi::connect(|client| {
            let event = Event {
                id,
                subject: subject.to_string(),
                payload,
                key: key.map(str::to_string),
                headers,
                deliver_at,
            };
            match publish::insert_dedup(client, stream, event, dedup_key) {
                Deduplicated::NoStream => None,
                Deduplicated::Published => Some(id),
                Deduplicated::AlreadyPublished(first) => Some(first),
            }
        })),
    };
    let id = published.unwrap_or_else(|| error::unknown_stream(stream));
    wakeup::published_in_this_transaction();
    id
}

/// Publishes `subjects[i]` with `payloads[i]` (and `keys[i]`, `headers[i]` when given) for
/// every i; returns the ids in input order.
#[pg_extern]
fn publish_batch(
    stream: Option<&str>,
    subjects: Option<TextArray>,
    payloads: Option<JsonbArray>,
    keys: default!(Option<TextArray>, "NULL"),
    headers: default!(Option<JsonbArray>, "NULL"),
) -> SetOfIterator<'static, Uuid> {
    super::check_installed_version();
    check_writable(c"publish_batch()");
    let stream = required(stream, "stream");
    let subjects = required(subjects, "subjects");
    let payloads = required(payloads, "payloads");

    let n = subjects.shape().len;
    let lengths = [
        ("subjects", Some(subjects.shape())),
        ("payloads", Some(payloads.shape())),
        ("keys", keys.map(TextArray::shape)),
        ("headers", headers.map(JsonbArray::shape)),
    ];
    for (what, shape) in lengths {
        let Some(shape) = shape else { continue };
        if shape.dimensions > 1 {
            error::invalid_argument(format!("{what} must be a one-dimensional array"));
        }
        if shape.len != n {
            error::invalid_argument(format!(
                "subjects, payloads, keys and headers must have the same length: subjects has {n}, {what} has {}",
                shape.len
            ));
        }
    }
    for (i, subject) in subjects.elements().into_iter().enumerate() {
        let subject = subject
            .unwrap_or_else(|| error::invalid_argument(format!("subjects[{}] is NULL", i + 1)));
        validate_subject(&subject).or_raise();
    }
    if let Some(i) = payloads.elements().iter().position(Option::is_none) {
        error::invalid_argument(format!("payloads[{}] is NULL", i + 1));
    }
    if let Some(headers) = headers {
        for (i, h) in headers.elements().into_iter().enumerate() {
            check_headers(h, &format!("headers[{}]", i + 1));
        }
    }
    if let Some(keys) = keys {
        for (i, k) in keys.elements().into_iter().enumerate() {
            check_key(k.as_deref(), &format!("keys[{}]", i + 1));
        }
    }

    let ids = next_ids(n);
    let batch = Batch { ids: ids.clone(), subjects, payloads, keys, headers };
    if !Spi::connect(|client| publish::insert_batch(client, stream, batch)) {
        error::unknown_stream(stream);
    }
    if n > 0 {
        wakeup::published_in_this_transaction();
    }
    SetOfIterator::new(ids)
}
