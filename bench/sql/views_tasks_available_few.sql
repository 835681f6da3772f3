SELECT count(*) FROM eventq.tasks WHERE consumer = 'view_task_8' AND state = 'available';
