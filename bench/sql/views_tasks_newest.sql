-- The console's list of a consumer's tasks, newest first, with their events.
SELECT * FROM eventq.tasks WHERE consumer = 'view_task_1' ORDER BY task_id DESC LIMIT 100;
