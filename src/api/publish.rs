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
    let stream_id = append::stream_id(stream).unwrap_or_else(|| error::unknown_stream(stream));
    call.require_publish(stream_id, stream, [subject]);
    let id = next_ids(1)[0];
    let id = match dedup_key {
        None => {
            append::append(Staged { id, stream_id, subject, key, payload, headers, deliver_at });
            id
        }
        Some(dedup_key) => retrying(|| Spi::connect(|client| {
            let event = Event {
                id,
                subject: subject.to_string(),
                payload,
                key: key.map(str::to_string),
                headers,
                deliver_at,
            };
            match publish::insert_dedup(client, stream_id, event, dedup_key) {
                Deduplicated::Published => id,
                Deduplicated::AlreadyPublished(first) => first,
            }
        })),
    };
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
    let stream_id = append::stream_id(stream).unwrap_or_else(|| error::unknown_stream(stream));
    call.require_publish(stream_id, stream, subject_texts.iter().map(String::as_str));

    let ids = next_ids(n);
    let batch = Batch { ids: ids.clone(), subjects, payloads, keys, headers };
    Spi::connect(|client| publish::insert_batch(client, stream_id, batch));
    if n > 0 {
        wakeup::published_in_this_transaction();
    }
    SetOfIterator::new(ids)
}
