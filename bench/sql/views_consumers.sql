-- What a console's overview reads every few seconds.
SELECT * FROM eventq.consumers;
