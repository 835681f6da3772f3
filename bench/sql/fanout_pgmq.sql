-- pgmq has no fan-out: one send per consumer's queue.
SELECT count(*) FROM generate_series(1, 10) n, LATERAL pgmq.send('fan_' || n, '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}');
