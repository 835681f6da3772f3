-- The same, read from the end of the log.
SELECT * FROM eventq.newest_events('views', 10);
