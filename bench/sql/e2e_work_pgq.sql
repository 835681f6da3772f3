-- As e2e_work_eventq.sql, for PgQ: a consumer reads whole batches (between two ticks of
-- pgqd), one reader at a time.
SELECT coalesce(pgq.next_batch(:queue, 'reader'), 0) AS batch \gset
\if :batch
SELECT count(*) AS n, coalesce(array_agg(extract(epoch FROM clock_timestamp() - ev_time)), '{}') AS lat
FROM pgq.get_batch_events(:batch) \gset
SELECT pgq.finish_batch(:batch);
\if :n
INSERT INTO bench_tally (sys, n, lat) VALUES ('pgq', :n, :lat::float8[]);
\endif
\else
\sleep 5 ms
\endif
