INSERT INTO floor_events (subject, payload)
SELECT 'order.created', '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}'::jsonb
FROM generate_series(1, 1000);
