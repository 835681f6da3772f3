-- The floor of the held-snapshot run.
WITH picked AS (
    SELECT id FROM floor_held WHERE lease_until < now() ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE floor_held q SET lease_until = now() + interval '30 seconds'
    FROM picked WHERE q.id = picked.id
    RETURNING q.id, q.payload
)
SELECT coalesce(array_agg(id), '{}') AS ids FROM leased \gset
DELETE FROM floor_held WHERE id = ANY (:ids::bigint[]);
