SELECT coalesce(array_agg(task_id), '{}') AS ids FROM eventq.pull('soak_worker', 10) \gset
SELECT eventq.ack('soak_worker', :ids::bigint[]);
