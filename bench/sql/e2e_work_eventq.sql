-- A worker of the end-to-end and soak runs: pull 10, ack them, record what it got and how
-- long after its publish each was pulled; when nothing came, wait 5 ms before asking again.
SELECT coalesce(array_agg(task_id), '{}') AS ids, count(*) AS n,
       coalesce(array_agg(extract(epoch FROM clock_timestamp() - published_at)), '{}') AS lat
FROM eventq.pull(:consumer, 10) \gset
\if :n
SELECT eventq.ack(:consumer, :ids::bigint[]);
INSERT INTO bench_tally (sys, n, lat) VALUES ('eventq', :n, :lat::float8[]);
\else
\sleep 5 ms
\endif
