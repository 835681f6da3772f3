-- The README's example.
SELECT * FROM eventq.events WHERE stream = 'views' ORDER BY seq DESC LIMIT 10;
