-- Both contenders on one cluster. The floor is the least a queue can do in plain SQL:
-- INSERT to publish, UPDATE ... SKIP LOCKED to lease, DELETE to ack.
CREATE EXTENSION IF NOT EXISTS eventq;
SELECT eventq.create_stream('bench');
SELECT eventq.create_consumer('bench_worker', 'bench', subjects => '{order.>}');

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
