//! The publisher's path: one row into staging per event, in the caller's transaction.
//! Nothing here waits for, or works for, consumers: that is the drain's job. A plain
//! `publish` takes the fast path in `append`; these statements serve publishes with a
//! dedup key (which need the dedup table's unique index) and batches.

pub use super::append::Retry;
use super::{
    append, arg, Statement, BIGINT, INT, INTERVAL, JSONB, JSONB_ARRAY, SMALLINT, TEXT, TEXT_ARRAY,
    TIMESTAMPTZ, UUID, UUID_ARRAY,
};
use crate::datum::{Jsonb, JsonbArray, TextArray};
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

#[derive(Clone)]
pub struct Event {
    pub id: Uuid,
    pub subject: String,
    pub payload: Jsonb,
    pub key: Option<String>,
    pub headers: Option<Jsonb>,
    pub deliver_at: Option<TimestampWithTimeZone>,
    pub retry: Retry,
}

// With a dedup key the event is staged only if this transaction claims the key. A
// concurrent publisher of the same key makes ON CONFLICT wait for its transaction; if that
// commits, nothing is claimed here and the caller looks the first id up with a new snapshot.
static INSERT_DEDUP: Statement = Statement::new(
    "WITH claimed AS (
         INSERT INTO eventq_internal.dedup (stream_id, dedup_key, event_id)
         VALUES ($1, $8, $2)
         ON CONFLICT (stream_id, dedup_key) DO NOTHING
         RETURNING stream_id
     ), staged AS (
         INSERT INTO eventq_internal.staged
             (slot, xid, id, stream_id, subject, key, payload, headers, deliver_at, origin,
              max_attempts, backoff, backoff_base)
         SELECT $9, pg_catalog.pg_current_xact_id(), $2, stream_id, $3, $4, $5, $6, $7, $10,
                $11, $12, $13
         FROM claimed
         RETURNING stream_id
     )
     SELECT EXISTS (SELECT 1 FROM staged)",
    &[
        INT,
        UUID,
        TEXT,
        TEXT,
        JSONB,
        JSONB,
        TIMESTAMPTZ,
        TEXT,
        SMALLINT,
        BIGINT,
        INT,
        TEXT,
        INTERVAL,
    ],
);

static DEDUP_FIRST: Statement = Statement::new(
    "SELECT event_id FROM eventq_internal.dedup WHERE stream_id = $1 AND dedup_key = $2",
    &[INT, TEXT],
);

pub enum Deduplicated {
    Published,
    AlreadyPublished(Uuid),
}

pub fn insert_dedup(
    client: &SpiClient<'_>,
    stream_id: i32,
    e: Event,
    dedup_key: &str,
) -> Deduplicated {
    let published = super::scalar::<bool>(
        &INSERT_DEDUP,
        client,
        &[
            arg(stream_id),
            arg(e.id),
            arg(e.subject.clone()),
            arg(e.key.clone()),
            arg(e.payload),
            arg(e.headers),
            arg(e.deliver_at),
            arg(dedup_key),
            arg(append::current_slot() as i16),
            arg(append::origin()),
            arg(e.retry.max_attempts),
            arg(e.retry.backoff),
            arg(e.retry.backoff_base),
        ],
    );
    if published.unwrap_or(false) {
        return Deduplicated::Published;
    }
    match super::scalar::<Uuid>(&DEDUP_FIRST, client, &[arg(stream_id), arg(dedup_key)]) {
        Some(first) => Deduplicated::AlreadyPublished(first),
        // The claim vanished between the two statements (its event expired and retention
        // removed it): the key is free again.
        None => insert_dedup(client, stream_id, e, dedup_key),
    }
}

pub struct Batch {
    pub ids: Vec<Uuid>,
    pub subjects: TextArray,
    pub payloads: JsonbArray,
    pub keys: Option<TextArray>,
    pub headers: Option<JsonbArray>,
    pub retry: Retry,
}

static INSERT_BATCH: Statement = Statement::new(
    "INSERT INTO eventq_internal.staged
         (slot, xid, id, stream_id, subject, key, payload, headers, origin,
          max_attempts, backoff, backoff_base)
     SELECT $7, pg_catalog.pg_current_xact_id(), u.id, $1, u.subject, u.key, u.payload,
            u.headers, $8, $9, $10, $11
     FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::jsonb[])
            AS u(id, subject, payload, key, headers)",
    &[
        INT,
        UUID_ARRAY,
        TEXT_ARRAY,
        JSONB_ARRAY,
        TEXT_ARRAY,
        JSONB_ARRAY,
        SMALLINT,
        BIGINT,
        INT,
        TEXT,
        INTERVAL,
    ],
);

/// Stages the batch's events (the stream exists: the caller looked it up).
pub fn insert_batch(client: &SpiClient<'_>, stream_id: i32, b: Batch) {
    if b.ids.is_empty() {
        return;
    }
    INSERT_BATCH.run(
        client,
        &[
            arg(stream_id),
            arg(b.ids),
            arg(b.subjects),
            arg(b.payloads),
            arg(b.keys),
            arg(b.headers),
            arg(append::current_slot() as i16),
            arg(append::origin()),
            arg(b.retry.max_attempts),
            arg(b.retry.backoff),
            arg(b.retry.backoff_base),
        ],
    );
}
