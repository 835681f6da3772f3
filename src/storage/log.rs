//! Log consumers: reading events after a cursor. Reading writes nothing; only `commit` and
//! `seek` move the cursor.

use super::consumers::Consumer;
use super::{arg, column, scalar, Statement, BIGINT, INT, TEXT, TIMESTAMPTZ};
use crate::datum::Jsonb;
use crate::unread_counts;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::HashMap;

// The filter is the consumer's patterns as regular expressions (see core::subject), which
// Postgres compiles once per query. A NULL regex lets everything through. The rows come
// in the primary key's order, so that the LIMIT stops the scan: a kept plan made while
// the log looked small (a bitmap scan and a sort) would read the whole backlog after the
// cursor at every fetch.
static FETCH: Statement = Statement::index_ordered(
    "SELECT e.seq, e.id, e.subject, e.key, e.payload, e.headers, e.published_at
     FROM eventq_internal.events e
     WHERE e.stream_id = $1 AND e.seq > $2
       AND ($3::text IS NULL OR e.subject ~ $3)
       AND ($4::text IS NULL OR e.subject !~ $4)
       AND ($6::timestamptz IS NULL OR e.published_at >= $6)
     ORDER BY e.seq
     LIMIT $5",
    &[INT, BIGINT, TEXT, TEXT, BIGINT, TIMESTAMPTZ],
);

pub struct LogEvent {
    pub seq: i64,
    pub event_id: Uuid,
    pub subject: String,
    pub key: Option<String>,
    pub payload: Jsonb,
    pub headers: Option<Jsonb>,
    pub published_at: TimestampWithTimeZone,
}

/// An event from the first seven columns of a row of FETCH or NEWEST.
fn log_event(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Option<LogEvent> {
    Some(LogEvent {
        seq: column(row, 1)?,
        event_id: column(row, 2)?,
        subject: column(row, 3)?,
        key: column(row, 4),
        payload: column(row, 5)?,
        headers: column(row, 6),
        published_at: column(row, 7)?,
    })
}

/// What a filter lets through: stretches of the log known to hold none of it are skipped.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Filter {
    /// The log table itself: a new one (DROP and CREATE EXTENSION, a restore with --clean)
    /// numbers streams and events from the start again, and what was known is void.
    log_table: u32,
    stream_id: i32,
    include_re: Option<String>,
    exclude_re: Option<String>,
    start_at: Option<i64>,
}

/// Filters this backend remembers stretches of.
const REMEMBERED_FILTERS: usize = 1024;

impl Filter {
    fn new(
        stream_id: i32,
        include_re: &Option<String>,
        exclude_re: &Option<String>,
        start_at: Option<TimestampWithTimeZone>,
    ) -> Filter {
        Filter {
            log_table: log_table(),
            stream_id,
            include_re: include_re.clone(),
            exclude_re: exclude_re.clone(),
            start_at: start_at.map(|t| t.into_inner()),
        }
    }
}

/// Keeps what was learnt of a filter, forgetting everything once too many are kept.
fn remember<V>(known: &RefCell<HashMap<Filter, V>>, filter: Filter, value: V) {
    let mut known = known.borrow_mut();
    if known.len() >= REMEMBERED_FILTERS {
        known.clear();
    }
    known.insert(filter, value);
}

thread_local! {
    /// Per filter, a stretch of its stream `(from, through]` that holds no event it lets
    /// through. A log consumer whose filter matches nothing in a busy stream fetches nothing
    /// and so never moves its cursor: without this, every fetch would read the whole stream
    /// after the cursor again. It stays true: events below the head never appear later (see
    /// `head`) and are never changed, only deleted.
    static EMPTY_STRETCHES: RefCell<HashMap<Filter, (i64, i64)>> = RefCell::new(HashMap::new());
}

static HEAD_AND_RESTORING: Statement = Statement::new(
    "SELECT (SELECT last_seq FROM eventq_internal.drains ORDER BY last_seq DESC LIMIT 1),
            EXISTS (SELECT 1 FROM eventq_internal.restoring)",
    &[],
);

/// The log's head, and whether a restore is loading the tables. Read before a scan, whose
/// snapshot is newer: every event up to the head is seen. Not while a restore loads the
/// tables, maybe the drains before the events.
fn head_and_restoring(client: &SpiClient<'_>) -> (i64, bool) {
    HEAD_AND_RESTORING
        .first_row(client, &[])
        .map(|row| (column::<i64>(&row, 1).unwrap_or(0), column::<bool>(&row, 2).unwrap_or(true)))
        .unwrap_or((0, true))
}

/// Whether this transaction has written anything yet (it has a transaction id).
fn writing() -> bool {
    let xid = unsafe { pgrx::pg_sys::GetTopTransactionIdIfAny() };
    xid != pgrx::pg_sys::InvalidTransactionId
}

fn log_table() -> u32 {
    // SAFETY: catalog lookups by name, in a transaction.
    unsafe {
        let schema = pgrx::pg_sys::get_namespace_oid(c"eventq_internal".as_ptr(), true);
        pgrx::pg_sys::get_relname_relid(c"events".as_ptr(), schema).to_u32()
    }
}

pub fn fetch(
    client: &SpiClient<'_>,
    stream_id: i32,
    after: i64,
    include_re: Option<String>,
    exclude_re: Option<String>,
    start_at: Option<TimestampWithTimeZone>,
    max: i64,
) -> Vec<LogEvent> {
    let (stretch, scan_after) =
        Stretch::start(client, stream_id, after, &include_re, &exclude_re, start_at);
    let events: Vec<LogEvent> = FETCH
        .run(
            client,
            &[
                arg(stream_id),
                arg(scan_after),
                arg(include_re),
                arg(exclude_re),
                arg(max),
                arg(start_at),
            ],
        )
        .filter_map(|row| log_event(&row))
        .collect();
    if events.is_empty() {
        stretch.found_nothing();
    }
    events
}

// A stream's newest events, highest seq first, below $2: the primary key read backwards,
// stopping after $4 rows the role may read ($3: the subjects of its consume grants as a
// regular expression; NULL: all). The view `eventq.events` cannot do this: see
// `api::stream::newest_events`.
static NEWEST: Statement = Statement::index_ordered(
    "SELECT e.seq, e.id, e.subject, e.key, e.payload, e.headers, e.published_at, e.deliver_at
     FROM eventq_internal.events e
     WHERE e.stream_id = $1 AND e.seq < $2 AND ($3::text IS NULL OR e.subject ~ $3)
     ORDER BY e.seq DESC
     LIMIT $4",
    &[INT, BIGINT, TEXT, BIGINT],
);

pub struct ListedEvent {
    pub event: LogEvent,
    pub deliver_at: Option<TimestampWithTimeZone>,
}

/// The stream's `max` newest events below `before` whose subjects `readable_re` admits
/// (`None`: all), newest first, in the caller's snapshot, as `eventq.events` would show
/// them in the same transaction. Drains nothing.
pub fn newest(
    client: &SpiClient<'_>,
    stream_id: i32,
    before: i64,
    readable_re: Option<String>,
    max: i64,
) -> Vec<ListedEvent> {
    NEWEST
        .read_as_of_caller(client, &[arg(stream_id), arg(before), arg(readable_re), arg(max)])
        .filter_map(|row| {
            Some(ListedEvent { event: log_event(&row)?, deliver_at: column(&row, 8) })
        })
        .collect()
}

/// A scan of the log for a filter's events after a position, and what it may learn: if it
/// finds none, that the stretch from the position to the head read before it holds none.
struct Stretch {
    filter: Filter,
    from: i64,
    scan_after: i64,
    head: i64,
    restoring: bool,
}

impl Stretch {
    /// Where a scan for the filter's events after `after` must start: past what is known
    /// to hold none of them.
    fn start(
        client: &SpiClient<'_>,
        stream_id: i32,
        after: i64,
        include_re: &Option<String>,
        exclude_re: &Option<String>,
        start_at: Option<TimestampWithTimeZone>,
    ) -> (Stretch, i64) {
        let filter = Filter::new(stream_id, include_re, exclude_re, start_at);
        let known = EMPTY_STRETCHES.with(|k| k.borrow().get(&filter).copied());
        let (from, scan_after) = match known {
            Some((from, through)) if from <= after && after < through => (from, through),
            _ => (after, after),
        };
        let (head, restoring) = head_and_restoring(client);
        (Stretch { filter, from, scan_after, head, restoring }, scan_after)
    }

    /// The scan found no event of the filter.
    fn found_nothing(self) {
        if self.head > self.scan_after && !self.restoring {
            EMPTY_STRETCHES.with(|k| remember(k, self.filter, (self.from, self.head)));
        }
    }
}

// The events after a position ($2) up to the head ($6): how many the filter lets through
// and when the first of them was published, how many there are in all, how many are past
// the head, and the stream's total (event_counts, exact in every snapshot: the triggers
// that keep it commit with the events). All in one statement, so in one snapshot.
static UNREAD: Statement = Statement::new(
    "SELECT count(*) FILTER (WHERE e.seq <= $6 AND m.lets_through),
            min(e.published_at) FILTER (WHERE e.seq <= $6 AND m.lets_through),
            count(*) FILTER (WHERE e.seq <= $6),
            count(*) FILTER (WHERE e.seq > $6),
            (SELECT coalesce(sum(n.events), 0) FROM eventq_internal.event_counts n
              WHERE n.stream_id = $1)::bigint
     FROM eventq_internal.events e
     CROSS JOIN LATERAL (SELECT ($3::text IS NULL OR e.subject ~ $3)
                            AND ($4::text IS NULL OR e.subject !~ $4)
                            AND ($5::timestamptz IS NULL OR e.published_at >= $5)) m(lets_through)
     WHERE e.stream_id = $1 AND e.seq > $2",
    &[INT, BIGINT, TEXT, TEXT, TIMESTAMPTZ, BIGINT],
);

/// What this backend last counted for a filter: the events it lets through in
/// `(from, through]`, the first one's publication time, and how many events the stream had
/// up to `through`.
#[derive(Clone, Copy)]
struct Counted {
    from: i64,
    through: i64,
    matching: i64,
    oldest_at: Option<TimestampWithTimeZone>,
    total: i64,
}

impl Counted {
    fn from_shared(c: unread_counts::Count) -> Counted {
        Counted {
            from: c.from,
            through: c.through,
            matching: c.matching,
            oldest_at: c.oldest_at.and_then(|t| TimestampWithTimeZone::try_from(t).ok()),
            total: c.total,
        }
    }

    fn to_shared(self) -> unread_counts::Count {
        unread_counts::Count {
            from: self.from,
            through: self.through,
            matching: self.matching,
            oldest_at: self.oldest_at.map(|t| t.into_inner()),
            total: self.total,
        }
    }
}

thread_local! {
    /// Without preloading (else see `unread_counts`, shared by all backends): a log consumer
    /// that does not read (stopped, or whose filter matches nothing) has its unread events
    /// counted again at every read of eventq.consumers: from here, only the events since
    /// are read. Void once an event up to `through` is gone (retention, a
    /// dropped stream), which the stream's total shows: then everything is counted again.
    static COUNTED: RefCell<HashMap<Filter, Counted>> = RefCell::new(HashMap::new());
}

/// How many events the log consumer has not read, and when the first of them was published:
/// what `fetch` would still return, up to the log's head.
pub fn unread(client: &SpiClient<'_>, c: &Consumer) -> (i64, Option<TimestampWithTimeZone>) {
    let filter = Filter::new(c.stream_id, &c.include_re, &c.exclude_re, c.start_at);
    let (head, restoring) = head_and_restoring(client);
    let after = c.cursor_seq;
    let shared_key = unread_counts::key(&filter);
    let known = match shared_key {
        Some(key) => unread_counts::get(key).map(Counted::from_shared),
        None => COUNTED.with(|k| k.borrow().get(&filter).copied()),
    }
    .filter(|k| k.from == after && k.through <= head && !restoring);
    let count = |since: i64| {
        UNREAD
            .first_row(
                client,
                &[
                    arg(c.stream_id),
                    arg(since),
                    arg(c.include_re.clone()),
                    arg(c.exclude_re.clone()),
                    arg(c.start_at),
                    arg(head),
                ],
            )
            .map(|row| {
                let n = |i| column::<i64>(&row, i).unwrap_or(0);
                // (matching, oldest, events up to the head, the stream's events up to the head)
                (n(1), column::<TimestampWithTimeZone>(&row, 2), n(3), n(5) - n(4))
            })
            .unwrap_or((0, None, 0, 0))
    };
    let mut counted = None;
    if let Some(k) = known {
        let (matching, oldest_at, events, total) = count(k.through);
        if k.total + events == total {
            counted = Some(Counted {
                from: after,
                through: head,
                matching: k.matching + matching,
                oldest_at: k.oldest_at.or(oldest_at),
                total,
            });
        }
    }
    let counted = counted.unwrap_or_else(|| {
        let (matching, oldest_at, _, total) = count(after);
        Counted { from: after, through: head, matching, oldest_at, total }
    });
    if !restoring && head >= after {
        match shared_key {
            // (not a count that may include this transaction's own uncommitted changes)
            Some(key) if !writing() => unread_counts::put(key, counted.to_shared()),
            Some(_) => {}
            None => COUNTED.with(|k| remember(k, filter, counted)),
        }
    }
    (counted.matching, counted.oldest_at)
}

static COMMIT: Statement = Statement::new(
    "UPDATE eventq_internal.consumers SET cursor_seq = greatest(cursor_seq, $2) WHERE id = $1",
    &[INT, BIGINT],
);

/// Moves the cursor forward; a position behind the cursor leaves it where it is.
pub fn commit(client: &SpiClient<'_>, consumer_id: i32, seq: i64) {
    COMMIT.run(client, &[arg(consumer_id), arg(seq)]);
}

static HEAD: Statement = Statement::new(
    "SELECT last_seq FROM eventq_internal.drains ORDER BY last_seq DESC LIMIT 1",
    &[],
);

/// The highest seq of any committed drain (across all streams): the log's head. No event
/// that appears later has a seq at or below it. (The sequence's value would also count the
/// numbers of a drain that has not committed yet, whose events are still to appear.)
pub fn head(client: &SpiClient<'_>) -> i64 {
    scalar(&HEAD, client, &[]).unwrap_or(0)
}
