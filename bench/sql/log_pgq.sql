SELECT pgq.next_batch('log', 'reader') AS batch \gset
SELECT count(ev_data) AS n FROM pgq.get_batch_events(:batch) \gset
SELECT pgq.finish_batch(:batch);
