-- As e2e_work_eventq.sql, for pgmq: read 10 (30 s visibility timeout), delete them.
SELECT coalesce(array_agg(msg_id), '{}') AS ids, count(*) AS n,
       coalesce(array_agg(extract(epoch FROM clock_timestamp() - enqueued_at)), '{}') AS lat
FROM pgmq.read(:queue, 30, 10) \gset
\if :n
SELECT count(*) FROM pgmq.delete(:queue, :ids::bigint[]);
INSERT INTO bench_tally (sys, n, lat) VALUES ('pgmq', :n, :lat::float8[]);
\else
\sleep 5 ms
\endif
