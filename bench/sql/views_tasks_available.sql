SELECT count(*) FROM eventq.tasks WHERE consumer = 'view_task_2' AND state = 'available';
