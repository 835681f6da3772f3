-- eventq storage. Users call the functions and read the views in schema eventq; the tables
-- here are an implementation detail and may change between versions.
--
-- The life of an event:
--   publish  -> one row in `staged` (no index: the publisher's insert is as cheap as it gets)
--   drain    -> rows that have committed move, one drain at a time, into `events` with `seq`
--               numbers in the order of their transactions' ids, and one row per matching
--               task consumer goes into `tasks` (src/storage/drain.rs says why that order
--               is commit order for everything a reader can tell apart)
--   pull     -> a task is leased (available -> running); ack / retry / discard finish it
--   maintain -> expired leases rescued, due retries made available, retention applied
--
-- Every table has a primary key, or (staging) REPLICA IDENTITY FULL, so that deletes keep
-- working when a publication FOR ALL TABLES includes them.

CREATE SCHEMA eventq_internal;
COMMENT ON SCHEMA eventq_internal IS 'eventq storage; use the functions and views in schema eventq';
-- Nobody but the extension's owner touches storage. The functions in schema eventq check
-- the caller's privileges (eventq.grant) and then work as that owner (src/api/access.rs).
REVOKE ALL ON SCHEMA eventq_internal FROM PUBLIC;

-- The group role that administers eventq in every database of the cluster: members create,
-- change and drop streams and consumers, and grant and revoke. Roles belong to the
-- cluster, so it may exist already (another database has eventq); it stays when the
-- extension is dropped.
DO $create_admin_role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'eventq_admin') THEN
        CREATE ROLE eventq_admin NOLOGIN;
        COMMENT ON ROLE eventq_admin IS 'administers eventq: streams, consumers, grants';
    END IF;
END
$create_admin_role$;

-- Names are ASCII ([a-z0-9_]) and collate as "C": publish looks streams up through this
-- index directly, with a C-collation scan key, as Postgres does for its catalogs.
CREATE TABLE eventq_internal.streams (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL CONSTRAINT streams_name_key UNIQUE,
    retention  interval,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One sequence numbers the events of every stream, so `seq` strictly increases within each
-- stream (with gaps where other streams' events took numbers). Drains take numbers in
-- blocks with setval() while holding the drain lock.
CREATE SEQUENCE eventq_internal.event_seq AS bigint MINVALUE 0 START 0;
SELECT setval('eventq_internal.event_seq', 0, true);

-- Published events not yet drained. Partitioned by a slot that turns over every second
-- (four slots), so maintenance can TRUNCATE a slot nobody writes to any more instead of
-- leaving the dead rows of drained events to vacuum. That matters when a long snapshot
-- elsewhere holds the xmin horizon back and vacuum cannot remove anything.
-- Hazards: the drain scans these tables without an index; they stay small only because
-- they are drained continuously and truncated slot by slot. And `publish` appends to the
-- slot partitions with heap_insert, not INSERT (src/storage/append.rs): they must have no
-- index, trigger, rule or constraint beyond NOT NULL.
CREATE TABLE eventq_internal.staged (
    -- chosen by eventq (core::staging): the second the publishing transaction started, mod 4
    slot         smallint NOT NULL,
    -- the publishing transaction's top-level id: the drain numbers events in (xid, id)
    -- order. Ids from one backend increase, so a transaction's events keep their order.
    xid          xid8 NOT NULL,
    id           uuid NOT NULL,
    stream_id    integer NOT NULL,
    subject      text NOT NULL,
    key          text,
    payload      jsonb NOT NULL,
    headers      jsonb,
    deliver_at   timestamptz,
    published_at timestamptz NOT NULL DEFAULT now(),
    -- the system identifier of the cluster the event was published in. A dump restored
    -- into another cluster brings staged events whose xids mean nothing there; the drain
    -- numbers them before every event published here (all of which happened after them).
    origin       bigint NOT NULL,
    -- the publisher's retry settings for this event's tasks (NULL: each consumer's own)
    max_attempts integer,
    backoff      text,
    backoff_base interval
) PARTITION BY LIST (slot);
CREATE TABLE eventq_internal.staged_0 PARTITION OF eventq_internal.staged FOR VALUES IN (0);
CREATE TABLE eventq_internal.staged_1 PARTITION OF eventq_internal.staged FOR VALUES IN (1);
CREATE TABLE eventq_internal.staged_2 PARTITION OF eventq_internal.staged FOR VALUES IN (2);
CREATE TABLE eventq_internal.staged_3 PARTITION OF eventq_internal.staged FOR VALUES IN (3);
-- The drain deletes what it moves. Without an index there is no replica identity to name a
-- row by, and a publication that publishes deletes would make every drain fail; FULL costs
-- nothing below wal_level = logical.
ALTER TABLE eventq_internal.staged REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_0 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_1 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_2 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_3 REPLICA IDENTITY FULL;

-- One row per committed drain that moved events: the log's head is the newest row's
-- last_seq. Readers use it, not the sequence, whose value also counts numbers an
-- unfinished drain has reserved. Insert-only; old rows are trimmed by cleanup.
CREATE TABLE eventq_internal.drains (
    last_seq   bigint PRIMARY KEY,
    events     bigint NOT NULL,
    drained_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO eventq_internal.drains (last_seq, events) VALUES (0, 0);

-- Drained events: insert-only, deleted by retention.
CREATE TABLE eventq_internal.events (
    stream_id    integer NOT NULL,
    seq          bigint NOT NULL,
    id           uuid NOT NULL,
    subject      text NOT NULL,
    key          text,
    payload      jsonb NOT NULL,
    headers      jsonb,
    published_at timestamptz NOT NULL,
    deliver_at   timestamptz,
    max_attempts integer,
    backoff      text,
    backoff_base interval,
    PRIMARY KEY (stream_id, seq)
);
CREATE INDEX events_by_id ON eventq_internal.events (id);
-- For queries by time (retention, seek, start_at), which repeat the predicate. The
-- predicate holds for every row; it is there so that no other query can use this index.
-- Right after a burst, before autoanalyze, the statistics say a stream has a row or two,
-- and a lookup by (stream_id, seq) was then planned on this index, filtering every event
-- of the stream, instead of on the primary key.
CREATE INDEX events_by_time ON eventq_internal.events (stream_id, published_at)
    WHERE published_at > '-infinity';

-- A publish with a dedup_key claims the key here, in the publisher's transaction, so a
-- concurrent publish of the same key waits for the first and then returns its id.
CREATE TABLE eventq_internal.dedup (
    stream_id    integer NOT NULL,
    dedup_key    text NOT NULL,
    event_id     uuid NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, dedup_key)
);
-- Partial for the reason given at events_by_time.
CREATE INDEX dedup_by_time ON eventq_internal.dedup (stream_id, published_at)
    WHERE published_at > '-infinity';

-- Whether every pattern of a list has the shape src/core/subject.rs accepts, so that no
-- stored filter can fail to parse when the drain routes by it.
CREATE FUNCTION eventq_internal.valid_patterns(patterns text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (SELECT coalesce(bool_and(p IS NOT NULL
                                 AND octet_length(p) BETWEEN 1 AND 255
                                 AND p ~ '^((\*|[A-Za-z0-9_-]+)\.)*(\*|>|[A-Za-z0-9_-]+)$'), true)
        FROM unnest(patterns) AS p);

-- No foreign keys here or anywhere in storage: pg_restore -j loads the rows of an
-- extension's tables in any order and would trip over them. Instead, creating a consumer
-- or a grant holds its stream's lock, as dropping the stream does (storage::streams).
-- Declared action order (a consumer's `sequence`, with key ordering): a task whose subject
-- is at position p of the sequence may go once the subjects before it have finished for its
-- key. A key's finished subjects are the bits of `key_heads.sequence_done` (bit p-1 for
-- position p; at most 63 subjects). Subjects not in the sequence are always ready.
CREATE FUNCTION eventq_internal.sequence_bit(sequence text[], subject text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(1::bigint << (pg_catalog.array_position(sequence, subject) - 1), 0);

CREATE FUNCTION eventq_internal.sequence_ready(sequence text[], done bigint, subject text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.array_position(sequence, subject) IS NULL
    OR done & (eventq_internal.sequence_bit(sequence, subject) - 1)
       = eventq_internal.sequence_bit(sequence, subject) - 1;

CREATE TABLE eventq_internal.consumers (
    id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text COLLATE "C" NOT NULL UNIQUE,
    stream_id    integer NOT NULL,
    mode         text NOT NULL CHECK (mode IN ('task', 'log')),
    subjects     text[] NOT NULL,
    exclude      text[] NOT NULL,
    -- the same filter as anchored regular expressions, for reading the log in SQL;
    -- NULL where the filter lets everything through
    include_re   text,
    exclude_re   text,
    ordering     text NOT NULL CHECK (ordering IN ('none', 'key')),
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    backoff      text NOT NULL CHECK (backoff IN ('fixed', 'exponential')),
    backoff_base interval NOT NULL,
    backoff_max  interval NOT NULL,
    lease        interval NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    -- log mode: the last seq the reader committed
    cursor_seq   bigint NOT NULL DEFAULT 0,
    -- start_at: only events published at or after it (NULL: no such limit)
    start_at     timestamptz,
    -- cleanup of finished tasks resumes after this seq
    cleanup_seq  bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- the role that created it (its members may work it, given `consume` on the stream)
    owner        regrole NOT NULL,
    -- declared action order per key (see sequence_ready), and how long a task waits for it
    sequence         text[],
    sequence_timeout interval,
    CONSTRAINT consumers_patterns_check
        CHECK (eventq_internal.valid_patterns(subjects) AND eventq_internal.valid_patterns(exclude))
);
CREATE INDEX consumers_by_stream ON eventq_internal.consumers (stream_id);

-- Privileges on streams (eventq.grant). `subjects` limits a grant to those patterns (NULL:
-- every subject); `subjects_re` is the same as an anchored regular expression, for the
-- views. Roles are stored as regrole, so that a dump names them and a restore finds them
-- again; a grant to a role that has since been dropped is ignored (and removed by cleanup).
CREATE TABLE eventq_internal.grants (
    stream_id   integer NOT NULL,
    grantee     regrole NOT NULL,
    privilege   text NOT NULL CHECK (privilege IN ('publish', 'consume', 'manage')),
    subjects    text[] CHECK (subjects IS NULL
                              OR (cardinality(subjects) BETWEEN 1 AND 100
                                  AND eventq_internal.valid_patterns(subjects))),
    subjects_re text,
    granted_by  regrole NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, grantee, privilege)
);

-- `scheduled` is a task that is available but not before `run_at` (deliver_at in the
-- future); the views show it as `available`. Keeping it out of the `available` index
-- means pull never walks past tasks that are not yet due.
CREATE TYPE eventq_internal.task_state AS ENUM
    ('available', 'scheduled', 'waiting', 'running', 'retryable', 'completed', 'discarded');

-- One row per (consumer, event). The task id is the event's seq: unique within a consumer
-- and free of a second sequence and index.
CREATE TABLE eventq_internal.tasks (
    consumer_id integer NOT NULL,
    seq         bigint NOT NULL,
    state       eventq_internal.task_state NOT NULL,
    attempt     integer NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL,
    lease_until timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the event's key, kept only for consumers with ordering = 'key'
    order_key   text,
    last_error  text,
    PRIMARY KEY (consumer_id, seq)
);
-- Every state change touches these partial indexes: each one serves exactly one query.
CREATE INDEX tasks_available ON eventq_internal.tasks (consumer_id, seq)
    WHERE state = 'available';
CREATE INDEX tasks_due_later ON eventq_internal.tasks (consumer_id, run_at)
    WHERE state IN ('scheduled', 'retryable');
CREATE INDEX tasks_leased ON eventq_internal.tasks (consumer_id, lease_until)
    WHERE state = 'running';
CREATE INDEX tasks_waiting ON eventq_internal.tasks (consumer_id, order_key, seq)
    WHERE state = 'waiting';
-- Discarded tasks are the few a person looks at (eventq.tasks by state, redrive); an
-- index of all finished tasks would cost every ack an entry.
CREATE INDEX tasks_discarded ON eventq_internal.tasks (consumer_id, seq)
    WHERE state = 'discarded';

-- Key ordering: per (consumer, key), the task in flight (available, scheduled, running or
-- retryable), or NULL when the key is idle; the key's other unfinished tasks wait. Rows of
-- idle keys stay until cleanup removes them. See src/storage/keys.rs for how the drain and
-- whoever finishes a head use these rows without ever missing each other's work, and
-- without the drain ever waiting for a worker's transaction. Pull never touches them.
CREATE TABLE eventq_internal.key_heads (
    consumer_id integer NOT NULL,
    order_key   text NOT NULL,
    head_seq    bigint,
    -- the sequence's subjects finished for this key (see sequence_ready)
    sequence_done bigint NOT NULL DEFAULT 0,
    -- a key whose waiting tasks all wait for their sequence: when the oldest times out
    blocked_until timestamptz,
    PRIMARY KEY (consumer_id, order_key)
);
CREATE INDEX key_heads_blocked ON eventq_internal.key_heads (consumer_id, blocked_until)
    WHERE blocked_until IS NOT NULL;

-- Keys whose row was busy when a drain or a background pass wanted to look at it: the
-- next drain settles them (src/storage/keys.rs). No unique key: inserting a recheck must
-- never wait for a transaction that inserts or deletes the same one.
CREATE TABLE eventq_internal.key_rechecks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    order_key   text NOT NULL
);
CREATE INDEX key_rechecks_by_key ON eventq_internal.key_rechecks (consumer_id, order_key);

-- Events a consumer has no tasks for yet although it should: those drained while it was
-- being created (to_seq NULL: up to the drain that first sees it), or while a change to it
-- kept drains from routing to it. The next drain that can lock the consumer fills them.
CREATE TABLE eventq_internal.routing_gaps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint
);
CREATE INDEX routing_gaps_by_consumer ON eventq_internal.routing_gaps (consumer_id);

-- Unfinished tasks deleted by retention (or found without their event), counted on the
-- consumer as `expired`. Insert-only, so that counting never waits for a transaction that
-- holds the consumer's row; cleanup folds the rows of a consumer into one.
CREATE TABLE eventq_internal.expirations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    tasks       bigint NOT NULL
);
CREATE INDEX expirations_by_consumer ON eventq_internal.expirations (consumer_id);

-- Attempts that did not complete (failed, lost, discarded). A completed attempt is the
-- task row itself, so the happy path writes no history row; only when a replay starts a
-- completed task over is its completed attempt recorded here.
CREATE TABLE eventq_internal.attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    task_id     bigint NOT NULL,
    attempt     integer NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('completed', 'ignored', 'failed', 'lost', 'discarded')),
    error       text,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_by_task ON eventq_internal.attempts (consumer_id, task_id);

-- How many tasks each consumer has in each state, and how many events each stream holds,
-- for the views (sql/views.sql): counting the rows themselves took seconds at a million
-- events. Every statement that inserts, updates or deletes tasks or events adds its net
-- change here, from a trigger that sees the statement's rows as transition tables; so no
-- code path can forget to count, and a count commits or rolls back with its change.
-- Insert-only, without indexes: a statement adds one row per (consumer, state) it changed,
-- without waiting for any other transaction, and the rows of two statements never
-- conflict. Maintenance folds the rows into one per (consumer, state) every cleanup pass
-- (storage::counts::fold), so that the views sum a few rows per consumer.
-- Not dumped: a restore loads tasks and events after creating the extension, and these
-- triggers count the rows as they are loaded.
-- Hazard: rows written while the triggers do not fire (pg_restore --data-only
-- --disable-triggers, session_replication_role = replica) leave the counts wrong until
-- eventq.recount() (storage::counts). So does a logical-replication subscriber, which fires
-- no statement triggers for the rows it applies.
CREATE TABLE eventq_internal.task_counts (
    consumer_id integer NOT NULL,
    state       eventq_internal.task_state NOT NULL,
    tasks       bigint NOT NULL
);
CREATE TABLE eventq_internal.event_counts (
    stream_id integer NOT NULL,
    events    bigint NOT NULL
);
-- Folding deletes rows: with no key to name them by, a publication that publishes deletes
-- needs the whole row (see staged).
ALTER TABLE eventq_internal.task_counts REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.event_counts REPLICA IDENTITY FULL;

CREATE FUNCTION eventq_internal.count_tasks() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $count_tasks$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
        SELECT n.consumer_id, n.state, count(*) FROM new_tasks n GROUP BY n.consumer_id, n.state;
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE eventq_internal.task_counts;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
        SELECT o.consumer_id, o.state, -count(*) FROM old_tasks o GROUP BY o.consumer_id, o.state;
    ELSE
        INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
        SELECT d.consumer_id, d.state, sum(d.n)
        FROM (SELECT o.consumer_id, o.state, -1 AS n FROM old_tasks o
              UNION ALL
              SELECT n.consumer_id, n.state, 1 FROM new_tasks n) d
        GROUP BY d.consumer_id, d.state
        HAVING sum(d.n) <> 0;
    END IF;
    RETURN NULL;
END
$count_tasks$;

CREATE FUNCTION eventq_internal.count_events() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $count_events$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO eventq_internal.event_counts (stream_id, events)
        SELECT n.stream_id, count(*) FROM new_events n GROUP BY n.stream_id;
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE eventq_internal.event_counts;
    ELSE
        INSERT INTO eventq_internal.event_counts (stream_id, events)
        SELECT o.stream_id, -count(*) FROM old_events o GROUP BY o.stream_id;
    END IF;
    RETURN NULL;
END
$count_events$;

-- One trigger per kind of statement: Postgres allows transition tables only on triggers
-- for a single event. Updates of events (none today) would not change the counts.
CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON eventq_internal.tasks
    REFERENCING NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_tasks();
CREATE TRIGGER tasks_counted_on_update AFTER UPDATE ON eventq_internal.tasks
    REFERENCING OLD TABLE AS old_tasks NEW TABLE AS new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_tasks();
CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON eventq_internal.tasks
    REFERENCING OLD TABLE AS old_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_tasks();
CREATE TRIGGER events_counted_on_insert AFTER INSERT ON eventq_internal.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_events();
CREATE TRIGGER events_counted_on_delete AFTER DELETE ON eventq_internal.events
    REFERENCING OLD TABLE AS old_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_events();
-- eventq never truncates tasks or events; an administrator who does empties their counts.
-- TRUNCATE, not DELETE, of the counts: it removes rows committed after this transaction's
-- snapshot too (under REPEATABLE READ), and no writer of tasks or events runs meanwhile.
CREATE TRIGGER tasks_counted_on_truncate AFTER TRUNCATE ON eventq_internal.tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_tasks();
CREATE TRIGGER events_counted_on_truncate AFTER TRUNCATE ON eventq_internal.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventq_internal.count_events();

-- A dump restored into a new database creates the extension first and loads the rows of
-- each table afterwards, in any order (in parallel with pg_restore -j). A drain or a
-- retention pass in between would number, route or expire a half-loaded log. So drains
-- and maintenance wait while the restore goes on (src/storage/maintenance.rs): while the
-- session that created the extension is connected, or any session of pg_restore is
-- connected to this database, and for a few seconds after. pg_dump's scripts and
-- pg_restore set row_security = off, which a session that creates the extension
-- otherwise hardly has; it is told. Not dumped itself.
CREATE TABLE eventq_internal.restoring (
    pid           integer NOT NULL,
    backend_start timestamptz,
    -- when a session of the restore was last seen
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
INSERT INTO eventq_internal.restoring (pid, backend_start)
SELECT a.pid, a.backend_start
FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS a
WHERE pg_catalog.current_setting('row_security') = 'off';
DO $tell_restore$
BEGIN
    IF EXISTS (SELECT 1 FROM eventq_internal.restoring) THEN
        RAISE WARNING 'eventq: created with row_security = off, as a restore is: events are drained once this session and every pg_restore session in this database have ended';
    END IF;
END
$tell_restore$;

-- Streams that were dropped: the drain deletes their staged events (which it could not
-- tell from those of a stream whose row a restore has not loaded yet). Kept, as stream
-- ids are never used again.
CREATE TABLE eventq_internal.dropped_streams (
    id integer PRIMARY KEY
);

-- Backups: pg_dump dumps the rows of these tables and the values of these sequences, so a
-- restored database keeps its streams, consumers, cursors, grants, events and tasks, and
-- numbers new events above the restored ones. The drains row the script itself inserts is
-- left out, as restoring it would collide with the new database's own.
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.streams', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.streams_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.dropped_streams', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.event_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.staged_0', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.staged_1', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.staged_2', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.staged_3', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.drains', 'WHERE last_seq <> 0');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.events', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.dedup', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.consumers', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.consumers_id_seq', '');
-- (not grants to roles dropped since: a restore would give them to whichever role has
-- that oid there)
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.grants',
    'WHERE grantee::oid IN (SELECT r.oid FROM pg_catalog.pg_roles r)');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.tasks', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.key_heads', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.key_rechecks', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.key_rechecks_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.routing_gaps', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.routing_gaps_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.expirations', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.expirations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.attempts', '');
SELECT pg_catalog.pg_extension_config_dump('eventq_internal.attempts_id_seq', '');
