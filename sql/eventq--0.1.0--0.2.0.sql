-- eventq 0.1.0 -> 0.2.0
--
-- Commit order by transaction id, drains that never wait for applications' transactions,
-- read after commit, the lease guard. What this changes in storage:
--   staging rows carry their transaction's id; staging has a replica identity;
--   the record of drains (the log's committed head); gaps and key rechecks;
--   idle keys keep their row; expired counts become insert-only rows;
--   consumers get start_at, a cleanup position and a check of their patterns;
--   the views no longer read staging;
--   ack, retry, discard and extend_lease take the lease guard's attempt.

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

ALTER TABLE eventq_internal.attempts DROP CONSTRAINT attempts_outcome_check;
ALTER TABLE eventq_internal.attempts ADD CONSTRAINT attempts_outcome_check
    CHECK (outcome IN ('completed', 'failed', 'lost', 'discarded'));

-- The views, as of 0.2.0.
DROP VIEW eventq.streams, eventq.consumers, eventq.events, eventq.tasks, eventq.attempts;

ALTER TABLE eventq_internal.consumers DROP COLUMN expired;

-- Views for people and dashboards. They count and join on every read: fine for a console
-- or a test, not for a hot loop. None reads staging: a dashboard idling inside a
-- transaction would otherwise keep staging from being truncated.

CREATE VIEW eventq.streams AS
SELECT s.name,
       s.retention,
       (SELECT count(*) FROM eventq_internal.events e WHERE e.stream_id = s.id) AS events,
       (SELECT max(e.seq) FROM eventq_internal.events e WHERE e.stream_id = s.id) AS head_seq,
       (SELECT min(e.published_at) FROM eventq_internal.events e
         WHERE e.stream_id = s.id AND e.published_at > '-infinity') AS oldest_at,
       (SELECT max(e.published_at) FROM eventq_internal.events e
         WHERE e.stream_id = s.id AND e.published_at > '-infinity') AS newest_at,
       s.created_at
FROM eventq_internal.streams s;

-- `lag`: for a task consumer, its unfinished tasks; for a log consumer, the matching events
-- after its cursor. `oldest_due_age`: how long the oldest task that could be pulled now has
-- been due, or how old the first unread event of a log consumer is.
CREATE VIEW eventq.consumers AS
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
         ELSE (SELECT count(*) FROM eventq_internal.events e
               WHERE e.stream_id = c.stream_id AND e.seq > c.cursor_seq
                 AND (c.include_re IS NULL OR e.subject ~ c.include_re)
                 AND (c.exclude_re IS NULL OR e.subject !~ c.exclude_re)
                 AND (c.start_at IS NULL OR e.published_at >= c.start_at))
       END AS lag,
       CASE c.mode
         WHEN 'task' THEN CASE WHEN isfinite(t.oldest_due) THEN now() - t.oldest_due END
         ELSE now() - (SELECT e.published_at FROM eventq_internal.events e
                       WHERE e.stream_id = c.stream_id AND e.seq > c.cursor_seq
                         AND (c.include_re IS NULL OR e.subject ~ c.include_re)
                         AND (c.exclude_re IS NULL OR e.subject !~ c.exclude_re)
                         AND (c.start_at IS NULL OR e.published_at >= c.start_at)
                       ORDER BY e.seq LIMIT 1)
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
       c.created_at
FROM eventq_internal.consumers c
JOIN eventq_internal.streams s ON s.id = c.stream_id
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE tk.state IN ('available', 'scheduled')) AS available,
           count(*) FILTER (WHERE tk.state = 'waiting') AS waiting,
           count(*) FILTER (WHERE tk.state = 'running') AS running,
           count(*) FILTER (WHERE tk.state = 'retryable') AS retryable,
           count(*) FILTER (WHERE tk.state = 'completed') AS completed,
           count(*) FILTER (WHERE tk.state = 'discarded') AS discarded,
           min(tk.run_at) FILTER (WHERE tk.state IN ('available', 'scheduled', 'retryable')
                                    AND tk.run_at <= now()) AS oldest_due
    FROM eventq_internal.tasks tk
    WHERE tk.consumer_id = c.id
) t ON c.mode = 'task';

CREATE VIEW eventq.events AS
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
JOIN eventq_internal.streams s ON s.id = e.stream_id;

-- `state` shows a task held back by deliver_at as `available` (with its run_at ahead).
CREATE VIEW eventq.tasks AS
SELECT c.name AS consumer,
       t.seq AS task_id,
       e.id AS event_id,
       t.seq,
       e.subject,
       e.key,
       CASE t.state WHEN 'scheduled' THEN 'available' ELSE t.state::text END AS state,
       t.attempt,
       t.run_at,
       t.lease_until,
       t.last_error,
       t.created_at,
       t.started_at,
       t.finished_at
FROM eventq_internal.tasks t
JOIN eventq_internal.consumers c ON c.id = t.consumer_id
LEFT JOIN eventq_internal.events e ON e.stream_id = c.stream_id AND e.seq = t.seq;

-- Attempts that failed, were lost or were discarded are recorded as they end; a completed
-- attempt is the completed task itself.
CREATE VIEW eventq.attempts AS
SELECT c.name AS consumer, a.task_id, a.attempt, a.outcome, a.error, a.started_at, a.finished_at
FROM eventq_internal.attempts a
JOIN eventq_internal.consumers c ON c.id = a.consumer_id
UNION ALL
SELECT c.name, t.seq, t.attempt, 'completed', NULL, t.started_at, t.finished_at
FROM eventq_internal.tasks t
JOIN eventq_internal.consumers c ON c.id = t.consumer_id
WHERE t.state = 'completed';

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

-- The background workers, one per database with eventq (with eventq preloaded): is draining
-- alive? `last_error` is what failed last, when. Empty without preloading.
CREATE VIEW eventq.workers AS
SELECT * FROM eventq.worker_health();
