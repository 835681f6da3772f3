//! create_consumer, alter_consumer, pause_consumer, resume_consumer, drop_consumer.

use super::{micros, required};
use crate::core::names::{validate_name, Kind};
use crate::core::settings::{self, BackoffKind, KeyOrdering, Mode, RetryPolicy};
use crate::core::subject::Filter;
use crate::error::{self, OrRaise};
use crate::storage::consumers::{self, Changes, Consumer, NewConsumer};
use crate::storage::isolation::retrying;
use crate::storage::keys;
use crate::storage::streams;
use crate::wakeup;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

fn patterns(list: Vec<Option<String>>, what: &str) -> Vec<String> {
    crate::core::subject::pattern_list(list, what).or_raise()
}

fn check_policy(
    max_attempts: i32,
    backoff: BackoffKind,
    base: Interval,
    max: Interval,
    lease: Interval,
) {
    RetryPolicy {
        max_attempts,
        backoff,
        backoff_base: micros(base),
        backoff_max: micros(max),
        lease: micros(lease),
    }
    .validate()
    .or_raise();
}

/// `start_at` as stored on the consumer: only events published at or after it reach it.
/// '-infinity' means no limit; infinity is refused (nothing would ever arrive).
fn start_limit(start_at: TimestampWithTimeZone) -> Option<TimestampWithTimeZone> {
    if start_at.is_infinity() {
        error::invalid_argument(
            "start_at must not be infinity: NULL starts after the log's head, '-infinity' with every retained event",
        );
    }
    (!start_at.is_neg_infinity()).then_some(start_at)
}

/// Gives the consumer the retained events published at or after `start_at`: a task
/// consumer gets them (again) as tasks, a log consumer's cursor moves before them.
fn start_from(client: &SpiClient<'_>, consumer: &Consumer, start_at: TimestampWithTimeZone) {
    match consumer.mode {
        Mode::Task => {
            consumers::replay(client, consumer, start_at);
        }
        Mode::Log => {
            let position = consumers::position_at(client, consumer.stream_id, start_at);
            consumers::set_cursor(client, consumer.id, position);
        }
    }
}

/// Creates a consumer of a stream. A task consumer gets one task per matching event; a log
/// consumer reads the stream with a cursor. NULL for any setting means its default.
/// `start_at` NULL: the events after the log's head when the consumer is created;
/// `'-infinity'`: every retained event and every later one; a time: the retained and later
/// events published at or after it (also when that time is still to come).
/// `sequence` (with `ordering => 'key'`): for each key, a task whose subject is listed waits
/// until the subjects listed before it have been completed or discarded for that key, or,
/// with `sequence_timeout`, until it has waited that long.
#[pg_extern(name = "create_consumer")]
#[allow(clippy::too_many_arguments)]
fn create_consumer_with_sequence(
    name: Option<&str>,
    stream: Option<&str>,
    subjects: default!(Option<Vec<Option<String>>>, "'{>}'"),
    exclude: default!(Option<Vec<Option<String>>>, "'{}'"),
    mode: default!(Option<&str>, "'task'"),
    ordering: default!(Option<&str>, "'none'"),
    max_attempts: default!(Option<i32>, 10),
    backoff: default!(Option<&str>, "'exponential'"),
    backoff_base: default!(Option<Interval>, "'1 second'"),
    backoff_max: default!(Option<Interval>, "'1 hour'"),
    lease: default!(Option<Interval>, "'30 seconds'"),
    start_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    sequence: default!(Option<Vec<Option<String>>>, "NULL"),
    sequence_timeout: default!(Option<Interval>, "NULL"),
) {
    let call = super::access::enter();
    let name = required(name, "name");
    let stream = required(stream, "stream");
    validate_name(Kind::Consumer, name).or_raise();
    let subjects = patterns(subjects.unwrap_or_else(|| vec![Some(">".into())]), "subjects");
    let exclude = patterns(exclude.unwrap_or_default(), "exclude");
    let filter = Filter::parse(&subjects, &exclude).or_raise();
    let mode = Mode::parse(mode.unwrap_or("task")).or_raise();
    let ordering = KeyOrdering::parse(ordering.unwrap_or("none")).or_raise();
    let backoff = BackoffKind::parse(backoff.unwrap_or("exponential")).or_raise();
    let backoff_base = backoff_base.unwrap_or_else(|| Interval::from_seconds(1.0));
    let backoff_max = backoff_max.unwrap_or_else(|| Interval::from_hours(1));
    let lease = lease.unwrap_or_else(|| Interval::from_seconds(30.0));
    let max_attempts = max_attempts.unwrap_or(10);
    check_policy(max_attempts, backoff, backoff_base, backoff_max, lease);
    let limit = start_at.and_then(start_limit);
    let sequence = settings::sequence(sequence.unwrap_or_default(), ordering).or_raise();
    check_sequence_timeout(sequence.is_some(), sequence_timeout);

    retrying(|| {
        Spi::connect(|client| {
            let stream_id =
                streams::find(client, stream).unwrap_or_else(|| error::unknown_stream(stream));
            call.require_new_consumer(stream_id, stream, name, &filter);
            let stream_id = streams::find_and_hold(client, stream)
                .filter(|&held| held == stream_id)
                .unwrap_or_else(|| error::unknown_stream(stream));
            let created = consumers::insert(
                client,
                NewConsumer {
                    name,
                    stream_id,
                    mode,
                    include_re: filter.include_regex(),
                    exclude_re: filter.exclude_regex(),
                    subjects: subjects.clone(),
                    exclude: exclude.clone(),
                    ordering,
                    max_attempts,
                    backoff,
                    backoff_base,
                    backoff_max,
                    lease,
                    start_at: limit,
                    owner: call.caller(),
                    sequence: sequence.clone(),
                    sequence_timeout,
                },
            );
            if created.is_none() {
                error::duplicate("consumer", name);
            }
            if let Some(start_at) = start_at {
                let consumer =
                    consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
                start_from(client, &consumer, start_at);
            }
        })
    });
    // The first drain after the commit fills in what drains meanwhile could not give it.
    wakeup::published_in_this_transaction();
}

/// Changes a consumer's settings; NULL leaves a setting as it is. `start_at` replays: a task
/// consumer gets every retained event published at or after it delivered again (tasks it
/// has not finished stay as they are; finished ones start over with a fresh attempt
/// budget), a log consumer's cursor moves before them; and from then on, only events
/// published at or after it reach the consumer. The mode cannot change. Drains route
/// around the consumer until this transaction ends, then give it what they held back.
/// `sequence => '{}'` removes the sequence (and its timeout); a new sequence applies to
/// every task not yet in flight.
#[pg_extern(name = "alter_consumer")]
#[allow(clippy::too_many_arguments)]
fn alter_consumer_with_sequence(
    name: Option<&str>,
    subjects: default!(Option<Vec<Option<String>>>, "NULL"),
    exclude: default!(Option<Vec<Option<String>>>, "NULL"),
    mode: default!(Option<&str>, "NULL"),
    ordering: default!(Option<&str>, "NULL"),
    max_attempts: default!(Option<i32>, "NULL"),
    backoff: default!(Option<&str>, "NULL"),
    backoff_base: default!(Option<Interval>, "NULL"),
    backoff_max: default!(Option<Interval>, "NULL"),
    lease: default!(Option<Interval>, "NULL"),
    start_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    sequence: default!(Option<Vec<Option<String>>>, "NULL"),
    sequence_timeout: default!(Option<Interval>, "NULL"),
) {
    let call = super::access::enter();
    let name = required(name, "name");
    let mode = mode.map(|m| Mode::parse(m).or_raise());
    let ordering = ordering.map(|o| KeyOrdering::parse(o).or_raise());
    let backoff = backoff.map(|b| BackoffKind::parse(b).or_raise());
    let subjects = subjects.map(|s| patterns(s, "subjects"));
    let exclude = exclude.map(|s| patterns(s, "exclude"));
    let limit = start_at.map(start_limit);

    retrying(|| {
        Spi::connect(|client| {
            let new_filter = |id: i32| {
                if subjects.is_none() && exclude.is_none() {
                    return None;
                }
                let (old_subjects, old_exclude) = consumers::patterns(client, id);
                Some(
                    Filter::parse(
                        subjects.as_ref().unwrap_or(&old_subjects),
                        exclude.as_ref().unwrap_or(&old_exclude),
                    )
                    .or_raise(),
                )
            };
            // Privileges first: a role that may not change it must not take its lock either.
            let seen =
                consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
            call.require_consumer(client, &seen, name, new_filter(seen.id).as_ref());
            let current = consumers::find_for_change(client, name)
                .unwrap_or_else(|| error::unknown_consumer(name));
            let new_filter = new_filter(current.id);
            if current.id != seen.id {
                call.require_consumer(client, &current, name, new_filter.as_ref());
            }
            if mode.is_some_and(|m| m != current.mode) {
                error::invalid_argument(format!(
                "the mode of consumer \"{name}\" cannot change; drop it and create a {} consumer",
                mode.map(Mode::as_str).unwrap_or_default()
            ));
            }
            let final_ordering = ordering.unwrap_or(current.ordering);
            let new_sequence =
                sequence.clone().map(|list| settings::sequence(list, final_ordering).or_raise());
            let final_sequence = new_sequence.clone().unwrap_or_else(|| current.sequence.clone());
            if final_sequence.is_some() && final_ordering != KeyOrdering::Key {
                error::invalid_argument(format!(
                "consumer \"{name}\" has a sequence, which needs ordering => 'key': remove it with sequence => '{{}}'"
            ));
            }
            if sequence_timeout.is_some() {
                check_sequence_timeout(final_sequence.is_some(), sequence_timeout);
            }
            let p = current.policy;
            let merged = RetryPolicy {
                max_attempts: max_attempts.unwrap_or(p.max_attempts),
                backoff: backoff.unwrap_or(p.backoff),
                backoff_base: backoff_base.map(micros).unwrap_or(p.backoff_base),
                backoff_max: backoff_max.map(micros).unwrap_or(p.backoff_max),
                lease: lease.map(micros).unwrap_or(p.lease),
            };
            merged.validate().or_raise();
            let regexes = new_filter.as_ref().map(|f| (f.include_regex(), f.exclude_regex()));
            consumers::update(
                client,
                current.id,
                Changes {
                    subjects: subjects.clone(),
                    exclude: exclude.clone(),
                    regexes,
                    ordering,
                    max_attempts,
                    backoff,
                    backoff_base,
                    backoff_max,
                    lease,
                    start_at: limit,
                    sequence: new_sequence.clone(),
                    sequence_timeout,
                },
            );
            if current.mode == Mode::Task {
                match (current.ordering, ordering) {
                    (KeyOrdering::Key, Some(KeyOrdering::None)) => {
                        consumers::forget_key_order(client, current.id)
                    }
                    (KeyOrdering::None, Some(KeyOrdering::Key)) => {
                        consumers::order_by_key(client, current.id)
                    }
                    _ => {}
                }
                let sequence_changed =
                    new_sequence.as_ref().is_some_and(|s| *s != current.sequence);
                if final_ordering == KeyOrdering::Key
                    && (sequence_changed || sequence_timeout.is_some())
                {
                    keys::resequence(
                        client,
                        current.id,
                        sequence_changed.then(|| current.sequence.clone()),
                    );
                }
            }
            if let Some(start_at) = start_at {
                let changed =
                    consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
                start_from(client, &changed, start_at);
            }
        })
    });
    wakeup::published_in_this_transaction();
}

fn check_sequence_timeout(has_sequence: bool, timeout: Option<Interval>) {
    if timeout.is_some() && !has_sequence {
        error::invalid_argument("sequence_timeout needs a sequence");
    }
    super::duration_micros(timeout, "sequence_timeout");
}

// The entry points the SQL of version 0.1.0 calls, by these symbol names and with these
// arguments, until the database runs ALTER EXTENSION eventq UPDATE (see api::task).

#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn create_consumer(
    name: Option<&str>,
    stream: Option<&str>,
    subjects: Option<Vec<Option<String>>>,
    exclude: Option<Vec<Option<String>>>,
    mode: Option<&str>,
    ordering: Option<&str>,
    max_attempts: Option<i32>,
    backoff: Option<&str>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
    lease: Option<Interval>,
    start_at: Option<TimestampWithTimeZone>,
) {
    create_consumer_with_sequence(
        name,
        stream,
        subjects,
        exclude,
        mode,
        ordering,
        max_attempts,
        backoff,
        backoff_base,
        backoff_max,
        lease,
        start_at,
        None,
        None,
    )
}

#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn alter_consumer(
    name: Option<&str>,
    subjects: Option<Vec<Option<String>>>,
    exclude: Option<Vec<Option<String>>>,
    mode: Option<&str>,
    ordering: Option<&str>,
    max_attempts: Option<i32>,
    backoff: Option<&str>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
    lease: Option<Interval>,
    start_at: Option<TimestampWithTimeZone>,
) {
    alter_consumer_with_sequence(
        name,
        subjects,
        exclude,
        mode,
        ordering,
        max_attempts,
        backoff,
        backoff_base,
        backoff_max,
        lease,
        start_at,
        None,
        None,
    )
}

/// While paused, pull and fetch return nothing; tasks keep accumulating.
#[pg_extern]
fn pause_consumer(name: Option<&str>) {
    set_paused(name, true)
}

#[pg_extern]
fn resume_consumer(name: Option<&str>) {
    set_paused(name, false)
}

fn set_paused(name: Option<&str>, paused: bool) {
    let call = super::access::enter();
    let name = required(name, "name");
    retrying(|| {
        Spi::connect(|client| {
            let seen =
                consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
            call.require_consumer(client, &seen, name, None);
            let c = consumers::find_for_change(client, name)
                .unwrap_or_else(|| error::unknown_consumer(name));
            if c.id != seen.id {
                call.require_consumer(client, &c, name, None);
            }
            consumers::set_paused(client, name, paused);
        })
    })
}

/// Drops a consumer with its tasks and their history.
#[pg_extern]
fn drop_consumer(name: Option<&str>) {
    let call = super::access::enter();
    let name = required(name, "name");
    retrying(|| {
        Spi::connect(|client| {
            let seen =
                consumers::find(client, name).unwrap_or_else(|| error::unknown_consumer(name));
            call.require_consumer(client, &seen, name, None);
            let c = consumers::find_for_change(client, name)
                .unwrap_or_else(|| error::unknown_consumer(name));
            if c.id != seen.id {
                call.require_consumer(client, &c, name, None);
            }
            consumers::delete(client, c.id);
        })
    })
}
