SELECT coalesce(array_agg(task_id), '{}') AS ids FROM eventq.pull('bench_worker', 10) \gset
SELECT eventq.ack('bench_worker', :ids::bigint[]);
