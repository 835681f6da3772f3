#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn create_consumer_stores_every_setting() {
        run("SELECT eventq.create_stream('co_s')");
        run("SELECT eventq.create_consumer('co_c', 'co_s', subjects => '{order.*,payment.>}', exclude => '{order.deleted}',
             ordering => 'key', max_attempts => 3, backoff => 'fixed', backoff_base => '5 seconds',
             backoff_max => '1 minute', lease => '2 minutes')");
        let row = Spi::get_three::<String, String, String>(
            "SELECT mode || ',' || ordering || ',' || max_attempts || ',' || backoff,
                    backoff_base || ',' || backoff_max || ',' || lease,
                    subjects::text || exclude::text
             FROM eventq.consumers WHERE name = 'co_c'",
        )
        .unwrap();
        assert_eq!(row.0, Some("task,key,3,fixed".into()));
        assert_eq!(row.1, Some("00:00:05,00:01:00,00:02:00".into()));
        assert_eq!(row.2, Some("{order.*,payment.>}{order.deleted}".into()));
    }

    #[pg_test]
    fn consumers_receive_only_matching_subjects() {
        run("SELECT eventq.create_stream('co_m')");
        run("SELECT eventq.create_consumer('co_all', 'co_m')");
        run("SELECT eventq.create_consumer('co_orders', 'co_m', subjects => '{order.>}', exclude => '{order.internal.>}')");
        run("SELECT eventq.create_consumer('co_created', 'co_m', subjects => '{*.created}')");
        for s in [
            "order.created",
            "order.internal.audit",
            "order",
            "payment.created",
            "order.item.added",
        ] {
            run(&format!("SELECT eventq.publish('co_m', '{s}')"));
        }
        run("SELECT tests.maintain()");
        let subjects = |c: &str| {
            one::<String>(&format!("SELECT string_agg(subject, ',' ORDER BY seq) FROM eventq.tasks WHERE consumer = '{c}'"))
        };
        assert_eq!(
            subjects("co_all"),
            Some(
                "order.created,order.internal.audit,order,payment.created,order.item.added".into()
            )
        );
        assert_eq!(subjects("co_orders"), Some("order.created,order.item.added".into()));
        assert_eq!(subjects("co_created"), Some("order.created,payment.created".into()));
    }

    fn pulled(consumer: &str) -> String {
        one::<String>(&format!(
            "SELECT coalesce(string_agg(key || ':' || subject, ',' ORDER BY seq), '') FROM eventq.pull('{consumer}', 10)"
        ))
        .unwrap_or_default()
    }

    fn ack_running(consumer: &str) {
        // Waiting tasks were made after this transaction's now(): promoted, they would be
        // due only later (inside one transaction now() stands still).
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'waiting'");
        run(&format!(
            "SELECT eventq.ack('{consumer}', ARRAY(SELECT task_id FROM eventq.tasks WHERE consumer = '{consumer}' AND state = 'running'))"
        ));
    }

    #[pg_test]
    fn a_sequence_orders_each_keys_subjects_whatever_their_publish_order() {
        run("SELECT eventq.create_stream('sq')");
        run("SELECT eventq.create_consumer('sq_c', 'sq', ordering => 'key', sequence => '{user.created,user.purchased,user.paid}')");
        run("SELECT eventq.publish('sq', 'user.paid', key => 'u1'), eventq.publish('sq', 'user.purchased', key => 'u1'),
                    eventq.publish('sq', 'user.created', key => 'u1'), eventq.publish('sq', 'user.created', key => 'u2'),
                    eventq.publish('sq', 'user.noted', key => 'u3'), eventq.publish('sq', 'user.paid', key => 'u4')");
        // subjects outside the sequence are always ready; u4 waits for a user.created
        assert_eq!(pulled("sq_c"), "u1:user.created,u2:user.created,u3:user.noted");
        assert_eq!(
            count("SELECT 1 FROM eventq.tasks WHERE consumer = 'sq_c' AND state = 'waiting'"),
            3
        );
        ack_running("sq_c");
        assert_eq!(pulled("sq_c"), "u1:user.purchased");
        // a discard counts as finished too
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'waiting'");
        run("SELECT eventq.discard('sq_c', task_id) FROM eventq.tasks WHERE consumer = 'sq_c' AND state = 'running'");
        assert_eq!(pulled("sq_c"), "u1:user.paid");
        ack_running("sq_c");
        assert_eq!(pulled("sq_c"), "");
        // what a key has finished stays: a later purchase of u1 goes at once, u4 still waits
        run("SELECT eventq.publish('sq', 'user.purchased', key => 'u1')");
        assert_eq!(pulled("sq_c"), "u1:user.purchased");
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'sq_c' AND sequence = '{user.created,user.purchased,user.paid}' AND waiting = 1"), 1);
        // the missing event arrives: the key goes in order
        ack_running("sq_c");
        run("SELECT eventq.publish('sq', 'user.created', key => 'u4')");
        assert_eq!(pulled("sq_c"), "u4:user.created");
        ack_running("sq_c");
        assert_eq!(pulled("sq_c"), "");
        // (u4's user.paid still waits: user.purchased never came for u4)
        run("SELECT eventq.publish('sq', 'user.purchased', key => 'u4')");
        assert_eq!(pulled("sq_c"), "u4:user.purchased");
        ack_running("sq_c");
        assert_eq!(pulled("sq_c"), "u4:user.paid");
    }

    #[pg_test]
    fn a_sequence_holds_across_drain_chunks_alterations_and_cleanup() {
        run("SELECT eventq.create_stream('sqc')");
        run(
            "SELECT eventq.create_consumer('sqc_c', 'sqc', ordering => 'key', sequence => '{a,b}')",
        );
        // the key's tasks fall into different chunks of one drain
        run("SET LOCAL eventq.drain_batch_size = 1");
        run("SELECT eventq.publish('sqc', 'b', key => 'k1'), eventq.publish('sqc', 'a', key => 'k1')");
        assert_eq!(pulled("sqc_c"), "k1:a");
        run("RESET eventq.drain_batch_size");
        ack_running("sqc_c");
        assert_eq!(pulled("sqc_c"), "k1:b");
        ack_running("sqc_c");
        // finished tasks cleaned up: the key remembers, through a new timeout and a new order
        run("DELETE FROM eventq_internal.tasks WHERE state = 'completed'");
        run("SELECT eventq.alter_consumer('sqc_c', sequence_timeout => '1 day')");
        run("SELECT eventq.alter_consumer('sqc_c', sequence => '{b,a}')");
        run("SELECT eventq.publish('sqc', 'a', key => 'k1')");
        assert_eq!(pulled("sqc_c"), "k1:a");
        ack_running("sqc_c");
        // a sequence given to a consumer whose tasks are already due holds back those it should
        run("SELECT eventq.create_consumer('sqc_late', 'sqc')");
        run("SELECT eventq.publish('sqc', 'b', key => 'k2'), eventq.publish('sqc', 'a', key => 'k2')");
        run("SELECT tests.maintain()");
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'available'");
        run("SELECT eventq.alter_consumer('sqc_late', ordering => 'key', sequence => '{a,b}')");
        assert_eq!(pulled("sqc_late"), "k2:a");
        ack_running("sqc_late");
        assert_eq!(pulled("sqc_late"), "k2:b");
    }

    #[pg_test]
    fn a_sequence_timeout_releases_a_task_and_says_so() {
        run("SELECT eventq.create_stream('sqt')");
        run("SELECT eventq.create_consumer('sqt_c', 'sqt', ordering => 'key', sequence => '{a.created,a.paid}', sequence_timeout => '1 minute')");
        run("SELECT eventq.publish('sqt', 'a.paid', key => 'k')");
        assert_eq!(pulled("sqt_c"), "");
        assert_eq!(
            one::<bool>("SELECT blocked_until BETWEEN now() AND now() + interval '1 minute' FROM eventq_internal.key_heads WHERE order_key = 'k'"),
            Some(true)
        );
        // (inside one transaction now() stands still: the wait is moved back instead)
        run("UPDATE eventq_internal.tasks SET created_at = created_at - interval '2 minutes' WHERE order_key = 'k'");
        run("UPDATE eventq_internal.key_heads SET blocked_until = blocked_until - interval '2 minutes' WHERE order_key = 'k'");
        assert_eq!(pulled("sqt_c"), "k:a.paid");
        assert_eq!(
            one::<String>(
                "SELECT state || ':' || last_error FROM eventq.tasks WHERE consumer = 'sqt_c'"
            ),
            Some("running:released by sequence_timeout".into())
        );
        // removing the sequence lets everything waiting go in seq order
        run("SELECT eventq.alter_consumer('sqt_c', sequence_timeout => '1 hour')");
        ack_running("sqt_c");
        run("SELECT eventq.publish('sqt', 'a.paid', key => 'j')");
        assert_eq!(pulled("sqt_c"), "");
        run("UPDATE eventq_internal.tasks SET run_at = now() WHERE state = 'waiting'");
        run("SELECT eventq.alter_consumer('sqt_c', sequence => '{}')");
        assert_eq!(pulled("sqt_c"), "j:a.paid");
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'sqt_c' AND sequence IS NULL AND sequence_timeout IS NULL"), 1);
        for (sql, message) in [
            ("SELECT eventq.create_consumer('sq_x', 'sqt', sequence => '{a}')", "needs ordering => 'key'"),
            ("SELECT eventq.create_consumer('sq_x', 'sqt', ordering => 'key', sequence_timeout => '1 minute')", "sequence_timeout needs a sequence"),
            ("SELECT eventq.create_consumer('sq_x', 'sqt', ordering => 'key', sequence => '{a,a}')", "twice"),
            ("SELECT eventq.create_consumer('sq_x', 'sqt', ordering => 'key', sequence => '{a}', sequence_timeout => '0')", "sequence_timeout must be a positive"),
            ("SELECT eventq.alter_consumer('sqt_c', ordering => 'none', sequence => '{a}')", "needs ordering => 'key'"),
        ] {
            assert_error(sql, "22023", message);
        }
    }

    #[pg_test]
    fn consumer_errors_change_nothing() {
        run("SELECT eventq.create_stream('co_e')");
        let bad = [
            ("SELECT eventq.create_consumer('Bad', 'co_e')", "22023", "invalid consumer name"),
            ("SELECT eventq.create_consumer('co_x', 'co_none')", "42704", "stream \"co_none\" does not exist"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', mode => 'queue')", "22023", "invalid mode \"queue\""),
            ("SELECT eventq.create_consumer('co_x', 'co_e', ordering => 'fifo')", "22023", "invalid ordering"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', backoff => 'linear')", "22023", "invalid backoff"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', subjects => '{order.>.x}')", "22023", "invalid subject pattern"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', subjects => '{}')", "22023", "at least one pattern"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', subjects => ARRAY[NULL])", "22023", "must not contain NULL"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', exclude => '{a..b}')", "22023", "invalid subject pattern"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', max_attempts => 0)", "22023", "max_attempts must be at least 1"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', backoff_base => '0')", "22023", "backoff_base must be a positive"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', backoff_base => '1 hour', backoff_max => '1 minute')", "22023", "backoff_max must not be shorter"),
            ("SELECT eventq.create_consumer('co_x', 'co_e', lease => '-1 second')", "22023", "lease must be a positive"),
            ("SELECT eventq.create_consumer(NULL, 'co_e')", "22023", "name must not be NULL"),
        ];
        for (sql, state, message) in bad {
            assert_error(sql, state, message);
        }
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE stream = 'co_e'"), 0);
        run("SELECT eventq.create_consumer('co_dup', 'co_e')");
        assert_error(
            "SELECT eventq.create_consumer('co_dup', 'co_e')",
            "42710",
            "consumer \"co_dup\" already exists",
        );
        assert_error(
            "SELECT eventq.alter_consumer('co_none', max_attempts => 2)",
            "42704",
            "consumer \"co_none\" does not exist",
        );
        assert_error(
            "SELECT eventq.alter_consumer('co_dup', mode => 'log')",
            "22023",
            "cannot change",
        );
        assert_error(
            "SELECT eventq.alter_consumer('co_dup', backoff_max => '1 millisecond')",
            "22023",
            "backoff_max",
        );
        assert_error(
            "SELECT eventq.alter_consumer('co_dup', subjects => '{>.a}')",
            "22023",
            "invalid subject pattern",
        );
        assert_error("SELECT eventq.pause_consumer('co_none')", "42704", "does not exist");
        assert_error("SELECT eventq.resume_consumer('co_none')", "42704", "does not exist");
        assert_error("SELECT eventq.drop_consumer('co_none')", "42704", "does not exist");
        assert_eq!(
            one::<i32>("SELECT max_attempts FROM eventq.consumers WHERE name = 'co_dup'"),
            Some(10)
        );
    }

    #[pg_test]
    fn alter_changes_only_what_is_given() {
        stream_with_consumer("co_a", "co_a_c", ", subjects => '{a.>}'");
        run("SELECT eventq.alter_consumer('co_a_c', max_attempts => 2, lease => '5 minutes')");
        assert_eq!(
            one::<String>("SELECT max_attempts || ',' || lease || ',' || subjects::text || ',' || backoff FROM eventq.consumers WHERE name = 'co_a_c'"),
            Some("2,00:05:00,{a.>},exponential".into())
        );
        run("SELECT eventq.alter_consumer('co_a_c', subjects => '{b.*}', mode => 'task')");
        run("SELECT eventq.publish('co_a', 'a.x'), eventq.publish('co_a', 'b.x')");
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<String>(
                "SELECT string_agg(subject, ',') FROM eventq.tasks WHERE consumer = 'co_a_c'"
            ),
            Some("b.x".into())
        );
    }

    #[pg_test]
    fn turning_key_order_off_releases_waiting_tasks() {
        stream_with_consumer("co_k", "co_k_c", ", ordering => 'key'");
        run("SELECT eventq.publish('co_k', 'a', key => 'k') FROM generate_series(1, 3)");
        run("SELECT tests.maintain()");
        assert_eq!(
            count("SELECT 1 FROM eventq.tasks WHERE consumer = 'co_k_c' AND state = 'waiting'"),
            2
        );
        run("SELECT eventq.alter_consumer('co_k_c', ordering => 'none')");
        assert_eq!(
            count("SELECT 1 FROM eventq.tasks WHERE consumer = 'co_k_c' AND state = 'available'"),
            3
        );
        assert_eq!(count("SELECT * FROM eventq.pull('co_k_c', 10)"), 3);
    }

    #[pg_test]
    fn start_at_decides_which_retained_events_a_new_consumer_gets() {
        run("SELECT eventq.create_stream('co_st')");
        run("SELECT eventq.publish('co_st', 'old')");
        run("SELECT tests.maintain()");
        run("UPDATE eventq_internal.events SET published_at = now() - interval '1 hour'");
        run("SELECT eventq.publish('co_st', 'new')");
        run("SELECT tests.maintain()");

        run("SELECT eventq.create_consumer('co_st_none', 'co_st')");
        run("SELECT eventq.create_consumer('co_st_all', 'co_st', start_at => '-infinity')");
        run("SELECT eventq.create_consumer('co_st_recent', 'co_st', start_at => now() - interval '1 minute')");
        run("SELECT eventq.create_consumer('co_st_log', 'co_st', mode => 'log', start_at => '-infinity')");
        run("SELECT eventq.create_consumer('co_st_log_new', 'co_st', mode => 'log')");
        let subjects = |c: &str| {
            one::<String>(&format!("SELECT string_agg(subject, ',' ORDER BY seq) FROM eventq.tasks WHERE consumer = '{c}'"))
        };
        assert_eq!(subjects("co_st_none"), None);
        assert_eq!(subjects("co_st_all"), Some("old,new".into()));
        assert_eq!(subjects("co_st_recent"), Some("new".into()));
        assert_eq!(
            one::<String>(
                "SELECT string_agg(subject, ',' ORDER BY seq) FROM eventq.fetch('co_st_log')"
            ),
            Some("old,new".into())
        );
        assert_eq!(count("SELECT * FROM eventq.fetch('co_st_log_new')"), 0);

        run("SELECT eventq.publish('co_st', 'later')");
        assert_eq!(subjects("co_st_none"), None);
        assert_eq!(count("SELECT * FROM eventq.pull('co_st_none', 10)"), 1);
        assert_eq!(
            one::<String>("SELECT string_agg(subject, ',') FROM eventq.fetch('co_st_log_new')"),
            Some("later".into())
        );

        // replaying an existing consumer adds only the tasks it lacks
        run("SELECT eventq.alter_consumer('co_st_recent', start_at => '-infinity')");
        assert_eq!(subjects("co_st_recent"), Some("old,new,later".into()));
    }

    #[pg_test]
    fn paused_consumers_get_nothing_but_keep_accumulating() {
        stream_with_consumer("co_p", "co_p_c", "");
        run("SELECT eventq.create_consumer('co_p_log', 'co_p', mode => 'log', start_at => '-infinity')");
        run("SELECT eventq.pause_consumer('co_p_c'), eventq.pause_consumer('co_p_log')");
        run("SELECT eventq.publish('co_p', 'a')");
        assert_eq!(count("SELECT * FROM eventq.pull('co_p_c')"), 0);
        assert_eq!(count("SELECT * FROM eventq.fetch('co_p_log')"), 0);
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<bool>("SELECT paused FROM eventq.consumers WHERE name = 'co_p_c'"),
            Some(true)
        );
        assert_eq!(
            one::<i64>("SELECT available FROM eventq.consumers WHERE name = 'co_p_c'"),
            Some(1)
        );
        run("SELECT eventq.resume_consumer('co_p_c'), eventq.resume_consumer('co_p_log')");
        assert_eq!(count("SELECT * FROM eventq.pull('co_p_c')"), 1);
        assert_eq!(count("SELECT * FROM eventq.fetch('co_p_log')"), 1);
    }

    #[pg_test]
    fn drop_consumer_removes_its_tasks_and_history() {
        stream_with_consumer("co_d", "co_d_c", "");
        run("SELECT eventq.publish('co_d', 'a')");
        let task = one::<i64>("SELECT task_id FROM eventq.pull('co_d_c')").unwrap();
        run(&format!("SELECT eventq.retry('co_d_c', {task})"));
        run("SELECT eventq.drop_consumer('co_d_c')");
        assert_eq!(count("SELECT 1 FROM eventq_internal.tasks"), 0);
        assert_eq!(count("SELECT 1 FROM eventq_internal.attempts"), 0);
        assert_eq!(count("SELECT 1 FROM eventq.events WHERE stream = 'co_d'"), 1);
    }
}
