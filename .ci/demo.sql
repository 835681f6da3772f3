-- The tour `make demo` runs. Every statement here works as written in psql.
\pset footer off
\echo '== a stream, a task consumer for order events, and a log consumer for everything'
CREATE EXTENSION eventq;
SELECT eventq.create_stream('orders');
SELECT eventq.create_consumer('mailer', 'orders', subjects => '{order.created}', max_attempts => 3);
SELECT eventq.create_consumer('audit', 'orders', mode => 'log');

\echo '== publish inside a business transaction: the events exist if and only if it commits'
BEGIN;
SELECT eventq.publish('orders', 'order.created', '{"order": 1, "total": 42}', key => 'seller-7');
SELECT eventq.publish('orders', 'order.paid', '{"order": 1}', key => 'seller-7');
COMMIT;
BEGIN;
SELECT eventq.publish('orders', 'order.created', '{"order": 2}');
ROLLBACK;

\echo '== a worker pulls, handles, acks'
SELECT task_id, subject, payload, attempt FROM eventq.pull('mailer', 10);
SELECT eventq.ack('mailer', ARRAY(SELECT task_id FROM eventq.tasks WHERE consumer = 'mailer' AND state = 'running'));

\echo '== a failure is retried with backoff'
SELECT eventq.publish('orders', 'order.created', '{"order": 3}');
SELECT eventq.retry('mailer', task_id, 'smtp timeout') AS new_state FROM eventq.pull('mailer');
SELECT consumer, task_id, state, attempt, run_at > now() AS later, last_error FROM eventq.tasks ORDER BY task_id;

\echo '== the log consumer reads everything in commit order and commits its position'
SELECT seq, subject, payload FROM eventq.fetch('audit');
SELECT eventq.commit('audit', (SELECT max(seq) FROM eventq.fetch('audit')));

\echo '== where everything stands'
SELECT name, mode, available, running, retryable, completed, lag FROM eventq.consumers;
SELECT name, events, head_seq FROM eventq.streams;
