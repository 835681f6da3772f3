#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    fn state(consumer: &str, task: i64) -> Option<String> {
        one::<String>(&format!(
            "SELECT state FROM eventq.tasks WHERE consumer = '{consumer}' AND task_id = {task}"
        ))
    }

    #[pg_test]
    fn pull_leases_the_oldest_tasks_and_ack_completes_them() {
        stream_with_consumer("tk_s", "tk_c", "");
        run("SELECT eventq.publish('tk_s', 'e.' || n, jsonb_build_object('n', n), key => 'k' || n) FROM generate_series(1, 5) n");
        let pulled = one::<String>("SELECT string_agg(subject || '/' || attempt || '/' || (payload->>'n'), ',' ORDER BY seq) FROM eventq.pull('tk_c', 3)");
        assert_eq!(pulled, Some("e.1/1/1,e.2/1/2,e.3/1/3".into()));
        assert_eq!(count("SELECT 1 FROM eventq.tasks WHERE consumer = 'tk_c' AND state = 'running' AND lease_until > now()"), 3);
        assert_eq!(
            one::<bool>("SELECT bool_and(task_id = seq AND event_id IS NOT NULL AND published_at IS NOT NULL) FROM eventq.pull('tk_c', 10)"),
            Some(true)
        );
        let ids =
            one::<Vec<i64>>("SELECT array_agg(task_id) FROM eventq.tasks WHERE consumer = 'tk_c'")
                .unwrap();
        assert_eq!(
            one::<i32>(&format!(
                "SELECT eventq.ack('tk_c', '{{{}}}')",
                ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            )),
            Some(5)
        );
        // a second ack changes nothing and says so
        assert_eq!(
            one::<i32>(&format!("SELECT eventq.ack('tk_c', ARRAY[{}, 999999])", ids[0])),
            Some(0)
        );
        assert_eq!(count("SELECT 1 FROM eventq.tasks WHERE consumer = 'tk_c' AND state = 'completed' AND finished_at IS NOT NULL"), 5);
        assert_eq!(count("SELECT * FROM eventq.pull('tk_c', 10)"), 0);
        assert_eq!(one::<i32>("SELECT eventq.ack('tk_c', '{}')"), Some(0));
    }

    #[pg_test]
    fn pull_uses_the_given_lease() {
        stream_with_consumer("tk_l", "tk_l_c", ", lease => '10 minutes'");
        run("SELECT eventq.publish('tk_l', 'a'), eventq.publish('tk_l', 'b')");
        run("SELECT * FROM eventq.pull('tk_l_c')");
        run("SELECT * FROM eventq.pull('tk_l_c', lease => '1 hour')");
        assert_eq!(
            one::<String>("SELECT string_agg((lease_until - started_at)::text, ',' ORDER BY seq) FROM eventq.tasks WHERE consumer = 'tk_l_c'"),
            Some("00:10:00,01:00:00".into())
        );
    }

    #[pg_test]
    fn retry_backs_off_then_discards_past_max_attempts() {
        stream_with_consumer("tk_r", "tk_r_c", ", max_attempts => 2, backoff => 'fixed', backoff_base => '1 minute', backoff_max => '1 minute'");
        run("SELECT eventq.publish('tk_r', 'a')");
        let task = one::<i64>("SELECT task_id FROM eventq.pull('tk_r_c')").unwrap();
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_r_c', {task}, 'timeout')")),
            Some("retryable".into())
        );
        assert_eq!(state("tk_r_c", task), Some("retryable".into()));
        assert_eq!(
            one::<bool>(&format!("SELECT run_at - now() BETWEEN '1 minute' AND '1 minute 5 seconds' FROM eventq.tasks WHERE task_id = {task}")),
            Some(true)
        );
        assert_eq!(count("SELECT * FROM eventq.pull('tk_r_c')"), 0, "not due for a minute");
        // a retry with an explicit delay of zero is due at once
        run(&format!("UPDATE eventq_internal.tasks SET run_at = now() WHERE seq = {task}"));
        assert_eq!(one::<i32>("SELECT attempt FROM eventq.pull('tk_r_c')"), Some(2));
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_r_c', {task}, 'timeout again')")),
            Some("discarded".into())
        );
        assert_eq!(state("tk_r_c", task), Some("discarded".into()));
        assert_eq!(
            one::<String>(&format!("SELECT string_agg(attempt || ':' || outcome || ':' || coalesce(error, ''), ',' ORDER BY attempt) FROM eventq.attempts WHERE consumer = 'tk_r_c' AND task_id = {task}")),
            Some("1:failed:timeout,2:failed:timeout again".into())
        );
        // retrying a task that is not running changes nothing
        assert_eq!(one::<String>(&format!("SELECT eventq.retry('tk_r_c', {task})")), None);
        assert_eq!(one::<String>("SELECT eventq.retry('tk_r_c', 424242)"), None);
    }

    #[pg_test]
    fn retry_with_delay_and_exponential_backoff() {
        stream_with_consumer(
            "tk_x",
            "tk_x_c",
            ", backoff_base => '10 seconds', backoff_max => '1 hour'",
        );
        run("SELECT eventq.publish('tk_x', 'a'), eventq.publish('tk_x', 'b')");
        let tasks =
            one::<Vec<i64>>("SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_x_c', 2)")
                .unwrap();
        run(&format!("SELECT eventq.retry('tk_x_c', {}, delay => '0 seconds')", tasks[0]));
        run(&format!("SELECT eventq.retry('tk_x_c', {})", tasks[1]));
        let waits = Spi::get_two::<f64, f64>(&format!(
            "SELECT extract(epoch FROM min(run_at) - now())::float8, extract(epoch FROM max(run_at) - now())::float8
             FROM eventq.tasks WHERE consumer = 'tk_x_c' AND task_id = ANY(ARRAY[{}, {}])",
            tasks[0], tasks[1]
        ))
        .unwrap();
        assert!(waits.0.unwrap() < 1.0, "no delay");
        let second = waits.1.unwrap();
        assert!((9.0..=12.0).contains(&second), "first backoff {second}s is 10s ±10%");
        // within one transaction now() stands still: make the zero-delay retry due
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE run_at < now() + interval '1 second'");
        assert_eq!(one::<i64>("SELECT task_id FROM eventq.pull('tk_x_c')"), Some(tasks[0]));
        assert_error(
            &format!("SELECT eventq.retry('tk_x_c', {}, delay => '-1 second')", tasks[1]),
            "22023",
            "delay must not be a negative",
        );
    }

    #[pg_test]
    fn ignore_completes_the_task_and_the_history_says_ignored() {
        stream_with_consumer("tk_i", "tk_i_c", ", ordering => 'key'");
        run("SELECT eventq.publish('tk_i', 'a', key => 'k'), eventq.publish('tk_i', 'b', key => 'k'), eventq.publish('tk_i', 'c')");
        let first =
            one::<Vec<i64>>("SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_i_c', 5)")
                .unwrap();
        // the key's second task waits behind the first
        assert_eq!(first.len(), 2);
        assert_eq!(
            one::<bool>(&format!(
                "SELECT eventq.ignore('tk_i_c', {}, 'no such order', attempt => 2)",
                first[0]
            )),
            Some(false)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.ignore('tk_i_c', {}, 'no such order')", first[0])),
            Some(true)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.ignore('tk_i_c', {})", first[0])),
            Some(false)
        );
        assert_eq!(
            one::<String>(&format!("SELECT state || ':' || (finished_at IS NOT NULL) FROM eventq.tasks WHERE consumer = 'tk_i_c' AND task_id = {}", first[0])),
            Some("completed:true".into())
        );
        // one attempt in the history, ignored with its reason; an acked task shows completed
        run(&format!("SELECT eventq.ack('tk_i_c', ARRAY[{}])", first[1]));
        assert_eq!(
            one::<String>("SELECT string_agg(task_id - (SELECT min(task_id) FROM eventq.tasks WHERE consumer = 'tk_i_c') || ':' || attempt || ':' || outcome || ':' || coalesce(error, '-'), ',' ORDER BY task_id) FROM eventq.attempts WHERE consumer = 'tk_i_c'"),
            Some("0:1:ignored:no such order,2:1:completed:-".into())
        );
        // the key is handed on as by an ack
        assert_eq!(count("SELECT * FROM eventq.pull('tk_i_c', 5)"), 1);
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'tk_i_c' AND completed = 2 AND running = 1"), 1);
    }

    #[pg_test]
    fn an_events_retry_settings_override_the_consumers() {
        // the consumer: 10 attempts, exponential from 1 second
        stream_with_consumer("tk_p", "tk_p_c", "");
        run("SELECT eventq.publish('tk_p', 'once', max_attempts => 1)");
        run("SELECT eventq.publish('tk_p', 'slow', backoff => 'fixed', backoff_base => '2 hours')");
        run("SELECT eventq.publish_batch('tk_p', '{b1,b2}', ARRAY['{}', '{}']::jsonb[], max_attempts => 2)");
        run("SELECT eventq.publish('tk_p', 'plain')");
        let ids = one::<Vec<i64>>(
            "SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_p_c', 10)",
        )
        .unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_p_c', {})", ids[0])),
            Some("discarded".into())
        );
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_p_c', {})", ids[1])),
            Some("retryable".into())
        );
        assert_eq!(
            one::<bool>(&format!("SELECT run_at - clock_timestamp() BETWEEN '1 hour 59 minutes' AND '2 hours' FROM eventq.tasks WHERE consumer = 'tk_p_c' AND task_id = {}", ids[1])),
            Some(true)
        );
        // a batch's settings hold for each of its events; the consumer's for the rest
        for id in &ids[2..5] {
            assert_eq!(
                one::<String>(&format!("SELECT eventq.retry('tk_p_c', {id}, delay => '0')")),
                Some("retryable".into())
            );
        }
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'retryable' AND run_at < now() + interval '1 minute'");
        let again = one::<Vec<i64>>(
            "SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_p_c', 10)",
        )
        .unwrap();
        assert_eq!(again, ids[2..5].to_vec());
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_p_c', {})", ids[2])),
            Some("discarded".into())
        );
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_p_c', {})", ids[3])),
            Some("discarded".into())
        );
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_p_c', {})", ids[4])),
            Some("retryable".into())
        );
        // an expired lease counts against the event's max_attempts too
        run("SELECT eventq.publish('tk_p', 'lost', max_attempts => 1)");
        let lost = one::<i64>("SELECT task_id FROM eventq.pull('tk_p_c', 1)").unwrap();
        run(&format!("UPDATE eventq_internal.tasks SET lease_until = now() - interval '1 second', started_at = now() - interval '1 minute' WHERE seq = {lost}"));
        run("SELECT tests.maintain()");
        assert_eq!(state("tk_p_c", lost), Some("discarded".into()));
        for (sql, message) in [
            (
                "SELECT eventq.publish('tk_p', 'x', max_attempts => 0)",
                "max_attempts must be at least 1",
            ),
            ("SELECT eventq.publish('tk_p', 'x', backoff => 'linear')", "invalid backoff"),
            (
                "SELECT eventq.publish('tk_p', 'x', backoff_base => '0')",
                "backoff_base must be a positive",
            ),
            (
                "SELECT eventq.publish_batch('tk_p', '{x}', '{\"{}\"}', backoff_base => '-1 hour')",
                "backoff_base must be a positive",
            ),
        ] {
            assert_error(sql, "22023", message);
        }
    }

    #[pg_test]
    fn discard_and_redrive() {
        stream_with_consumer("tk_d", "tk_d_c", ", max_attempts => 1");
        run("SELECT eventq.publish('tk_d', 'a'), eventq.publish('tk_d', 'b')");
        let tasks =
            one::<Vec<i64>>("SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_d_c', 2)")
                .unwrap();
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.discard('tk_d_c', {}, 'bad payload')", tasks[0])),
            Some(true)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.discard('tk_d_c', {}, 'again')", tasks[0])),
            Some(false)
        );
        assert_eq!(
            one::<String>(&format!("SELECT eventq.retry('tk_d_c', {})", tasks[1])),
            Some("discarded".into())
        );
        assert_eq!(
            one::<String>(&format!("SELECT outcome || ':' || error FROM eventq.attempts WHERE consumer = 'tk_d_c' AND task_id = {}", tasks[0])),
            Some("discarded:bad payload".into())
        );
        assert_eq!(
            one::<i32>(&format!("SELECT eventq.redrive('tk_d_c', ARRAY[{}])", tasks[0])),
            Some(1)
        );
        assert_eq!(
            one::<String>(&format!(
                "SELECT state || ':' || attempt FROM eventq.tasks WHERE task_id = {}",
                tasks[0]
            )),
            Some("available:0".into())
        );
        assert_eq!(one::<i32>("SELECT eventq.redrive('tk_d_c')"), Some(1));
        assert_eq!(one::<i32>("SELECT eventq.redrive('tk_d_c')"), Some(0));
        assert_eq!(count("SELECT * FROM eventq.pull('tk_d_c', 10)"), 2);
    }

    #[pg_test]
    fn retry_now_makes_retryable_tasks_due_at_once() {
        stream_with_consumer("tk_rn", "tk_rn_c", ", backoff => 'fixed', backoff_base => '1 hour'");
        run("SELECT eventq.publish('tk_rn', 'a'), eventq.publish('tk_rn', 'b'), eventq.publish('tk_rn', 'c')");
        let tasks = one::<Vec<i64>>(
            "SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('tk_rn_c', 3)",
        )
        .unwrap();
        for t in &tasks[..2] {
            run(&format!("SELECT eventq.retry('tk_rn_c', {t}, 'boom')"));
        }
        assert_eq!(count("SELECT * FROM eventq.pull('tk_rn_c', 10)"), 0);
        // only retryable tasks: the running one is left alone
        assert_eq!(
            one::<i32>(&format!(
                "SELECT eventq.retry_now('tk_rn_c', ARRAY[{}, {}])",
                tasks[0], tasks[2]
            )),
            Some(1)
        );
        assert_eq!(state("tk_rn_c", tasks[0]), Some("available".into()));
        assert_eq!(state("tk_rn_c", tasks[1]), Some("retryable".into()));
        assert_eq!(state("tk_rn_c", tasks[2]), Some("running".into()));
        assert_eq!(one::<i32>("SELECT eventq.retry_now('tk_rn_c')"), Some(1));
        assert_eq!(one::<i32>("SELECT eventq.retry_now('tk_rn_c')"), Some(0));
        // the attempt count goes on from where it was
        assert_eq!(
            one::<String>("SELECT string_agg(task_id || ':' || attempt, ',' ORDER BY task_id) FROM eventq.pull('tk_rn_c', 10)"),
            Some(format!("{}:2,{}:2", tasks[0], tasks[1]))
        );
        assert_error("SELECT eventq.retry_now('tk_rn_nobody')", "42704", "does not exist");
    }

    #[pg_test]
    fn cancel_discards_unfinished_tasks_and_hands_their_keys_on() {
        stream_with_consumer("tk_cn", "tk_cn_c", ", ordering => 'key'");
        run("SELECT eventq.create_consumer('tk_cn_u', 'tk_cn')");
        run("SELECT eventq.publish('tk_cn', 'a', key => 'k'), eventq.publish('tk_cn', 'b', key => 'k'),
                    eventq.publish('tk_cn', 'c', key => 'j')");
        crate::api::maintenance::pass_report();
        // (now() is this transaction's start: a task promoted later must not look scheduled)
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'waiting'");
        let ids = one::<Vec<i64>>(
            "SELECT array_agg(task_id ORDER BY seq) FROM eventq.tasks WHERE consumer = 'tk_cn_c'",
        )
        .unwrap();
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        assert_eq!(state("tk_cn_c", b), Some("waiting".into()));
        // a waiting task is left to its key's head; the head goes, and the key moves on
        assert_eq!(
            one::<i32>(&format!("SELECT eventq.cancel('tk_cn_c', ARRAY[{a}, {b}], 'poison')")),
            Some(1)
        );
        assert_eq!(state("tk_cn_c", a), Some("discarded".into()));
        assert_eq!(
            one::<String>(&format!(
                "SELECT last_error FROM eventq.tasks WHERE consumer = 'tk_cn_c' AND task_id = {a}"
            )),
            Some("poison".into())
        );
        assert_eq!(state("tk_cn_c", b), Some("available".into()));
        // a running task with a key stays with its worker: its key must not move on
        assert_eq!(one::<i64>("SELECT task_id FROM eventq.pull('tk_cn_c', 1)"), Some(b));
        assert_eq!(one::<i32>(&format!("SELECT eventq.cancel('tk_cn_c', ARRAY[{b}])")), Some(0));
        assert_eq!(state("tk_cn_c", b), Some("running".into()));
        // without key ordering, a running task is discarded; its worker's ack then does nothing
        let running = one::<i64>("SELECT task_id FROM eventq.pull('tk_cn_u', 1)").unwrap();
        assert_eq!(
            one::<i32>(&format!("SELECT eventq.cancel('tk_cn_u', ARRAY[{running}], 'stop it')")),
            Some(1)
        );
        assert_eq!(one::<i32>(&format!("SELECT eventq.ack('tk_cn_u', ARRAY[{running}])")), Some(0));
        assert_eq!(
            one::<String>(&format!("SELECT outcome || ':' || error FROM eventq.attempts WHERE consumer = 'tk_cn_u' AND task_id = {running}")),
            Some("discarded:stop it".into())
        );
        assert_eq!(one::<i32>(&format!("SELECT eventq.cancel('tk_cn_c', ARRAY[{c}])")), Some(1));
        assert_eq!(
            one::<String>(&format!(
                "SELECT last_error FROM eventq.tasks WHERE consumer = 'tk_cn_c' AND task_id = {c}"
            )),
            Some("cancelled".into())
        );
        assert_eq!(one::<i32>(&format!("SELECT eventq.cancel('tk_cn_c', ARRAY[{c}])")), Some(0));
        assert_eq!(one::<i32>("SELECT eventq.redrive('tk_cn_c')"), Some(2));
    }

    #[pg_test]
    fn extend_lease_only_for_running_tasks() {
        stream_with_consumer("tk_e", "tk_e_c", "");
        run("SELECT eventq.publish('tk_e', 'a')");
        let task = one::<i64>("SELECT task_id FROM eventq.pull('tk_e_c')").unwrap();
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.extend_lease('tk_e_c', {task}, '1 hour') - clock_timestamp() BETWEEN '59 minutes' AND '1 hour'")),
            Some(true)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT eventq.extend_lease('tk_e_c', {task}) - clock_timestamp() BETWEEN '29 seconds' AND '30 seconds'")),
            Some(true)
        );
        assert_error(
            &format!("SELECT eventq.extend_lease('tk_e_c', {task}, '0')"),
            "22023",
            "lease must be a positive",
        );
        run(&format!("SELECT eventq.ack('tk_e_c', ARRAY[{task}])"));
        assert_eq!(
            one::<pgrx::datum::TimestampWithTimeZone>(&format!(
                "SELECT eventq.extend_lease('tk_e_c', {task}, '1 hour')"
            )),
            None
        );
    }

    #[pg_test]
    fn an_expired_lease_is_a_lost_attempt_and_past_max_attempts_a_discard() {
        stream_with_consumer("tk_lost", "tk_lost_c", ", max_attempts => 2");
        run("SELECT eventq.publish('tk_lost', 'a')");
        let task = one::<i64>("SELECT task_id FROM eventq.pull('tk_lost_c')").unwrap();
        let expire = format!("UPDATE eventq_internal.tasks SET lease_until = now() - interval '1 second', started_at = now() - interval '31 seconds' WHERE seq = {task}");
        run(&expire);
        assert_eq!(one::<i32>("SELECT attempt FROM eventq.pull('tk_lost_c')"), Some(2));
        assert_eq!(one::<String>(&format!("SELECT outcome FROM eventq.attempts WHERE consumer = 'tk_lost_c' AND task_id = {task}")), Some("lost".into()));
        run(&expire);
        assert_eq!(count("SELECT * FROM eventq.pull('tk_lost_c')"), 0);
        assert_eq!(state("tk_lost_c", task), Some("discarded".into()));
        assert_eq!(count(&format!("SELECT 1 FROM eventq.attempts WHERE consumer = 'tk_lost_c' AND task_id = {task} AND outcome = 'lost'")), 2);
        // the worker whose lease ran out finds nothing to ack
        assert_eq!(one::<i32>(&format!("SELECT eventq.ack('tk_lost_c', ARRAY[{task}])")), Some(0));
    }

    #[pg_test]
    fn deliver_at_holds_a_task_back_until_its_time() {
        stream_with_consumer("tk_later", "tk_later_c", "");
        run("SELECT eventq.publish('tk_later', 'later', deliver_at => now() + interval '1 hour')");
        run("SELECT eventq.publish('tk_later', 'now')");
        assert_eq!(
            one::<String>("SELECT string_agg(subject, ',') FROM eventq.pull('tk_later_c', 10)"),
            Some("now".into())
        );
        assert_eq!(
            one::<String>("SELECT state || ':' || (run_at - now())::text FROM eventq.tasks WHERE consumer = 'tk_later_c' AND subject = 'later'"),
            Some("available:01:00:00".into())
        );
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'scheduled'");
        assert_eq!(
            one::<String>("SELECT string_agg(subject, ',') FROM eventq.pull('tk_later_c', 10)"),
            Some("later".into())
        );
    }

    #[pg_test]
    fn tasks_of_a_key_are_delivered_one_at_a_time_in_order() {
        stream_with_consumer("tk_key", "tk_key_c", ", ordering => 'key'");
        run("SELECT eventq.publish('tk_key', 'e', jsonb_build_object('n', n), key => CASE WHEN n % 2 = 0 THEN 'even' ELSE 'odd' END) FROM generate_series(1, 6) n");
        run("SELECT eventq.publish('tk_key', 'nokey')");
        let pull = || {
            one::<String>("SELECT string_agg(coalesce(payload->>'n', subject), ',' ORDER BY seq) FROM eventq.pull('tk_key_c', 10)")
        };
        assert_eq!(pull(), Some("1,2,nokey".into()));
        assert_eq!(pull(), None, "the next of each key waits");
        let done = |n: i32| {
            run(&format!("SELECT eventq.ack('tk_key_c', array_agg(task_id)) FROM eventq.tasks WHERE consumer = 'tk_key_c' AND state = 'running' AND (SELECT payload->>'n' FROM eventq.events e WHERE e.event_id = tasks.event_id) = '{n}'"))
        };
        done(1);
        assert_eq!(pull(), Some("3".into()));
        // a failed head keeps its place: the key waits for its retry
        let three = one::<i64>("SELECT task_id FROM eventq.tasks WHERE consumer = 'tk_key_c' AND state = 'running' AND key = 'odd'").unwrap();
        run(&format!("SELECT eventq.retry('tk_key_c', {three}, delay => '0')"));
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'retryable'");
        assert_eq!(pull(), Some("3".into()));
        // discarding the head releases the next
        run(&format!("SELECT eventq.discard('tk_key_c', {three})"));
        assert_eq!(pull(), Some("5".into()));
        done(2);
        done(5);
        assert_eq!(pull(), Some("4".into()));
        assert_eq!(
            count("SELECT 1 FROM eventq.tasks WHERE consumer = 'tk_key_c' AND state = 'waiting'"),
            1
        );
        // redriving the discarded head puts it back in line ahead of younger tasks
        run(&format!("SELECT eventq.redrive('tk_key_c', ARRAY[{three}])"));
        assert_eq!(pull(), Some("3".into()));
    }

    #[pg_test]
    fn a_key_row_names_the_task_in_flight_while_there_is_one() {
        stream_with_consumer("tk_head", "tk_head_c", ", ordering => 'key'");
        run("SELECT eventq.publish('tk_head', 'a', key => 'k') FROM generate_series(1, 3)");
        let seqs = one::<Vec<i64>>(
            "SELECT array_agg(seq ORDER BY seq) FROM eventq.events WHERE stream = 'tk_head'",
        );
        let head = || {
            one::<i64>("SELECT head_seq FROM eventq_internal.key_heads h JOIN eventq_internal.consumers c ON c.id = h.consumer_id WHERE c.name = 'tk_head_c' AND h.order_key = 'k'")
        };
        assert_eq!(seqs, None, "nothing drained yet");
        run("SELECT tests.maintain()");
        let seqs = one::<Vec<i64>>(
            "SELECT array_agg(seq ORDER BY seq) FROM eventq.events WHERE stream = 'tk_head'",
        )
        .unwrap();
        assert_eq!(head(), Some(seqs[0]));
        run(&format!(
            "SELECT * FROM eventq.pull('tk_head_c'); SELECT eventq.ack('tk_head_c', ARRAY[{}])",
            seqs[0]
        ));
        assert_eq!(head(), Some(seqs[1]));
        run(&format!(
            "SELECT * FROM eventq.pull('tk_head_c'); SELECT eventq.discard('tk_head_c', {})",
            seqs[1]
        ));
        assert_eq!(head(), Some(seqs[2]));
        run(&format!(
            "SELECT * FROM eventq.pull('tk_head_c'); SELECT eventq.ack('tk_head_c', ARRAY[{}])",
            seqs[2]
        ));
        assert_eq!(head(), None, "the key is free");
        run(&format!("SELECT eventq.redrive('tk_head_c', ARRAY[{}])", seqs[1]));
        assert_eq!(head(), Some(seqs[1]));
        assert_eq!(
            one::<String>(&format!("SELECT state FROM eventq.tasks WHERE task_id = {}", seqs[1])),
            Some("available".into())
        );
        run("SELECT eventq.drop_consumer('tk_head_c')");
        assert_eq!(count("SELECT 1 FROM eventq_internal.key_heads"), 0);
    }

    #[pg_test]
    fn a_new_keyed_consumer_replaying_the_log_gets_one_head_per_key() {
        run("SELECT eventq.create_stream('tk_bf')");
        run("SELECT eventq.publish('tk_bf', 'a', key => 'k' || (n % 2)) FROM generate_series(1, 6) n");
        run("SELECT tests.maintain()");
        run("SELECT eventq.create_consumer('tk_bf_c', 'tk_bf', ordering => 'key', start_at => '-infinity')");
        assert_eq!(one::<String>("SELECT string_agg(state || ':' || key, ',' ORDER BY seq) FROM eventq.tasks WHERE consumer = 'tk_bf_c'"),
                   Some("available:k1,available:k0,waiting:k1,waiting:k0,waiting:k1,waiting:k0".into()));
        assert_eq!(count("SELECT 1 FROM eventq_internal.key_heads"), 2);
    }

    #[pg_test]
    fn task_calls_check_their_arguments() {
        stream_with_consumer("tk_err", "tk_err_c", "");
        run("SELECT eventq.create_consumer('tk_err_log', 'tk_err', mode => 'log')");
        assert_error(
            "SELECT * FROM eventq.pull('tk_none')",
            "42704",
            "consumer \"tk_none\" does not exist",
        );
        assert_error(
            "SELECT * FROM eventq.pull('tk_err_log')",
            "55000",
            "consumer \"tk_err_log\" is a log consumer; pull needs a task consumer",
        );
        assert_error(
            "SELECT eventq.ack('tk_err_log', '{1}')",
            "55000",
            "ack needs a task consumer",
        );
        assert_error("SELECT eventq.retry('tk_err_log', 1)", "55000", "retry");
        assert_error("SELECT eventq.discard('tk_err_log', 1)", "55000", "discard");
        assert_error(
            "SELECT eventq.extend_lease('tk_err_log', 1, '1 minute')",
            "55000",
            "extend_lease",
        );
        assert_error("SELECT eventq.redrive('tk_err_log')", "55000", "redrive");
        assert_error(
            "SELECT * FROM eventq.pull('tk_err_c', 0)",
            "22023",
            "max must be between 1 and",
        );
        assert_error(
            "SELECT * FROM eventq.pull('tk_err_c', -5)",
            "22023",
            "max must be between 1 and",
        );
        assert_error(
            "SELECT * FROM eventq.pull('tk_err_c', 1, '-1 minute')",
            "22023",
            "lease must be a positive",
        );
        assert_error("SELECT eventq.ack('tk_err_c', NULL)", "22023", "task_ids must not be NULL");
        assert_error("SELECT eventq.retry('tk_err_c', NULL)", "22023", "task_id must not be NULL");
        assert_error("SELECT eventq.ack('tk_none', '{1}')", "42704", "does not exist");
    }
}
