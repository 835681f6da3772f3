SELECT coalesce(array_agg(msg_id), '{}') AS ids FROM pgmq.read(:queue, 30, 10) \gset
SELECT count(*) FROM pgmq.delete(:queue, :ids::bigint[]);
