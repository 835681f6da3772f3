SELECT eventq.publish(:stream, 'order.created', '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}');
