-- The README's example.
SELECT * FROM eventq.tasks WHERE consumer = 'view_task_8' AND state = 'discarded';
