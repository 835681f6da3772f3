-- PgQ has no batch insert: 1000 calls in one statement.
SELECT count(pgq.insert_event('pub', 'order.created', '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}')) FROM generate_series(1, 1000);
