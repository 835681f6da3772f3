SELECT count(*) FROM eventq.publish_batch('bench',
    array_fill('order.created'::text, ARRAY[1000]),
    array_fill('{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}'::jsonb, ARRAY[1000]));
