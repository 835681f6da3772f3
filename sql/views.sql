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
