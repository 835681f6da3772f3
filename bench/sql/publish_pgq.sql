SELECT pgq.insert_event('pub', 'order.created', '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}');
