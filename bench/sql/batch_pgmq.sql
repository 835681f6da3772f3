SELECT count(*) FROM pgmq.send_batch('pub', array_fill('{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}'::jsonb, ARRAY[1000]));
