//! The document `eventq.apply(spec)` reads, and the changes that take a database to it.
//!
//! A spec names streams, consumers and grants, as a list of objects with a `name` or as an
//! object keyed by name (grants: a list). What it names is created or altered to match;
//! what it leaves out is left alone, except that `"absent": true` drops a stream or a
//! consumer and revokes a grant. A consumer's settings that the spec leaves out take their
//! defaults, as `create_consumer` would give them, so removing a line from the document
//! undoes it. Two things are operational, not configuration, and change only when written:
//! `paused`, and `start_at` (it applies when the consumer is created; later it would mean a
//! replay). Unknown keys are errors: a misspelt setting must not be silently ignored.
//!
//! Intervals are compared by length, resolved by the caller (the SQL layer casts them as
//! Postgres would); everything else is compared as written.

use super::settings::{
    BackoffKind, KeyOrdering, Mode, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION,
};
use super::Invalid;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Not given: the default of `create_stream`.
    Default,
    /// `null`: events are kept until their stream is dropped.
    Forever,
    Interval(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub retention: Retention,
    pub absent: bool,
    /// With `absent`: drop the stream with its consumers.
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: String,
    pub stream: Option<String>,
    pub mode: Option<String>,
    pub subjects: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub ordering: Option<String>,
    pub max_attempts: Option<i32>,
    pub backoff: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub lease: Option<String>,
    pub start_at: Option<String>,
    pub paused: Option<bool>,
    pub sequence: Option<Vec<String>>,
    pub sequence_timeout: Option<String>,
    pub absent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub privilege: String,
    pub stream: String,
    pub role: String,
    pub subjects: Option<Vec<String>>,
    pub absent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub streams: Vec<StreamSpec>,
    pub consumers: Vec<ConsumerSpec>,
    pub grants: Vec<GrantSpec>,
}

/// What the database holds now, as far as the caller may see it.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub streams: Vec<StreamNow>,
    pub consumers: Vec<ConsumerNow>,
    pub grants: Vec<GrantSpec>,
}

#[derive(Debug, Clone)]
pub struct StreamNow {
    pub name: String,
    /// Microseconds; `None`: forever.
    pub retention: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ConsumerNow {
    pub name: String,
    pub stream: String,
    pub mode: String,
    pub subjects: Vec<String>,
    pub exclude: Vec<String>,
    pub ordering: String,
    pub max_attempts: i32,
    pub backoff: String,
    pub backoff_base: i64,
    pub backoff_max: i64,
    pub lease: i64,
    pub paused: bool,
    pub sequence: Option<Vec<String>>,
    /// Microseconds.
    pub sequence_timeout: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateStream {
        name: String,
        retention: Retention,
    },
    AlterStream {
        name: String,
        retention: Retention,
    },
    DropStream {
        name: String,
        force: bool,
    },
    CreateConsumer(ConsumerSpec),
    /// Only the settings that differ are set.
    AlterConsumer {
        spec: ConsumerSpec,
        changed: Vec<&'static str>,
    },
    PauseConsumer(String),
    ResumeConsumer(String),
    DropConsumer(String),
    Grant(GrantSpec),
    Revoke(GrantSpec),
}

/// A parameter of the SQL call that makes a change: text, or an array of text (both cast
/// to their types in the statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(Option<String>),
    TextArray(Option<Vec<String>>),
}

// ---- reading the document ----------------------------------------------------------------

fn invalid<T>(message: String) -> Result<T, Invalid> {
    Err(Invalid(message))
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Invalid> {
    value.as_object().map_or_else(|| invalid(format!("{what} must be a JSON object")), Ok)
}

fn check_keys(entry: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Invalid> {
    match entry.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => invalid(format!(
            "unknown key \"{}\" in {what}: expected one of {}",
            super::shown(k),
            allowed.join(", ")
        )),
    }
}

fn text(entry: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, Invalid> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => invalid(format!("{key} of {what} must be a string")),
    }
}

fn required_text(entry: &Map<String, Value>, key: &str, what: &str) -> Result<String, Invalid> {
    text(entry, key, what)?.map_or_else(|| invalid(format!("{what} needs {key}")), Ok)
}

fn texts(
    entry: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<Vec<String>>, Invalid> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => invalid(format!("{key} of {what} must be a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => invalid(format!("{key} of {what} must be a list of strings")),
    }
}

fn flag(entry: &Map<String, Value>, key: &str, what: &str) -> Result<Option<bool>, Invalid> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => invalid(format!("{key} of {what} must be true or false")),
    }
}

/// The entries of a section: a list of objects with a name, or an object keyed by name.
fn named_entries(
    section: &Value,
    kind: &str,
) -> Result<Vec<(String, Map<String, Value>)>, Invalid> {
    let entries = match section {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let entry = object(item, &format!("each of {kind}s"))?.clone();
                let name = required_text(&entry, "name", &format!("each {kind}"))?;
                Ok((name, entry))
            })
            .collect::<Result<Vec<_>, Invalid>>()?,
        Value::Object(map) => map
            .iter()
            .map(|(name, item)| {
                let mut entry =
                    object(item, &format!("{kind} \"{}\"", super::shown(name)))?.clone();
                if entry.get("name").is_some_and(|n| n.as_str() != Some(name)) {
                    return invalid(format!(
                        "{kind} \"{}\" names itself differently",
                        super::shown(name)
                    ));
                }
                entry.remove("name");
                Ok((name.clone(), entry))
            })
            .collect::<Result<Vec<_>, Invalid>>()?,
        _ => return invalid(format!("{kind}s must be a list or an object keyed by name")),
    };
    let mut seen = std::collections::HashSet::new();
    for (name, _) in &entries {
        if !seen.insert(name.as_str()) {
            return invalid(format!("{kind} \"{}\" appears twice", super::shown(name)));
        }
    }
    Ok(entries)
}

fn integer(entry: &Map<String, Value>, key: &str, what: &str) -> Result<Option<i32>, Invalid> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().and_then(|n| i32::try_from(n).ok()).map_or_else(
            || invalid(format!("{key} of {what} must be an integer")),
            |n| Ok(Some(n)),
        ),
    }
}

impl Spec {
    pub fn parse(document: &Value) -> Result<Spec, Invalid> {
        let top = object(document, "the spec")?;
        check_keys(top, &["streams", "consumers", "grants"], "the spec")?;
        let mut spec = Spec::default();
        if let Some(section) = top.get("streams") {
            for (name, e) in named_entries(section, "stream")? {
                let what = format!("stream \"{}\"", super::shown(&name));
                check_keys(&e, &["name", "retention", "absent", "force"], &what)?;
                let retention = match e.get("retention") {
                    None => Retention::Default,
                    Some(Value::Null) => Retention::Forever,
                    Some(Value::String(s)) => Retention::Interval(s.clone()),
                    Some(_) => {
                        return invalid(format!(
                            "retention of {what} must be an interval as text, or null"
                        ))
                    }
                };
                let absent = flag(&e, "absent", &what)?.unwrap_or(false);
                let force = flag(&e, "force", &what)?.unwrap_or(false);
                spec.streams.push(StreamSpec { name, retention, absent, force });
            }
        }
        if let Some(section) = top.get("consumers") {
            for (name, e) in named_entries(section, "consumer")? {
                let what = format!("consumer \"{}\"", super::shown(&name));
                check_keys(
                    &e,
                    &[
                        "name",
                        "stream",
                        "mode",
                        "subjects",
                        "exclude",
                        "ordering",
                        "max_attempts",
                        "backoff",
                        "backoff_base",
                        "backoff_max",
                        "lease",
                        "start_at",
                        "paused",
                        "sequence",
                        "sequence_timeout",
                        "absent",
                    ],
                    &what,
                )?;
                let c = ConsumerSpec {
                    stream: text(&e, "stream", &what)?,
                    mode: text(&e, "mode", &what)?,
                    subjects: texts(&e, "subjects", &what)?,
                    exclude: texts(&e, "exclude", &what)?,
                    ordering: text(&e, "ordering", &what)?,
                    max_attempts: integer(&e, "max_attempts", &what)?,
                    backoff: text(&e, "backoff", &what)?,
                    backoff_base: text(&e, "backoff_base", &what)?,
                    backoff_max: text(&e, "backoff_max", &what)?,
                    lease: text(&e, "lease", &what)?,
                    start_at: text(&e, "start_at", &what)?,
                    paused: flag(&e, "paused", &what)?,
                    sequence: texts(&e, "sequence", &what)?,
                    sequence_timeout: text(&e, "sequence_timeout", &what)?,
                    absent: flag(&e, "absent", &what)?.unwrap_or(false),
                    name,
                };
                if c.stream.is_none() && !c.absent {
                    return invalid(format!("{what} needs stream"));
                }
                if let Some(m) = &c.mode {
                    Mode::parse(m)?;
                }
                if let Some(o) = &c.ordering {
                    KeyOrdering::parse(o)?;
                }
                if let Some(b) = &c.backoff {
                    BackoffKind::parse(b)?;
                }
                spec.consumers.push(c);
            }
        }
        if let Some(section) = top.get("grants") {
            let Value::Array(items) = section else {
                return invalid("grants must be a list".into());
            };
            for item in items {
                let e = object(item, "each grant")?;
                check_keys(e, &["privilege", "stream", "role", "subjects", "absent"], "a grant")?;
                let g = GrantSpec {
                    privilege: required_text(e, "privilege", "a grant")?,
                    stream: required_text(e, "stream", "a grant")?,
                    role: required_text(e, "role", "a grant")?,
                    subjects: texts(e, "subjects", "a grant")?,
                    absent: flag(e, "absent", "a grant")?.unwrap_or(false),
                };
                if spec
                    .grants
                    .iter()
                    .any(|o| o.privilege == g.privilege && o.stream == g.stream && o.role == g.role)
                {
                    return invalid(format!(
                        "the grant of {} on \"{}\" to \"{}\" appears twice",
                        super::shown(&g.privilege),
                        super::shown(&g.stream),
                        super::shown(&g.role)
                    ));
                }
                spec.grants.push(g);
            }
        }
        Ok(spec)
    }

    /// Every interval the spec writes, for the caller to resolve before `changes`.
    pub fn intervals(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .streams
            .iter()
            .filter_map(|s| match &s.retention {
                Retention::Interval(i) => Some(i.clone()),
                _ => None,
            })
            .collect();
        for c in &self.consumers {
            all.extend(
                [&c.backoff_base, &c.backoff_max, &c.lease, &c.sequence_timeout]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        all
    }

    /// The changes that take `now` to this spec, in the order they can be made: streams,
    /// grants, consumers dropped, consumers created or altered, streams dropped. `micros`
    /// gives the length of an interval the spec writes.
    pub fn changes(
        &self,
        now: &Current,
        micros: &dyn Fn(&str) -> i64,
    ) -> Result<Vec<Change>, Invalid> {
        let mut first = Vec::new();
        let mut grants = Vec::new();
        let mut dropped_consumers = Vec::new();
        let mut consumers = Vec::new();
        let mut last = Vec::new();
        for s in &self.streams {
            let existing = now.streams.iter().find(|n| n.name == s.name);
            match (existing, s.absent) {
                (Some(_), true) => {
                    last.push(Change::DropStream { name: s.name.clone(), force: s.force })
                }
                (None, true) => {}
                (None, false) => first.push(Change::CreateStream {
                    name: s.name.clone(),
                    retention: s.retention.clone(),
                }),
                (Some(n), false) => {
                    let wanted = match &s.retention {
                        Retention::Default => Some(DEFAULT_RETENTION),
                        Retention::Forever => None,
                        Retention::Interval(i) => Some(micros(i)),
                    };
                    if wanted != n.retention {
                        let retention = match &s.retention {
                            Retention::Default => Retention::Interval(format!(
                                "{} seconds",
                                DEFAULT_RETENTION / 1_000_000
                            )),
                            r => r.clone(),
                        };
                        first.push(Change::AlterStream { name: s.name.clone(), retention });
                    }
                }
            }
        }
        for g in &self.grants {
            let existing = now
                .grants
                .iter()
                .find(|n| n.privilege == g.privilege && n.stream == g.stream && n.role == g.role);
            match (existing, g.absent) {
                (Some(_), true) => grants.push(Change::Revoke(g.clone())),
                (None, true) => {}
                (None, false) => grants.push(Change::Grant(g.clone())),
                (Some(n), false) => {
                    if !same_set(n.subjects.as_deref(), g.subjects.as_deref()) {
                        grants.push(Change::Grant(g.clone()));
                    }
                }
            }
        }
        for c in &self.consumers {
            let existing = now.consumers.iter().find(|n| n.name == c.name);
            match (existing, c.absent) {
                (Some(_), true) => dropped_consumers.push(Change::DropConsumer(c.name.clone())),
                (None, true) => {}
                (None, false) => {
                    consumers.push(Change::CreateConsumer(c.clone()));
                    if c.paused == Some(true) {
                        consumers.push(Change::PauseConsumer(c.name.clone()));
                    }
                }
                (Some(n), false) => consumers.extend(consumer_changes(c, n, micros)?),
            }
        }
        Ok(first
            .into_iter()
            .chain(grants)
            .chain(dropped_consumers)
            .chain(consumers)
            .chain(last)
            .collect())
    }
}

fn same_set(a: Option<&[String]>, b: Option<&[String]>) -> bool {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => sorted(a) == sorted(b),
        _ => false,
    }
}

fn consumer_changes(
    c: &ConsumerSpec,
    n: &ConsumerNow,
    micros: &dyn Fn(&str) -> i64,
) -> Result<Vec<Change>, Invalid> {
    let stream = c.stream.as_deref().unwrap_or_default();
    if stream != n.stream {
        return invalid(format!(
            "consumer \"{}\" reads stream \"{}\", not \"{}\": drop it (\"absent\": true) and create it anew",
            super::shown(&c.name),
            super::shown(&n.stream),
            super::shown(stream)
        ));
    }
    let mode = c.mode.as_deref().unwrap_or("task");
    if mode != n.mode {
        return invalid(format!(
            "consumer \"{}\" is a {} consumer; its mode cannot change: drop it and create it anew",
            super::shown(&c.name),
            n.mode
        ));
    }
    let default_subjects = [">".to_string()];
    let subjects = c.subjects.as_deref().unwrap_or(&default_subjects);
    let exclude = c.exclude.as_deref().unwrap_or(&[]);
    let interval = |given: &Option<String>, default: i64| given.as_deref().map_or(default, micros);
    let mut wanted = ConsumerSpec { name: c.name.clone(), ..ConsumerSpec::default() };
    let mut changed = Vec::new();
    if !same_set(Some(subjects), Some(&n.subjects)) {
        wanted.subjects = Some(subjects.to_vec());
        changed.push("subjects");
    }
    if !same_set(Some(exclude), Some(&n.exclude)) {
        wanted.exclude = Some(exclude.to_vec());
        changed.push("exclude");
    }
    let ordering = c.ordering.as_deref().unwrap_or("none");
    if ordering != n.ordering {
        wanted.ordering = Some(ordering.to_string());
        changed.push("ordering");
    }
    if mode == "task" {
        let max_attempts = c.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts != n.max_attempts {
            wanted.max_attempts = Some(max_attempts);
            changed.push("max_attempts");
        }
        let backoff = c.backoff.as_deref().unwrap_or("exponential");
        if backoff != n.backoff {
            wanted.backoff = Some(backoff.to_string());
            changed.push("backoff");
        }
        // the list's order is its meaning: compared as written; none is an empty list
        let sequence = c.sequence.clone().unwrap_or_default();
        if sequence != n.sequence.clone().unwrap_or_default() {
            wanted.sequence = Some(sequence);
            changed.push("sequence");
        }
        let timeout = c.sequence_timeout.as_deref().map(micros);
        if timeout != n.sequence_timeout && c.sequence_timeout.is_some() {
            wanted.sequence_timeout = c.sequence_timeout.clone();
            changed.push("sequence_timeout");
        }
        let micros_text = |us: i64| format!("{us} microseconds");
        for (name, given, default, current, slot) in [
            (
                "backoff_base",
                &c.backoff_base,
                DEFAULT_BACKOFF_BASE,
                n.backoff_base,
                &mut wanted.backoff_base,
            ),
            (
                "backoff_max",
                &c.backoff_max,
                DEFAULT_BACKOFF_MAX,
                n.backoff_max,
                &mut wanted.backoff_max,
            ),
            ("lease", &c.lease, DEFAULT_LEASE, n.lease, &mut wanted.lease),
        ] {
            let us = interval(given, default);
            if us != current {
                *slot = Some(given.clone().unwrap_or_else(|| micros_text(us)));
                changed.push(name);
            }
        }
    }
    let mut out = Vec::new();
    if !changed.is_empty() {
        out.push(Change::AlterConsumer { spec: wanted, changed });
    }
    match c.paused {
        Some(true) if !n.paused => out.push(Change::PauseConsumer(c.name.clone())),
        Some(false) if n.paused => out.push(Change::ResumeConsumer(c.name.clone())),
        _ => {}
    }
    Ok(out)
}

// ---- making the changes --------------------------------------------------------------------

fn t(value: &Option<String>) -> Param {
    Param::Text(value.clone())
}

fn retention_param(r: &Retention) -> (Param, &'static str) {
    match r {
        // (the SQL spells out the default and `forever` itself; $2 is then unused)
        Retention::Default => (Param::Text(None), "'7 days'"),
        Retention::Forever => (Param::Text(None), "NULL"),
        Retention::Interval(i) => (Param::Text(Some(i.clone())), "$2::interval"),
    }
}

impl Change {
    /// The call of eventq's API that makes the change, with its parameters ($1, $2, ...).
    pub fn call(&self) -> (String, Vec<Param>) {
        let name = |n: &str| Param::Text(Some(n.to_string()));
        match self {
            Change::CreateStream { name: n, retention } => {
                let (p, sql) = retention_param(retention);
                (format!("SELECT eventq.create_stream($1, {sql})"), vec![name(n), p])
            }
            Change::AlterStream { name: n, retention } => {
                let (p, sql) = retention_param(retention);
                (format!("SELECT eventq.alter_stream($1, {sql})"), vec![name(n), p])
            }
            Change::DropStream { name: n, force } => {
                (format!("SELECT eventq.drop_stream($1, force => {force})"), vec![name(n)])
            }
            Change::CreateConsumer(c) | Change::AlterConsumer { spec: c, .. } => {
                let creating = matches!(self, Change::CreateConsumer(_));
                let sql = if creating {
                    "SELECT eventq.create_consumer($1, $2, subjects => coalesce($3::text[], '{>}'),
                         exclude => coalesce($4::text[], '{}'), mode => coalesce($5, 'task'),
                         ordering => coalesce($6, 'none'), max_attempts => coalesce($7::int, 10),
                         backoff => coalesce($8, 'exponential'),
                         backoff_base => coalesce($9::interval, '1 second'),
                         backoff_max => coalesce($10::interval, '1 hour'),
                         lease => coalesce($11::interval, '30 seconds'), start_at => $12::timestamptz,
                         sequence => $13::text[], sequence_timeout => $14::interval)"
                } else {
                    "SELECT eventq.alter_consumer($1, subjects => $3::text[], exclude => $4::text[],
                         mode => $5, ordering => $6, max_attempts => $7::int, backoff => $8,
                         backoff_base => $9::interval, backoff_max => $10::interval,
                         lease => $11::interval, start_at => $12::timestamptz,
                         sequence => $13::text[], sequence_timeout => $14::interval)"
                };
                (
                    sql.to_string(),
                    vec![
                        name(&c.name),
                        t(&c.stream),
                        Param::TextArray(c.subjects.clone()),
                        Param::TextArray(c.exclude.clone()),
                        t(&c.mode),
                        t(&c.ordering),
                        Param::Text(c.max_attempts.map(|n| n.to_string())),
                        t(&c.backoff),
                        t(&c.backoff_base),
                        t(&c.backoff_max),
                        t(&c.lease),
                        t(&if creating { c.start_at.clone() } else { None }),
                        Param::TextArray(c.sequence.clone()),
                        t(&c.sequence_timeout),
                    ],
                )
            }
            Change::PauseConsumer(n) => ("SELECT eventq.pause_consumer($1)".into(), vec![name(n)]),
            Change::ResumeConsumer(n) => {
                ("SELECT eventq.resume_consumer($1)".into(), vec![name(n)])
            }
            Change::DropConsumer(n) => ("SELECT eventq.drop_consumer($1)".into(), vec![name(n)]),
            Change::Grant(g) => (
                "SELECT eventq.grant($1, $2, $3, $4::text[])".into(),
                vec![
                    name(&g.privilege),
                    name(&g.stream),
                    name(&g.role),
                    Param::TextArray(g.subjects.clone()),
                ],
            ),
            Change::Revoke(g) => (
                "SELECT eventq.revoke($1, $2, $3)".into(),
                vec![name(&g.privilege), name(&g.stream), name(&g.role)],
            ),
        }
    }

    /// The change as the report shows it.
    pub fn describe(&self) -> Value {
        match self {
            Change::CreateStream { name, retention } | Change::AlterStream { name, retention } => {
                let action = if matches!(self, Change::CreateStream { .. }) {
                    "create_stream"
                } else {
                    "alter_stream"
                };
                let retention = match retention {
                    Retention::Default => json!("7 days"),
                    Retention::Forever => Value::Null,
                    Retention::Interval(i) => json!(i),
                };
                json!({"action": action, "stream": name, "retention": retention})
            }
            Change::DropStream { name, force } => {
                json!({"action": "drop_stream", "stream": name, "force": force})
            }
            Change::CreateConsumer(c) => {
                json!({"action": "create_consumer", "consumer": c.name, "stream": c.stream})
            }
            Change::AlterConsumer { spec, changed } => {
                json!({"action": "alter_consumer", "consumer": spec.name, "settings": changed})
            }
            Change::PauseConsumer(n) => json!({"action": "pause_consumer", "consumer": n}),
            Change::ResumeConsumer(n) => json!({"action": "resume_consumer", "consumer": n}),
            Change::DropConsumer(n) => json!({"action": "drop_consumer", "consumer": n}),
            Change::Grant(g) | Change::Revoke(g) => json!({
                "action": if matches!(self, Change::Grant(_)) { "grant" } else { "revoke" },
                "privilege": g.privilege, "stream": g.stream, "role": g.role, "subjects": g.subjects,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    /// Intervals as the tests write them: "<n> seconds|minutes|hours|days".
    fn micros(text: &str) -> i64 {
        let (n, unit) = text.split_once(' ').unwrap();
        let n: i64 = n.parse().unwrap();
        n * match unit.trim_end_matches('s') {
            "microsecond" => 1,
            "second" => S,
            "minute" => 60 * S,
            "hour" => 3600 * S,
            "day" => 86400 * S,
            other => panic!("{other}"),
        }
    }

    fn consumer_now(name: &str) -> ConsumerNow {
        ConsumerNow {
            name: name.into(),
            stream: "orders".into(),
            mode: "task".into(),
            subjects: vec![">".into()],
            exclude: vec![],
            ordering: "none".into(),
            max_attempts: 10,
            backoff: "exponential".into(),
            backoff_base: S,
            backoff_max: 3600 * S,
            lease: 30 * S,
            paused: false,
            sequence: None,
            sequence_timeout: None,
        }
    }

    fn changes(spec: Value, now: &Current) -> Result<Vec<Change>, Invalid> {
        Spec::parse(&spec)?.changes(now, &micros)
    }

    #[test]
    fn both_shapes_of_a_section_read_the_same() {
        let listed =
            Spec::parse(&json!({"streams": [{"name": "orders", "retention": "30 days"}]})).unwrap();
        let keyed = Spec::parse(&json!({"streams": {"orders": {"retention": "30 days"}}})).unwrap();
        assert_eq!(listed, keyed);
        assert_eq!(listed.intervals(), vec!["30 days".to_string()]);
    }

    #[test]
    fn mistakes_in_the_document_are_named() {
        for (doc, message) in [
            (json!([]), "the spec must be a JSON object"),
            (json!({"stream": {}}), "unknown key \"stream\" in the spec"),
            (
                json!({"consumers": {"c": {"stream": "s", "max_attempt": 3}}}),
                "unknown key \"max_attempt\" in consumer \"c\"",
            ),
            (json!({"consumers": {"c": {}}}), "consumer \"c\" needs stream"),
            (json!({"consumers": {"c": {"stream": "s", "ordering": "fifo"}}}), "invalid ordering"),
            (
                json!({"consumers": {"c": {"stream": "s", "subjects": "a.b"}}}),
                "subjects of consumer \"c\" must be a list",
            ),
            (
                json!({"consumers": [{"name": "c", "stream": "s"}, {"name": "c", "stream": "s"}]}),
                "consumer \"c\" appears twice",
            ),
            (
                json!({"streams": {"s": {"retention": 7}}}),
                "retention of stream \"s\" must be an interval",
            ),
            (json!({"grants": [{"privilege": "consume", "stream": "s"}]}), "a grant needs role"),
            (json!({"grants": {}}), "grants must be a list"),
        ] {
            let err = Spec::parse(&doc).unwrap_err();
            assert!(err.0.contains(message), "{doc}: {}", err.0);
        }
    }

    #[test]
    fn what_is_missing_is_created_and_what_matches_is_left_alone() {
        let spec = json!({
            "streams": {"orders": {"retention": "30 days"}},
            "consumers": {"mailer": {"stream": "orders", "subjects": ["order.>"], "paused": true}},
            "grants": [{"privilege": "consume", "stream": "orders", "role": "app"}]
        });
        let created = changes(spec.clone(), &Current::default()).unwrap();
        assert_eq!(
            created
                .iter()
                .map(|c| c.describe()["action"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["create_stream", "grant", "create_consumer", "pause_consumer"]
        );
        let now = Current {
            streams: vec![StreamNow { name: "orders".into(), retention: Some(30 * 86400 * S) }],
            consumers: vec![ConsumerNow {
                subjects: vec!["order.>".into()],
                paused: true,
                ..consumer_now("mailer")
            }],
            grants: vec![GrantSpec {
                privilege: "consume".into(),
                stream: "orders".into(),
                role: "app".into(),
                subjects: None,
                absent: false,
            }],
        };
        assert_eq!(changes(spec, &now).unwrap(), vec![]);
    }

    #[test]
    fn settings_left_out_go_back_to_their_defaults_but_pausing_is_left_alone() {
        let now = Current {
            consumers: vec![ConsumerNow {
                max_attempts: 3,
                lease: 5 * S,
                paused: true,
                ..consumer_now("mailer")
            }],
            ..Current::default()
        };
        let out = changes(
            json!({"consumers": {"mailer": {"stream": "orders", "backoff_base": "2 seconds"}}}),
            &now,
        )
        .unwrap();
        let [Change::AlterConsumer { spec, changed }] = &out[..] else { panic!("{out:?}") };
        assert_eq!(changed, &["max_attempts", "backoff_base", "lease"]);
        assert_eq!(spec.max_attempts, Some(10));
        assert_eq!(spec.backoff_base.as_deref(), Some("2 seconds"));
        assert_eq!(spec.lease.as_deref(), Some("30000000 microseconds"));
        // the same length written differently is no change
        let same = changes(
            json!({"consumers": {"mailer": {"stream": "orders", "max_attempts": 3, "lease": "5000000 microseconds"}}}),
            &now,
        )
        .unwrap();
        assert_eq!(same, vec![]);
        let resumed = changes(
            json!({"consumers": {"mailer": {"stream": "orders", "max_attempts": 3, "lease": "5 seconds", "paused": false}}}),
            &now,
        )
        .unwrap();
        assert_eq!(resumed, vec![Change::ResumeConsumer("mailer".into())]);
    }

    #[test]
    fn absent_drops_and_revokes_only_what_exists_and_in_a_safe_order() {
        let now = Current {
            streams: vec![StreamNow { name: "old".into(), retention: None }],
            consumers: vec![consumer_now("gone")],
            grants: vec![GrantSpec {
                privilege: "publish".into(),
                stream: "old".into(),
                role: "app".into(),
                subjects: None,
                absent: false,
            }],
        };
        let out = changes(
            json!({
                "streams": [{"name": "old", "absent": true, "force": true}, {"name": "never", "absent": true},
                            {"name": "kept", "retention": null}],
                "consumers": {"gone": {"absent": true}, "nothing": {"absent": true}},
                "grants": [{"privilege": "publish", "stream": "old", "role": "app", "absent": true}]
            }),
            &now,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                Change::CreateStream { name: "kept".into(), retention: Retention::Forever },
                Change::Revoke(GrantSpec {
                    privilege: "publish".into(),
                    stream: "old".into(),
                    role: "app".into(),
                    subjects: None,
                    absent: true
                }),
                Change::DropConsumer("gone".into()),
                Change::DropStream { name: "old".into(), force: true },
            ]
        );
    }

    #[test]
    fn a_sequence_is_compared_in_order_and_removed_when_left_out() {
        let now = Current {
            consumers: vec![ConsumerNow {
                ordering: "key".into(),
                sequence: Some(vec!["a".into(), "b".into()]),
                sequence_timeout: Some(60 * S),
                ..consumer_now("c")
            }],
            ..Current::default()
        };
        let same = json!({"consumers": {"c": {"stream": "orders", "ordering": "key", "sequence": ["a", "b"],
                                              "sequence_timeout": "1 minute"}}});
        assert_eq!(changes(same, &now).unwrap(), vec![]);
        let swapped = changes(json!({"consumers": {"c": {"stream": "orders", "ordering": "key", "sequence": ["b", "a"]}}}), &now).unwrap();
        assert!(
            matches!(&swapped[..], [Change::AlterConsumer { changed, .. }] if changed == &["sequence"]),
            "{swapped:?}"
        );
        let removed =
            changes(json!({"consumers": {"c": {"stream": "orders", "ordering": "key"}}}), &now)
                .unwrap();
        let [Change::AlterConsumer { spec, changed }] = &removed[..] else { panic!("{removed:?}") };
        assert_eq!(changed, &["sequence"]);
        assert_eq!(spec.sequence, Some(vec![]));
    }

    #[test]
    fn a_consumer_cannot_move_streams_or_modes() {
        let now = Current { consumers: vec![consumer_now("c")], ..Current::default() };
        let moved = changes(json!({"consumers": {"c": {"stream": "payments"}}}), &now).unwrap_err();
        assert!(moved.0.contains("reads stream \"orders\", not \"payments\""), "{}", moved.0);
        let log = changes(json!({"consumers": {"c": {"stream": "orders", "mode": "log"}}}), &now)
            .unwrap_err();
        assert!(log.0.contains("its mode cannot change"), "{}", log.0);
    }

    #[test]
    fn retention_compares_by_length_and_grants_by_their_subjects() {
        let now = Current {
            streams: vec![StreamNow { name: "s".into(), retention: Some(7 * 86400 * S) }],
            grants: vec![GrantSpec {
                privilege: "consume".into(),
                stream: "s".into(),
                role: "app".into(),
                subjects: Some(vec!["a.>".into(), "b.>".into()]),
                absent: false,
            }],
            ..Current::default()
        };
        let unchanged = json!({
            "streams": {"s": {}},
            "grants": [{"privilege": "consume", "stream": "s", "role": "app", "subjects": ["b.>", "a.>"]}]
        });
        assert_eq!(changes(unchanged, &now).unwrap(), vec![]);
        let out = changes(
            json!({
                "streams": {"s": {"retention": "168 hours"}, "t": {}},
                "grants": [{"privilege": "consume", "stream": "s", "role": "app"}]
            }),
            &now,
        )
        .unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Change::CreateStream { name, retention: Retention::Default } if name == "t")
        );
        assert!(matches!(&out[1], Change::Grant(g) if g.subjects.is_none()));
    }

    #[test]
    fn calls_pass_every_value_as_a_parameter() {
        let create = Change::CreateConsumer(ConsumerSpec {
            name: "x'); DROP TABLE t; --".into(),
            stream: Some("s".into()),
            ..ConsumerSpec::default()
        });
        let (sql, params) = create.call();
        assert!(!sql.contains("DROP TABLE"));
        assert_eq!(params[0], Param::Text(Some("x'); DROP TABLE t; --".into())));
        assert_eq!(params.len(), 14);
        let (sql, params) = Change::DropStream { name: "s".into(), force: false }.call();
        assert_eq!(sql, "SELECT eventq.drop_stream($1, force => false)");
        assert_eq!(params.len(), 1);
    }
}
