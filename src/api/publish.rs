//! publish, publish_batch: one row per event in the caller's transaction.

use super::required;
use crate::core::settings::{BackoffKind, EventRetry};
use crate::core::subject::validate_subject;
use crate::core::ulid::IdSource;
use crate::datum::{Jsonb, JsonbArray, TextArray};
use crate::error::{self, OrRaise};
use crate::storage::append::{self, Staged};
use crate::storage::isolation::retrying;
use crate::storage::publish::{self, Batch, Deduplicated, Event, Retry};
use crate::wakeup;
use pgrx::datum::{Interval, TimestampWithTimeZone, Uuid};
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

/// Payload and headers together must fit `eventq.max_payload_size`: one huge event must
/// not take the drain's and every worker's memory with it. Measured uncompressed, as
/// Postgres would have to hold it.
fn check_size(payload: Jsonb, headers: Option<Jsonb>, what: &str) {
    let limit = crate::gucs::max_payload_bytes();
    let size = payload.raw_size() + headers.map_or(0, Jsonb::raw_size);
    if size > limit {
        error::invalid_argument(format!(
            "{what} is {}, more than eventq.max_payload_size ({}): payload and headers together must fit",
            human_bytes(size),
            human_bytes(limit)
        ));
    }
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / (1 << 10) as f64),
        b => format!("{b} bytes"),
    }
}

fn check_headers(headers: Option<Jsonb>, what: &str) {
    if headers.is_some_and(|h| !h.is_object()) {
        error::invalid_argument(format!("{what} must be a JSON object or NULL"));
    }
}

/// An event's own retry settings, checked: they override each consumer's for its tasks.
fn event_retry(
    max_attempts: Option<i32>,
    backoff: Option<&str>,
    backoff_base: Option<Interval>,
) -> Retry {
    let base_micros = super::duration_micros(backoff_base, "backoff_base");
    let kind = backoff.map(|b| BackoffKind::parse(b).or_raise());
    EventRetry { max_attempts, backoff: kind, backoff_base: base_micros }.validate().or_raise();
    Retry { max_attempts, backoff: kind.map(BackoffKind::as_str), backoff_base }
}

/// Publishes one event; returns its id. The event exists if and only if the calling
/// transaction commits. With `dedup_key`, publishing a key the stream still retains returns
/// the first event's id and adds nothing. `max_attempts`, `backoff` and `backoff_base`
/// override every consumer's retry policy for this event's tasks.
#[pg_extern(name = "publish")]
#[allow(clippy::too_many_arguments)]
fn publish_with_retry(
    stream: Option<&str>,
    subject: Option<&str>,
    payload: default!(Option<Jsonb>, "'{}'"),
    key: default!(Option<&str>, "NULL"),
    headers: default!(Option<Jsonb>, "NULL"),
    deliver_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    dedup_key: default!(Option<&str>, "NULL"),
    max_attempts: default!(Option<i32>, "NULL"),
    backoff: default!(Option<&str>, "NULL"),
    backoff_base: default!(Option<Interval>, "NULL"),
) -> Uuid {
    let call = super::access::enter();
    check_writable(c"publish()");
    let stream = required(stream, "stream");
    let subject = required(subject, "subject");
    validate_subject(subject).or_raise();
    let payload = required(payload, "payload");
    check_headers(headers, "headers");
    check_size(payload, headers, "the event");
    check_key(key, "key");
    check_key(dedup_key, "dedup_key");
    check_deliver_at(deliver_at);
    let retry = event_retry(max_attempts, backoff, backoff_base);
    let stream_id = append::stream_id(stream).unwrap_or_else(|| error::unknown_stream(stream));
    call.require_publish(stream_id, stream, [subject]);
    let id = next_ids(1)[0];
    let id = match dedup_key {
        None => {
            append::append(Staged {
                id,
                stream_id,
                subject,
                key,
                payload,
                headers,
                deliver_at,
                retry,
            });
            id
        }
        Some(dedup_key) => retrying(|| {
            Spi::connect(|client| {
                let event = Event {
                    id,
                    subject: subject.to_string(),
                    payload,
                    key: key.map(str::to_string),
                    headers,
                    deliver_at,
                    retry,
                };
                match publish::insert_dedup(client, stream_id, event, dedup_key) {
                    Deduplicated::Published => id,
                    Deduplicated::AlreadyPublished(first) => first,
                }
            })
        }),
    };
    wakeup::published_in_this_transaction();
    id
}

/// Publishes `subjects[i]` with `payloads[i]` (and `keys[i]`, `headers[i]` when given) for
/// every i; returns the ids in input order. The retry settings apply to the whole batch.
#[pg_extern(name = "publish_batch")]
fn publish_batch_with_retry(
    stream: Option<&str>,
    subjects: Option<TextArray>,
    payloads: Option<JsonbArray>,
    keys: default!(Option<TextArray>, "NULL"),
    headers: default!(Option<JsonbArray>, "NULL"),
    max_attempts: default!(Option<i32>, "NULL"),
    backoff: default!(Option<&str>, "NULL"),
    backoff_base: default!(Option<Interval>, "NULL"),
) -> SetOfIterator<'static, Uuid> {
    let call = super::access::enter();
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
    let subject_texts: Vec<String> = subjects
        .elements()
        .into_iter()
        .enumerate()
        .map(|(i, subject)| {
            let subject = subject
                .unwrap_or_else(|| error::invalid_argument(format!("subjects[{}] is NULL", i + 1)));
            validate_subject(&subject).or_raise();
            subject
        })
        .collect();
    let header_values = headers.map(JsonbArray::elements).unwrap_or_else(|| vec![None; n]);
    for (i, h) in header_values.iter().enumerate() {
        check_headers(*h, &format!("headers[{}]", i + 1));
    }
    for (i, (payload, headers)) in payloads.elements().into_iter().zip(&header_values).enumerate() {
        let payload = payload
            .unwrap_or_else(|| error::invalid_argument(format!("payloads[{}] is NULL", i + 1)));
        check_size(payload, *headers, &format!("event {} of the batch", i + 1));
    }
    if let Some(keys) = keys {
        for (i, k) in keys.elements().into_iter().enumerate() {
            check_key(k.as_deref(), &format!("keys[{}]", i + 1));
        }
    }
    let retry = event_retry(max_attempts, backoff, backoff_base);
    let stream_id = append::stream_id(stream).unwrap_or_else(|| error::unknown_stream(stream));
    call.require_publish(stream_id, stream, subject_texts.iter().map(String::as_str));

    let ids = next_ids(n);
    let batch = Batch { ids: ids.clone(), subjects, payloads, keys, headers, retry };
    Spi::connect(|client| publish::insert_batch(client, stream_id, batch));
    if n > 0 {
        wakeup::published_in_this_transaction();
    }
    SetOfIterator::new(ids)
}

// The entry points the SQL of version 0.1.0 calls, by these symbol names and with these
// arguments, until the database runs ALTER EXTENSION eventq UPDATE (see api::task).

#[pg_extern(sql = false)]
fn publish(
    stream: Option<&str>,
    subject: Option<&str>,
    payload: Option<Jsonb>,
    key: Option<&str>,
    headers: Option<Jsonb>,
    deliver_at: Option<TimestampWithTimeZone>,
    dedup_key: Option<&str>,
) -> Uuid {
    publish_with_retry(
        stream, subject, payload, key, headers, deliver_at, dedup_key, None, None, None,
    )
}

#[pg_extern(sql = false)]
fn publish_batch(
    stream: Option<&str>,
    subjects: Option<TextArray>,
    payloads: Option<JsonbArray>,
    keys: Option<TextArray>,
    headers: Option<JsonbArray>,
) -> SetOfIterator<'static, Uuid> {
    publish_batch_with_retry(stream, subjects, payloads, keys, headers, None, None, None)
}
