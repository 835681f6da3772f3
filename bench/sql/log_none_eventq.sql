-- A log consumer whose filter matches nothing in the stream: its cursor never moves.
SELECT count(*) FROM eventq.fetch('log_none', 100);
