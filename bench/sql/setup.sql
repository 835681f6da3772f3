-- Every contender on one cluster, as the role :user (an application role with grants,
-- unless it is postgres). The floor is the least a queue can do in plain SQL: INSERT to
-- publish, UPDATE ... SKIP LOCKED to lease, DELETE to ack. pgmq's SQL is loaded before
-- this script; PgQ is Debian's postgresql-15-pgq3.
CREATE EXTENSION IF NOT EXISTS eventq;
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT :'user' <> 'postgres' AS app_role \gset

-- eventq: a stream per workload. The clients publish and consume through grants and own
-- their consumers.
SELECT eventq.create_stream(s) FROM unnest('{bench,fan,log,e2e,soak}'::text[]) s;
\if :app_role
CREATE ROLE :"user" LOGIN;
SELECT eventq.grant(p, s, :'user')
FROM unnest('{publish,consume}'::text[]) p, unnest('{bench,fan,log,e2e,soak}'::text[]) s;
SET ROLE :"user";
\endif
-- bench_worker works the backlog in free rounds, bench_held the same backlog under a held
-- snapshot.
SELECT eventq.create_consumer('bench_worker', 'bench', subjects => '{order.>}');
SELECT eventq.create_consumer('bench_held', 'bench', subjects => '{order.>}');
SELECT eventq.create_consumer('fan_' || n, 'fan') FROM generate_series(1, 10) n;
SELECT eventq.create_consumer('log_reader', 'log', mode => 'log');
SELECT eventq.create_consumer('log_none', 'log', mode => 'log', subjects => '{refund.>}');
SELECT eventq.create_consumer('e2e_worker', 'e2e');
SELECT eventq.create_consumer('soak_worker', 'soak');
RESET ROLE;

-- The floor.
CREATE TABLE floor_events (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    payload      jsonb NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE floor_queue (
    id          bigserial PRIMARY KEY,
    payload     jsonb NOT NULL,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE TABLE floor_held (LIKE floor_queue INCLUDING ALL);

-- pgmq: plain queues (logged, not partitioned), one per workload.
SELECT pgmq.create(q)
FROM unnest('{pub,work,held,e2e,soak}'::text[] || array(SELECT 'fan_' || n FROM generate_series(1, 10) n)) q;

-- PgQ: a queue per workload; fan-out is ten consumers registered on one queue.
SELECT pgq.create_queue(q) FROM unnest('{pub,fan,log,e2e,soak}'::text[]) q;
SELECT pgq.register_consumer('fan', 'reader_' || n) FROM generate_series(1, 10) n;
SELECT pgq.register_consumer(q, 'reader') FROM unnest('{log,e2e,soak}'::text[]) q;
-- Ticks (batch boundaries) every 1000 events in the log read, and at least every 100 ms
-- end to end, which is as low a latency as PgQ is configured for in practice.
SELECT pgq.set_queue_config('log', 'ticker_max_count', '1000');
SELECT pgq.set_queue_config(q, 'ticker_max_lag', '100 milliseconds') FROM unnest('{e2e,soak}'::text[]) q;
-- Rotation within the soak, to show its effect.
SELECT pgq.set_queue_config('soak', 'rotation_period', '30 seconds');

-- What the workers of the end-to-end and soak runs delivered: one row per non-empty pull,
-- with each event's age (seconds since its publish) when it was pulled. Insert-only and
-- unlogged, the same cost for every contender.
CREATE UNLOGGED TABLE bench_tally (
    sys text NOT NULL,
    n   integer NOT NULL,
    lat float8[] NOT NULL,
    at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

\if :app_role
GRANT ALL ON floor_events, floor_queue, floor_held, bench_tally TO :"user";
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO :"user";
GRANT USAGE ON SCHEMA pgmq TO :"user";
GRANT ALL ON ALL TABLES IN SCHEMA pgmq TO :"user";
GRANT ALL ON ALL SEQUENCES IN SCHEMA pgmq TO :"user";
GRANT pgq_reader, pgq_writer TO :"user";
\endif
