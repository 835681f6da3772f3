-- Both contenders on one cluster. The floor is the least a queue can do in plain SQL:
-- INSERT to publish, UPDATE ... SKIP LOCKED to lease, DELETE to ack.
CREATE EXTENSION IF NOT EXISTS eventq;
SELECT eventq.create_stream('bench');
-- The clients log in as :user, an application role: it publishes and consumes through its
-- grants, and owns its consumer (unless it is the superuser).
SELECT :'user' <> 'postgres' AS app_role \gset
\if :app_role
CREATE ROLE :"user" LOGIN;
SELECT eventq.grant('publish', 'bench', :'user');
SELECT eventq.grant('consume', 'bench', :'user');
SET ROLE :"user";
\endif
SELECT eventq.create_consumer('bench_worker', 'bench', subjects => '{order.>}');
RESET ROLE;

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

\if :app_role
GRANT ALL ON floor_events, floor_queue TO :"user";
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO :"user";
\endif
