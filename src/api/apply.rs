//! `apply(spec, dry_run)`: declarative setup for migrations and infrastructure as code.
//!
//! What to change is worked out in `core::spec`; the changes are made by calling eventq's
//! own functions, as the caller and with the caller's privileges (this function never
//! switches to the storage's owner), and what exists now is read through the views, which
//! show the caller what it may see. So `apply` can do nothing its caller could not do by
//! hand, and a dry run, which makes every change in a subtransaction and rolls it back,
//! fails exactly where the real run would. Names are resolved in `pg_catalog` only, as in
//! every other function (see `access`).

use super::required;
use crate::core::spec::{ConsumerNow, Current, Param, Spec, StreamNow};
use crate::error::OrRaise;
use crate::storage::{arg, isolation};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::json;
use std::collections::HashMap;

fn micros_sql(column: &str) -> String {
    format!("(pg_catalog.date_part('epoch', {column}) * 1000000)::bigint")
}

/// The length of each interval the spec writes, as Postgres reads it.
fn lengths(client: &SpiClient<'_>, texts: Vec<String>) -> HashMap<String, i64> {
    let sql =
        format!("SELECT t, {} FROM pg_catalog.unnest($1::text[]) t", micros_sql("t::interval"));
    client
        .select(&sql, None, &[arg(texts)])
        .or_raise()
        .filter_map(|row| Some((row.get::<String>(1).ok()??, row.get::<i64>(2).ok()??)))
        .collect()
}

fn current(client: &SpiClient<'_>, spec: &Spec) -> Current {
    let streams: Vec<String> = spec.streams.iter().map(|s| s.name.clone()).collect();
    let consumers: Vec<String> = spec.consumers.iter().map(|c| c.name.clone()).collect();
    let mut now = Current::default();
    let sql = format!(
        "SELECT name, {} FROM eventq.streams WHERE name = ANY ($1::text[])",
        micros_sql("retention")
    );
    for row in client.select(&sql, None, &[arg(streams)]).or_raise() {
        now.streams.push(StreamNow {
            name: row.get(1).ok().flatten().unwrap_or_default(),
            retention: row.get(2).ok().flatten(),
        });
    }
    let sql = format!(
        "SELECT name, stream, mode::text, subjects::text[], exclude::text[], ordering::text,
                max_attempts, backoff::text, {}, {}, {}, paused, sequence, {}
         FROM eventq.consumers WHERE name = ANY ($1::text[])",
        micros_sql("backoff_base"),
        micros_sql("backoff_max"),
        micros_sql("lease"),
        micros_sql("sequence_timeout")
    );
    for row in client.select(&sql, None, &[arg(consumers)]).or_raise() {
        now.consumers.push(ConsumerNow {
            name: row.get(1).ok().flatten().unwrap_or_default(),
            stream: row.get(2).ok().flatten().unwrap_or_default(),
            mode: row.get(3).ok().flatten().unwrap_or_default(),
            subjects: row.get(4).ok().flatten().unwrap_or_default(),
            exclude: row.get(5).ok().flatten().unwrap_or_default(),
            ordering: row.get(6).ok().flatten().unwrap_or_default(),
            max_attempts: row.get(7).ok().flatten().unwrap_or_default(),
            backoff: row.get(8).ok().flatten().unwrap_or_default(),
            backoff_base: row.get(9).ok().flatten().unwrap_or_default(),
            backoff_max: row.get(10).ok().flatten().unwrap_or_default(),
            lease: row.get(11).ok().flatten().unwrap_or_default(),
            paused: row.get(12).ok().flatten().unwrap_or_default(),
            sequence: row.get(13).ok().flatten(),
            sequence_timeout: row.get(14).ok().flatten(),
        });
    }
    if !spec.grants.is_empty() {
        for row in client
            .select("SELECT privilege, stream, role, subjects FROM eventq.grants", None, &[])
            .or_raise()
        {
            now.grants.push(crate::core::spec::GrantSpec {
                privilege: row.get(1).ok().flatten().unwrap_or_default(),
                stream: row.get(2).ok().flatten().unwrap_or_default(),
                role: row.get(3).ok().flatten().unwrap_or_default(),
                subjects: row.get(4).ok().flatten(),
                absent: false,
            });
        }
    }
    now
}

fn param(p: Param) -> DatumWithOid<'static> {
    match p {
        Param::Text(t) => arg(t),
        Param::TextArray(a) => arg(a),
    }
}

/// Creates or alters the streams, consumers and grants `spec` describes so that they match
/// it (see core::spec for the document), and returns what changed: `{"dry_run": ...,
/// "changes": [...]}`. With `dry_run` nothing is kept.
#[pg_extern]
fn apply(spec: Option<JsonB>, dry_run: default!(Option<bool>, false)) -> JsonB {
    let _path = super::access::pin_search_path();
    super::check_installed_version();
    let document = required(spec, "spec").0;
    let spec = Spec::parse(&document).or_raise();
    let dry_run = dry_run.unwrap_or(false);
    let changes = Spi::connect_mut(|client| {
        let lengths = lengths(client, spec.intervals());
        let now = current(client, &spec);
        let changes =
            spec.changes(&now, &|text| lengths.get(text).copied().unwrap_or(0)).or_raise();
        let mut make = || {
            for change in &changes {
                let (sql, params) = change.call();
                let args: Vec<DatumWithOid> = params.into_iter().map(param).collect();
                client.update(&sql, None, &args).or_raise();
            }
        };
        if dry_run {
            isolation::rolled_back(make);
        } else {
            make();
        }
        changes
    });
    JsonB(json!({
        "dry_run": dry_run,
        "changes": changes.iter().map(|c| c.describe()).collect::<Vec<_>>(),
    }))
}
