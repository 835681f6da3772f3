//! create_stream, alter_stream, drop_stream; newest_events.

use super::{duration_micros, required};
use crate::core::names::{validate_name, Kind};
use crate::core::settings::batch_size;
use crate::datum::Jsonb;
use crate::error::{self, OrRaise};
use crate::storage::{log, streams};
use pgrx::datum::{Interval, TimestampWithTimeZone, Uuid};
use pgrx::prelude::*;

fn check_retention(retention: Option<Interval>) {
    duration_micros(retention, "retention");
}

/// Creates a stream. `retention` NULL keeps events forever.
#[pg_extern]
fn create_stream(
    name: Option<&str>,
    retention: default!(Option<Interval>, "'7 days'"),
    if_not_exists: default!(Option<bool>, false),
) {
    let call = super::access::enter();
    let name = required(name, "name");
    validate_name(Kind::Stream, name).or_raise();
    check_retention(retention);
    call.require_admin("create streams");
    Spi::connect(|client| {
        if streams::insert(client, name, retention).is_none() && !if_not_exists.unwrap_or(false) {
            error::duplicate("stream", name);
        }
    })
}

/// Changes how long a stream keeps its events (NULL: forever).
#[pg_extern]
fn alter_stream(name: Option<&str>, retention: Option<Interval>) {
    let call = super::access::enter();
    let name = required(name, "name");
    check_retention(retention);
    call.require_admin("alter streams");
    Spi::connect(|client| {
        if !streams::set_retention(client, name, retention) {
            error::unknown_stream(name);
        }
    })
}

/// Drops a stream with its events. Refused while consumers read it, unless `force`, which
/// drops those consumers and their tasks too.
#[pg_extern]
fn drop_stream(name: Option<&str>, force: default!(Option<bool>, false)) {
    let call = super::access::enter();
    let name = required(name, "name");
    call.require_admin("drop streams");
    Spi::connect(|client| {
        let id = streams::find(client, name).unwrap_or_else(|| error::unknown_stream(name));
        let consumers = streams::consumers(client, id);
        if !consumers.is_empty() && !force.unwrap_or(false) {
            let names: Vec<String> = consumers.into_iter().map(|(_, name)| name).collect();
            error::stream_has_consumers(name, &names);
        }
        streams::delete(client, id, &consumers);
    });
    super::access::grants_changed();
}

const MAX_LISTED: i32 = 100_000;

/// A stream's newest events, highest `seq` first, below `before` when given (the lowest
/// `seq` of the previous page): the rows of `eventq.events` that the caller may see, read
/// from the end of the log. `eventq.events … ORDER BY seq DESC LIMIT n` must read every
/// event of the stream first (0.4–0.7 s at 1M events): the view is a security barrier, so
/// Postgres plans it apart from the reader's ORDER BY and LIMIT, and sorts. Like the view,
/// it reads what is drained, in the caller's snapshot (a REPEATABLE READ transaction pages
/// through the log as it was when it began), writes nothing, and works in read-only
/// transactions and on standbys. Privileges are the ones committed now, as for every
/// function of the API.
// pgrx needs the row type written out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(stable)]
fn newest_events(
    stream: Option<&str>,
    max: default!(Option<i32>, 10),
    before: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(stream, String),
        name!(seq, i64),
        name!(event_id, Uuid),
        name!(subject, String),
        name!(key, Option<String>),
        name!(payload, Jsonb),
        name!(headers, Option<Jsonb>),
        name!(published_at, TimestampWithTimeZone),
        name!(deliver_at, Option<TimestampWithTimeZone>),
    ),
> {
    let call = super::access::enter();
    let name = required(stream, "stream").to_owned();
    let max = batch_size("max", max.unwrap_or(10), MAX_LISTED).or_raise();
    let events = Spi::connect(|client| {
        let id = streams::find(client, &name).unwrap_or_else(|| error::unknown_stream(&name));
        let Some(readable_re) = call.readable_events(id) else {
            error::permission_denied(
                format!(
                    "permission denied to read the events of stream \"{}\"",
                    crate::core::shown(&name)
                ),
                "It needs consume or manage on the stream.",
            );
        };
        log::newest(client, id, before.unwrap_or(i64::MAX), readable_re, max)
    });
    TableIterator::new(events.into_iter().map(move |listed| {
        let e = listed.event;
        (
            name.clone(),
            e.seq,
            e.event_id,
            e.subject,
            e.key,
            e.payload,
            e.headers,
            e.published_at,
            listed.deliver_at,
        )
    }))
}
