//! create_stream, alter_stream, drop_stream.

use super::{duration_micros, required};
use crate::core::names::{validate_name, Kind};
use crate::error::{self, OrRaise};
use crate::storage::streams;
use pgrx::datum::Interval;
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
