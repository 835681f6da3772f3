//! Log consumers: fetch, commit, seek.

use super::{consumer_for, required};
use crate::core::settings::{batch_size, Mode};
use crate::datum::Jsonb;
use crate::error::{self, OrRaise};
use crate::storage::isolation::retrying;
use crate::storage::{consumers, log};
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

const MAX_FETCH: i32 = 100_000;

/// The next `max` matching events after the consumer's cursor, in seq order. Does not move
/// the cursor: call `commit` with the last seq processed.
// pgrx needs the row type written out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern]
fn fetch(
    consumer: Option<&str>,
    max: default!(Option<i32>, 100),
) -> TableIterator<
    'static,
    (
        name!(seq, i64),
        name!(event_id, Uuid),
        name!(subject, String),
        name!(key, Option<String>),
        name!(payload, Jsonb),
        name!(headers, Option<Jsonb>),
        name!(published_at, TimestampWithTimeZone),
    ),
> {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let max = batch_size("max", max.unwrap_or(100), MAX_FETCH).or_raise();
    let nested = super::called_from_a_function();
    let events = retrying(|| {
        Spi::connect(|client| {
            let c = consumer_for(&call, client, name, Mode::Log, "fetch");
            if c.paused {
                return Vec::new();
            }
            super::drain_before_reading(client, c.id, nested);
            log::fetch(
                client,
                c.stream_id,
                c.cursor_seq,
                c.include_re,
                c.exclude_re,
                c.start_at,
                max,
            )
        })
    });
    TableIterator::new(
        events
            .into_iter()
            .map(|e| (e.seq, e.event_id, e.subject, e.key, e.payload, e.headers, e.published_at)),
    )
}

/// For the view `eventq.consumers`: a log consumer's unread events and when the first was
/// published; no row for a consumer the caller does not see. A function of its own, rather
/// than a subquery of the view: as one, the estimated cost of counting a busy stream had
/// Postgres compile every read of the view with JIT (80 ms), task consumers or not. In C,
/// rather than SQL: a view calls its functions as the role reading it, which may not read
/// storage, and SECURITY DEFINER would hide who that role is. Declared in `sql/views.sql`,
/// in the storage schema, beside the view.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn unread(
    consumer_id: i32,
) -> TableIterator<'static, (name!(events, i64), name!(oldest_at, Option<TimestampWithTimeZone>))> {
    let call = super::access::enter();
    let unread = Spi::connect(|client| {
        let c = consumers::find_by_id(client, consumer_id)?;
        (c.mode == Mode::Log && call.sees_consumer(&c)).then(|| log::unread(client, &c))
    });
    TableIterator::new(unread)
}

fn check_position(client: &SpiClient<'_>, seq: i64) {
    let head = log::head(client);
    if !(0..=head).contains(&seq) {
        error::invalid_argument(format!(
            "seq {seq} is not a position in the log: it must be between 0 and {head}, the newest committed seq"
        ));
    }
}

/// Moves the cursor forward to `seq` (the last event processed). A position behind the
/// cursor leaves it unchanged; a position beyond the last drained event is refused.
#[pg_extern]
fn commit(consumer: Option<&str>, seq: Option<i64>) {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let seq = required(seq, "seq");
    Spi::connect(|client| {
        let c = consumer_for(&call, client, name, Mode::Log, "commit");
        check_position(client, seq);
        log::commit(client, c.id, seq);
    })
}

/// Moves the cursor anywhere: the next fetch returns events after `seq`.
#[pg_extern(name = "seek")]
fn seek_to_seq(consumer: Option<&str>, seq: Option<i64>) {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let seq = required(seq, "seq");
    Spi::connect(|client| {
        let c = consumer_for(&call, client, name, Mode::Log, "seek");
        check_position(client, seq);
        consumers::set_cursor(client, c.id, seq);
    })
}

/// Moves the cursor so that the next fetch returns the events published at or after `at`
/// (and possibly some published earlier that committed later: none is skipped).
#[pg_extern(name = "seek")]
fn seek_to_time(consumer: Option<&str>, at: Option<TimestampWithTimeZone>) {
    let call = super::access::enter();
    let name = required(consumer, "consumer");
    let at = required(at, "at");
    Spi::connect(|client| {
        let c = consumer_for(&call, client, name, Mode::Log, "seek");
        let position = consumers::position_at(client, c.stream_id, at);
        consumers::set_cursor(client, c.id, position);
    })
}
