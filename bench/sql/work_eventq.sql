SELECT coalesce(array_agg(task_id), '{}') AS ids FROM eventq.pull(:consumer, 10) \gset
SELECT eventq.ack(:consumer, :ids::bigint[]);
