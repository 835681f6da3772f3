SELECT eventq.publish('soak', 'order.created', '{"order": 12345, "total": 99.5, "currency": "EUR", "lines": 3}', key => 'seller-' || (random() * 100)::int);
