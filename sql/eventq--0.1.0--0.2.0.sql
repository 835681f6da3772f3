-- eventq 0.1.0 -> 0.2.0
--
-- Commit order by transaction id, drains that never wait for applications' transactions,
-- read after commit, the lease guard. What this changes in storage:
--   staging rows carry their transaction's id; staging has a replica identity;
--   the record of drains (the log's committed head); gaps and key rechecks;
--   idle keys keep their row; expired counts become insert-only rows;
--   consumers get start_at, a cleanup position and a check of their patterns;
--   the views no longer read staging;
--   ack, retry, discard and extend_lease take the lease guard's attempt; ignore, and its
--   outcome in the attempts; retry_now and cancel (an operator's actions on tasks);
--   events carry the retry settings they were published with;
--   apply, and the grants view it reads; consumers' sequences (declared action order);
--   privileges: role eventq_admin, grants, consumers' owners; storage closed to everyone
--   but the extension's owner; views that show each role its own part; payloads limited
--   in size;
--   counts of tasks and events kept by triggers, for the views;
--   backups: every table registered for pg_dump, staged events marked with their cluster,
--   drains and maintenance wait while a dump is restored.

-- The counts of tasks and events are seeded below from the rows there are, once triggers
-- hold writers off: under REPEATABLE READ or SERIALIZABLE the seeding would read a snapshot
-- taken before that, and miss what committed in between.
DO $read_committed$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation')
           NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'ALTER EXTENSION eventq UPDATE must run in a READ COMMITTED transaction'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'SET default_transaction_isolation = ''read committed'' in the session, then run it outside BEGIN.';
    END IF;
END
$read_committed$;

-- Staged rows from before the update sort first: they were published before it.
ALTER TABLE eventq_internal.staged ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE eventq_internal.staged ALTER COLUMN xid DROP DEFAULT;
ALTER TABLE eventq_internal.staged REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_0 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_1 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_2 REPLICA IDENTITY FULL;
ALTER TABLE eventq_internal.staged_3 REPLICA IDENTITY FULL;

CREATE TABLE eventq_internal.drains (
    last_seq   bigint PRIMARY KEY,
    events     bigint NOT NULL,
    drained_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO eventq_internal.drains (last_seq, events)
VALUES (coalesce(pg_sequence_last_value('eventq_internal.event_seq'), 0), 0);

CREATE FUNCTION eventq_internal.valid_patterns(patterns text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (SELECT coalesce(bool_and(p IS NOT NULL
                                 AND octet_length(p) BETWEEN 1 AND 255
                                 AND p ~ '^((\*|[A-Za-z0-9_-]+)\.)*(\*|>|[A-Za-z0-9_-]+)$'), true)
        FROM unnest(patterns) AS p);

ALTER TABLE eventq_internal.consumers
    ADD COLUMN start_at timestamptz,
    ADD COLUMN cleanup_seq bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT consumers_patterns_check
        CHECK (eventq_internal.valid_patterns(subjects) AND eventq_internal.valid_patterns(exclude));

CREATE TABLE eventq_internal.expirations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    tasks       bigint NOT NULL
);
CREATE INDEX expirations_by_consumer ON eventq_internal.expirations (consumer_id);
INSERT INTO eventq_internal.expirations (consumer_id, tasks)
SELECT id, expired FROM eventq_internal.consumers WHERE expired > 0;

ALTER TABLE eventq_internal.key_heads ALTER COLUMN head_seq DROP NOT NULL;

CREATE TABLE eventq_internal.key_rechecks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    order_key   text NOT NULL
);
CREATE INDEX key_rechecks_by_key ON eventq_internal.key_rechecks (consumer_id, order_key);

CREATE TABLE eventq_internal.routing_gaps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_id integer NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint
);
CREATE INDEX routing_gaps_by_consumer ON eventq_internal.routing_gaps (consumer_id);

-- Discarded tasks are the few a person looks at (eventq.tasks by state, redrive).
CREATE INDEX tasks_discarded ON eventq_internal.tasks (consumer_id, seq)
    WHERE state = 'discarded';

ALTER TABLE eventq_internal.attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE eventq_internal.attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('completed', 'ignored', 'failed', 'lost', 'discarded'));

-- The views of 0.1.0 go (they are created again, as of 0.2.0, at the end).
DROP VIEW eventq.streams, eventq.consumers, eventq.events, eventq.tasks, eventq.attempts;

ALTER TABLE eventq_internal.consumers DROP COLUMN expired;

-- The lease guard.
DROP FUNCTION eventq.ack(text, bigint[]);
CREATE FUNCTION eventq."ack"(
	"consumer" TEXT,
	"task_ids" bigint[],
	"attempts" INT[] DEFAULT NULL
) RETURNS INT
LANGUAGE c
AS 'MODULE_PATHNAME', 'ack_with_attempts_wrapper';

DROP FUNCTION eventq.retry(text, bigint, text, interval);
CREATE FUNCTION eventq."retry"(
	"consumer" TEXT,
	"task_id" bigint,
	"error" TEXT DEFAULT NULL,
	"delay" interval DEFAULT NULL,
	"attempt" INT DEFAULT NULL
) RETURNS TEXT
LANGUAGE c
AS 'MODULE_PATHNAME', 'retry_with_attempt_wrapper';

DROP FUNCTION eventq.discard(text, bigint, text);
CREATE FUNCTION eventq."discard"(
	"consumer" TEXT,
	"task_id" bigint,
	"reason" TEXT DEFAULT NULL,
	"attempt" INT DEFAULT NULL
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'discard_with_attempt_wrapper';

DROP FUNCTION eventq.extend_lease(text, bigint, interval);
CREATE FUNCTION eventq."extend_lease"(
	"consumer" TEXT,
	"task_id" bigint,
	"lease" interval DEFAULT NULL,
	"attempt" INT DEFAULT NULL
) RETURNS timestamp with time zone
LANGUAGE c
AS 'MODULE_PATHNAME', 'extend_lease_with_attempt_wrapper';

-- Retry settings an event is published with (Medusa's emit options).
DROP FUNCTION eventq.publish(text, text, jsonb, text, jsonb, timestamptz, text);
CREATE FUNCTION eventq."publish"(
	"stream" TEXT,
	"subject" TEXT,
	"payload" jsonb DEFAULT '{}',
	"key" TEXT DEFAULT NULL,
	"headers" jsonb DEFAULT NULL,
	"deliver_at" timestamp with time zone DEFAULT NULL,
	"dedup_key" TEXT DEFAULT NULL,
	"max_attempts" INT DEFAULT NULL,
	"backoff" TEXT DEFAULT NULL,
	"backoff_base" interval DEFAULT NULL
) RETURNS uuid
LANGUAGE c
AS 'MODULE_PATHNAME', 'publish_with_retry_wrapper';

DROP FUNCTION eventq.publish_batch(text, text[], jsonb[], text[], jsonb[]);
CREATE FUNCTION eventq."publish_batch"(
	"stream" TEXT,
	"subjects" text[],
	"payloads" jsonb[],
	"keys" text[] DEFAULT NULL,
	"headers" jsonb[] DEFAULT NULL,
	"max_attempts" INT DEFAULT NULL,
	"backoff" TEXT DEFAULT NULL,
	"backoff_base" interval DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE c
AS 'MODULE_PATHNAME', 'publish_batch_with_retry_wrapper';

-- Declared action order (Seqy's topics with actions).
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
ALTER TABLE eventq_internal.key_heads
    ADD COLUMN sequence_done bigint NOT NULL DEFAULT 0, ADD COLUMN blocked_until timestamptz;
CREATE INDEX key_heads_blocked ON eventq_internal.key_heads (consumer_id, blocked_until)
    WHERE blocked_until IS NOT NULL;

DROP FUNCTION eventq.create_consumer(text, text, text[], text[], text, text, integer, text,
    interval, interval, interval, timestamptz);
CREATE FUNCTION eventq."create_consumer"(
	"name" TEXT,
	"stream" TEXT,
	"subjects" TEXT[] DEFAULT '{>}',
	"exclude" TEXT[] DEFAULT '{}',
	"mode" TEXT DEFAULT 'task',
	"ordering" TEXT DEFAULT 'none',
	"max_attempts" INT DEFAULT 10,
	"backoff" TEXT DEFAULT 'exponential',
	"backoff_base" interval DEFAULT '1 second',
	"backoff_max" interval DEFAULT '1 hour',
	"lease" interval DEFAULT '30 seconds',
	"start_at" timestamp with time zone DEFAULT NULL,
	"sequence" TEXT[] DEFAULT NULL,
	"sequence_timeout" interval DEFAULT NULL
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_consumer_with_sequence_wrapper';

DROP FUNCTION eventq.alter_consumer(text, text[], text[], text, text, integer, text,
    interval, interval, interval, timestamptz);
CREATE FUNCTION eventq."alter_consumer"(
	"name" TEXT,
	"subjects" TEXT[] DEFAULT NULL,
	"exclude" TEXT[] DEFAULT NULL,
	"mode" TEXT DEFAULT NULL,
	"ordering" TEXT DEFAULT NULL,
	"max_attempts" INT DEFAULT NULL,
	"backoff" TEXT DEFAULT NULL,
	"backoff_base" interval DEFAULT NULL,
	"backoff_max" interval DEFAULT NULL,
	"lease" interval DEFAULT NULL,
	"start_at" timestamp with time zone DEFAULT NULL,
	"sequence" TEXT[] DEFAULT NULL,
	"sequence_timeout" interval DEFAULT NULL
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'alter_consumer_with_sequence_wrapper';

-- Declarative setup.
CREATE FUNCTION eventq."apply"(
	"spec" jsonb,
	"dry_run" bool DEFAULT false
) RETURNS jsonb
LANGUAGE c
AS 'MODULE_PATHNAME', 'apply_wrapper';

-- A stream's newest events, read from the end of the log (the view sorts the whole stream).
CREATE FUNCTION eventq."newest_events"(
	"stream" TEXT,
	"max" INT DEFAULT 10,
	"before" bigint DEFAULT NULL
) RETURNS TABLE (
	"stream" TEXT,
	"seq" bigint,
	"event_id" uuid,
	"subject" TEXT,
	"key" TEXT,
	"payload" jsonb,
	"headers" jsonb,
	"published_at" timestamp with time zone,
	"deliver_at" timestamp with time zone
)
STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'newest_events_wrapper';

-- A handler's "nothing to do" (cf-eventhub's ignored outcome).
CREATE FUNCTION eventq."ignore"(
	"consumer" TEXT,
	"task_id" bigint,
	"reason" TEXT DEFAULT NULL,
	"attempt" INT DEFAULT NULL
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'ignore_wrapper';

-- An operator's actions on tasks (the console's "retry now" and "discard").
CREATE FUNCTION eventq."retry_now"(
	"consumer" TEXT,
	"task_ids" bigint[] DEFAULT NULL
) RETURNS INT
LANGUAGE c
AS 'MODULE_PATHNAME', 'retry_now_wrapper';
CREATE FUNCTION eventq."cancel"(
	"consumer" TEXT,
	"task_ids" bigint[],
	"reason" TEXT DEFAULT NULL
) RETURNS INT
LANGUAGE c
AS 'MODULE_PATHNAME', 'cancel_wrapper';

-- Worker health.
CREATE FUNCTION eventq."worker_health"() RETURNS TABLE (
	"database" TEXT,
	"pid" INT,
	"started_at" timestamp with time zone,
	"last_drain_at" timestamp with time zone,
	"drained" bigint,
	"last_error" TEXT,
	"last_error_at" timestamp with time zone
)
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'worker_health_wrapper';

-- Counting tasks and events again, for the views' counts.
CREATE FUNCTION eventq."recount"() RETURNS void
STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'recount_wrapper';

-- Privileges.
REVOKE ALL ON SCHEMA eventq_internal FROM PUBLIC;

DO $create_admin_role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'eventq_admin') THEN
        CREATE ROLE eventq_admin NOLOGIN;
        COMMENT ON ROLE eventq_admin IS 'administers eventq: streams, consumers, grants';
    END IF;
END
$create_admin_role$;

-- No foreign keys in storage (see sql/schema.sql).
ALTER TABLE eventq_internal.consumers DROP CONSTRAINT consumers_stream_id_fkey;

-- Existing consumers belong to the extension's owner: administrators, and roles granted
-- manage on their stream, work them.
ALTER TABLE eventq_internal.consumers ADD COLUMN owner regrole;
UPDATE eventq_internal.consumers
SET owner = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'eventq_internal');
ALTER TABLE eventq_internal.consumers ALTER COLUMN owner SET NOT NULL;

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

-- 0.1.0 had no privileges of its own: applications were given rights on its tables. Roles
-- that could stage events may publish to every stream; roles that could change tasks or
-- consumers may manage every stream. Then their rights on storage go (with them, a role
-- could write around every check), and a warning names them.
INSERT INTO eventq_internal.grants (stream_id, grantee, privilege, granted_by)
SELECT DISTINCT s.id, r.oid::regrole, p.privilege,
       (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'eventq_internal')::regrole
FROM eventq_internal.streams s
CROSS JOIN pg_catalog.pg_roles r
CROSS JOIN (VALUES ('publish', 'eventq_internal.staged', 'INSERT'),
                   ('manage', 'eventq_internal.tasks', 'UPDATE'),
                   ('manage', 'eventq_internal.consumers', 'UPDATE')) AS p (privilege, relation, action)
WHERE NOT r.rolsuper
  AND r.rolname !~ '^pg_'
  AND r.oid <> (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'eventq_internal')
  AND pg_catalog.has_table_privilege(r.oid, p.relation, p.action)
ON CONFLICT DO NOTHING;

DO $revoke_storage_rights$
DECLARE
    holder record;
    holders text[] := '{}';
BEGIN
    FOR holder IN
        SELECT DISTINCT a.grantee
        FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
        WHERE c.relnamespace = 'eventq_internal'::regnamespace AND a.grantee <> c.relowner
        UNION
        SELECT DISTINCT a.grantee
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
        WHERE n.nspname = 'eventq_internal' AND a.grantee <> n.nspowner
    LOOP
        EXECUTE pg_catalog.format(
            'REVOKE ALL ON ALL TABLES IN SCHEMA eventq_internal FROM %1$s;
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA eventq_internal FROM %1$s;
             REVOKE ALL ON SCHEMA eventq_internal FROM %1$s',
            CASE WHEN holder.grantee = 0 THEN 'PUBLIC' ELSE holder.grantee::regrole::text END);
        holders := holders || CASE WHEN holder.grantee = 0 THEN 'PUBLIC' ELSE holder.grantee::regrole::text END;
    END LOOP;
    IF pg_catalog.cardinality(holders) > 0 THEN
        RAISE WARNING 'eventq: revoked the privileges of % on eventq''s tables', pg_catalog.array_to_string(holders, ', ')
            USING HINT = 'eventq 0.2.0 checks privileges itself: roles that could publish or change tasks now hold publish or manage grants (eventq.grant) on every stream.';
    END IF;
END
$revoke_storage_rights$;

-- Staged events from before the update were published in this cluster.
DO $mark_origin$
BEGIN
    EXECUTE pg_catalog.format(
        'ALTER TABLE eventq_internal.staged ADD COLUMN origin bigint NOT NULL DEFAULT %s',
        (SELECT c.system_identifier FROM pg_catalog.pg_control_system() c));
END
$mark_origin$;
ALTER TABLE eventq_internal.staged ALTER COLUMN origin DROP DEFAULT;

-- Retry settings an event is published with (after origin, as in a new installation).
ALTER TABLE eventq_internal.staged
    ADD COLUMN max_attempts integer, ADD COLUMN backoff text, ADD COLUMN backoff_base interval;
ALTER TABLE eventq_internal.events
    ADD COLUMN max_attempts integer, ADD COLUMN backoff text, ADD COLUMN backoff_base interval;

-- A consumer's declared action order (after owner, as in a new installation).
ALTER TABLE eventq_internal.consumers ADD COLUMN sequence text[], ADD COLUMN sequence_timeout interval;


CREATE TABLE eventq_internal.restoring (
    pid           integer NOT NULL,
    backend_start timestamptz,
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

CREATE TABLE eventq_internal.dropped_streams (
    id integer PRIMARY KEY
);
-- staged events left by streams 0.1.0 dropped
INSERT INTO eventq_internal.dropped_streams (id)
SELECT DISTINCT s.stream_id FROM eventq_internal.staged s
WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.streams st WHERE st.id = s.stream_id);

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

CREATE FUNCTION eventq."grant"(
	"privilege" TEXT,
	"stream" TEXT,
	"role" TEXT,
	"subjects" TEXT[] DEFAULT NULL
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'grant_wrapper';

CREATE FUNCTION eventq."revoke"(
	"privilege" TEXT,
	"stream" TEXT,
	"role" TEXT
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'revoke_wrapper';

-- Counts of tasks per consumer and state, and of events per stream, for the views.
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

-- The counts start from the rows there are. The triggers above already hold off every
-- writer of tasks and events until this update commits.
INSERT INTO eventq_internal.task_counts (consumer_id, state, tasks)
SELECT consumer_id, state, count(*) FROM eventq_internal.tasks GROUP BY consumer_id, state;
INSERT INTO eventq_internal.event_counts (stream_id, events)
SELECT stream_id, count(*) FROM eventq_internal.events GROUP BY stream_id;

-- The views, as of 0.2.0 (as sql/views.sql creates them).
-- Views for people and dashboards. Counts of tasks and events come from the counts kept
-- beside them (task_counts, event_counts); the rest joins on every read: fine for a console
-- or a test, not for a hot loop. None reads staging: a dashboard idling inside a
-- transaction would otherwise keep staging from being truncated.
--
-- Everyone may select from them, and each role sees only what it holds a privilege on:
-- administrators everything; other roles the streams they have a grant on or a consumer
-- of, the consumers they own (as members of the owning role) or manage, and the events of
-- streams they consume (within the subjects of their grant) or manage. The views read
-- storage as their owner; CURRENT_USER inside them is the role that reads. They are
-- security barriers: a reader's own conditions (a cast that fails, a function that
-- raises) run only on rows that passed the view's, never on the others.

-- Whether the role reading administers eventq: a superuser, the owner of eventq's storage,
-- or a member of eventq_admin (as api::access decides for the functions). The views call it
-- as `(SELECT caller_is_admin())`, which Postgres evaluates once per query; called plainly
-- beside a condition on each row, it ran for every row (2.8 s instead of 0.3 for the
-- newest ten of 400k events).
CREATE FUNCTION eventq_internal.caller_is_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.pg_has_role(CURRENT_USER,
           (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'eventq_internal'),
           'USAGE')
    OR coalesce(pg_catalog.pg_has_role(CURRENT_USER, pg_catalog.to_regrole('eventq_admin'), 'USAGE'),
                false);

-- The grants the role reading holds, directly or through the roles it belongs to.
CREATE VIEW eventq_internal.caller_grants WITH (security_barrier) AS
SELECT g.stream_id, g.privilege, g.subjects_re
FROM eventq_internal.grants g
WHERE pg_catalog.pg_has_role(CURRENT_USER, g.grantee, 'USAGE');

-- The consumers the role reading may see.
CREATE VIEW eventq_internal.caller_consumers WITH (security_barrier) AS
SELECT c.id, c.name, c.stream_id, c.mode, c.subjects, c.exclude, c.include_re, c.exclude_re,
       c.ordering, c.max_attempts, c.backoff, c.backoff_base, c.backoff_max, c.lease, c.paused,
       c.cursor_seq, c.start_at, c.created_at, c.owner, c.sequence, c.sequence_timeout
FROM eventq_internal.consumers c
WHERE (SELECT eventq_internal.caller_is_admin())
   OR pg_catalog.pg_has_role(CURRENT_USER, c.owner, 'USAGE')
   OR EXISTS (SELECT 1 FROM eventq_internal.caller_grants g
              WHERE g.stream_id = c.stream_id AND g.privilege = 'manage');

CREATE VIEW eventq.streams WITH (security_barrier) AS
SELECT s.name,
       s.retention,
       coalesce(n.events, 0) AS events,
       (SELECT max(e.seq) FROM eventq_internal.events e WHERE e.stream_id = s.id) AS head_seq,
       (SELECT min(e.published_at) FROM eventq_internal.events e
         WHERE e.stream_id = s.id AND e.published_at > '-infinity') AS oldest_at,
       (SELECT max(e.published_at) FROM eventq_internal.events e
         WHERE e.stream_id = s.id AND e.published_at > '-infinity') AS newest_at,
       s.created_at
FROM eventq_internal.streams s
LEFT JOIN (SELECT n.stream_id, sum(n.events)::bigint AS events
           FROM eventq_internal.event_counts n GROUP BY n.stream_id) n ON n.stream_id = s.id
WHERE (SELECT eventq_internal.caller_is_admin())
   OR EXISTS (SELECT 1 FROM eventq_internal.caller_grants g WHERE g.stream_id = s.id)
   OR EXISTS (SELECT 1 FROM eventq_internal.caller_consumers c WHERE c.stream_id = s.id);

-- A log consumer's unread events for eventq.consumers (src/api/log.rs): every role may call
-- it; it answers only for consumers the role sees. ROWS 1: at the default estimate (1000
-- rows per consumer) the view's cost made Postgres compile each read with JIT (36 ms).
CREATE FUNCTION eventq_internal.unread(consumer_id integer)
RETURNS TABLE (events bigint, oldest_at timestamptz)
LANGUAGE c STABLE STRICT ROWS 1
AS 'MODULE_PATHNAME', 'unread_wrapper';

-- The counts per state come from task_counts (sql/schema.sql), which the triggers on tasks
-- keep, not from counting tasks: that took seconds at a million events.
-- `lag`: for a task consumer, its unfinished tasks; for a log consumer, the matching events
-- after its cursor. `oldest_due_age`: for a task consumer, how long the task it would work
-- next has been due (since it was made, unless it was held back or retried): the first
-- available one in pull order, or a retry or delayed task whose time has come, if that was
-- due earlier (two index lookups, where the oldest of all available tasks would need a
-- scan of them all); for a log consumer, how old the first unread event is. A log consumer's
-- two come from eventq_internal.unread (src/api/log.rs), which counts from where it last
-- counted when it can.
CREATE VIEW eventq.consumers WITH (security_barrier) AS
SELECT c.name,
       s.name AS stream,
       c.mode,
       c.paused,
       coalesce(t.available, 0) AS available,
       coalesce(t.waiting, 0) AS waiting,
       coalesce(t.running, 0) AS running,
       coalesce(t.retryable, 0) AS retryable,
       coalesce(t.completed, 0) AS completed,
       coalesce(t.discarded, 0) AS discarded,
       coalesce((SELECT sum(x.tasks) FROM eventq_internal.expirations x
                 WHERE x.consumer_id = c.id), 0)::bigint AS expired,
       CASE c.mode
         WHEN 'task' THEN coalesce(t.available + t.waiting + t.running + t.retryable, 0)
         ELSE u.events
       END AS lag,
       CASE c.mode
         WHEN 'task' THEN
           now() - least(
                    (SELECT CASE WHEN isfinite(tk.run_at) THEN tk.run_at ELSE tk.created_at END
                     FROM eventq_internal.tasks tk
                     WHERE tk.consumer_id = c.id AND tk.state = 'available'
                     ORDER BY tk.seq LIMIT 1),
                    (SELECT tk.run_at FROM eventq_internal.tasks tk
                     WHERE tk.consumer_id = c.id AND tk.state IN ('scheduled', 'retryable')
                       AND tk.run_at <= now()
                     ORDER BY tk.run_at LIMIT 1))
         ELSE now() - u.oldest_at
       END AS oldest_due_age,
       CASE WHEN c.mode = 'log' THEN c.cursor_seq END AS cursor_seq,
       c.subjects,
       c.exclude,
       c.ordering,
       c.max_attempts,
       c.backoff,
       c.backoff_base,
       c.backoff_max,
       c.lease,
       c.start_at,
       c.created_at,
       c.owner::text AS owner,
       c.sequence,
       c.sequence_timeout
FROM eventq_internal.caller_consumers c
JOIN eventq_internal.streams s ON s.id = c.stream_id
LEFT JOIN (
    SELECT n.consumer_id,
           coalesce(sum(n.tasks) FILTER (WHERE n.state IN ('available', 'scheduled')), 0)::bigint AS available,
           coalesce(sum(n.tasks) FILTER (WHERE n.state = 'waiting'), 0)::bigint AS waiting,
           coalesce(sum(n.tasks) FILTER (WHERE n.state = 'running'), 0)::bigint AS running,
           coalesce(sum(n.tasks) FILTER (WHERE n.state = 'retryable'), 0)::bigint AS retryable,
           coalesce(sum(n.tasks) FILTER (WHERE n.state = 'completed'), 0)::bigint AS completed,
           coalesce(sum(n.tasks) FILTER (WHERE n.state = 'discarded'), 0)::bigint AS discarded
    FROM eventq_internal.task_counts n
    GROUP BY n.consumer_id
) t ON t.consumer_id = c.id AND c.mode = 'task'
-- STRICT: a NULL id (a task consumer) returns no row without calling it.
LEFT JOIN LATERAL eventq_internal.unread(CASE c.mode WHEN 'log' THEN c.id END) u ON true;

CREATE VIEW eventq.events WITH (security_barrier) AS
SELECT s.name AS stream,
       e.seq,
       e.id AS event_id,
       e.subject,
       e.key,
       e.payload,
       e.headers,
       e.published_at,
       e.deliver_at
FROM eventq_internal.events e
JOIN eventq_internal.streams s ON s.id = e.stream_id
WHERE (SELECT eventq_internal.caller_is_admin())
   OR EXISTS (SELECT 1 FROM eventq_internal.caller_grants g
              WHERE g.stream_id = e.stream_id
                AND (g.privilege = 'manage'
                     OR (g.privilege = 'consume'
                         AND (g.subjects_re IS NULL OR e.subject ~ g.subjects_re))));

-- `state` shows a task held back by deliver_at as `available` (with its run_at ahead).
-- The tasks are read in one branch per stored state, each naming its state as a constant:
-- a reader's `state = 'available'` leaves only the branches that can match (the others
-- fold to false as the query is planned, or are skipped as it starts, for a parameter),
-- and each of those reads the partial index of its state. With the state computed in one
-- scan (a CASE), no index served the filter: counting a consumer's few available tasks
-- read every task it had (0.27 s at 100k tasks). Completed tasks, the many, have no index
-- of their own: their branch reads them as the single scan did.
-- The branches are joined to the events below the top of the view: a UNION ALL at the top
-- of a view is flattened into its branches, security barrier or not, and a reader's own
-- condition (a function that raises, a failing cast) then ran on every task before the
-- consumers the reader may not see were filtered out. Each branch joins the consumers
-- itself, so that the planner may read a consumer's tasks by index or hash all of them.
CREATE VIEW eventq.tasks WITH (security_barrier) AS
SELECT t.consumer,
       t.seq AS task_id,
       e.id AS event_id,
       t.seq,
       e.subject,
       e.key,
       t.state,
       t.attempt,
       t.run_at,
       t.lease_until,
       t.last_error,
       t.created_at,
       t.started_at,
       t.finished_at
FROM (
    SELECT c.name AS consumer, c.stream_id, t.seq, 'available' AS state, t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'available'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'available', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'scheduled'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'waiting', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'waiting'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'running', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'running'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'retryable', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'retryable'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'completed', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'completed'
    UNION ALL
    SELECT c.name, c.stream_id, t.seq, 'discarded', t.attempt, t.run_at,
           t.lease_until, t.last_error, t.created_at, t.started_at, t.finished_at
    FROM eventq_internal.caller_consumers c
    JOIN eventq_internal.tasks t ON t.consumer_id = c.id AND t.state = 'discarded'
) t
LEFT JOIN eventq_internal.events e ON e.stream_id = t.stream_id AND e.seq = t.seq;

-- Attempts that failed, were lost, were discarded or ignored are recorded as they end; a
-- completed attempt is the completed task itself (unless it was ignored: the same attempt).
CREATE VIEW eventq.attempts WITH (security_barrier) AS
SELECT c.name AS consumer, a.task_id, a.attempt, a.outcome, a.error, a.started_at, a.finished_at
FROM eventq_internal.attempts a
JOIN eventq_internal.caller_consumers c ON c.id = a.consumer_id
UNION ALL
SELECT c.name, t.seq, t.attempt, 'completed', NULL, t.started_at, t.finished_at
FROM eventq_internal.tasks t
JOIN eventq_internal.caller_consumers c ON c.id = t.consumer_id
WHERE t.state = 'completed'
  AND NOT EXISTS (SELECT 1 FROM eventq_internal.attempts a
                  WHERE a.consumer_id = t.consumer_id AND a.task_id = t.seq
                    AND a.attempt = t.attempt AND a.outcome = 'ignored'
                    AND a.started_at IS NOT DISTINCT FROM t.started_at);

-- The grants of eventq's privileges (eventq.grant): all of them for administrators, the
-- ones a role holds (directly or through its roles) for the others.
CREATE VIEW eventq.grants WITH (security_barrier) AS
SELECT g.privilege,
       s.name AS stream,
       pg_catalog.pg_get_userbyid(g.grantee)::text AS role,
       g.subjects,
       pg_catalog.pg_get_userbyid(g.granted_by)::text AS granted_by,
       g.granted_at
FROM eventq_internal.grants g
JOIN eventq_internal.streams s ON s.id = g.stream_id
WHERE (SELECT eventq_internal.caller_is_admin())
   OR pg_catalog.pg_has_role(CURRENT_USER, g.grantee, 'USAGE');

-- The background workers, one per database with eventq (with eventq preloaded): is draining
-- alive? `last_error` is what failed last, when. Empty without preloading, and for roles
-- that do not administer eventq (the condition is checked before the function is called).
CREATE VIEW eventq.workers WITH (security_barrier) AS
SELECT * FROM eventq.worker_health() WHERE eventq_internal.caller_is_admin();

-- The API is for everyone: each function checks the caller's privileges itself.
GRANT USAGE ON SCHEMA eventq TO PUBLIC;
GRANT SELECT ON eventq.streams, eventq.consumers, eventq.events, eventq.tasks, eventq.attempts,
    eventq.workers, eventq.grants TO PUBLIC;
