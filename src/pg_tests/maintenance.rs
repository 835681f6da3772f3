#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn run_maintenance_drains_and_reports_counts() {
        run("SELECT eventq.create_stream('mt_s')");
        run("SELECT eventq.create_consumer('mt_a', 'mt_s'), eventq.create_consumer('mt_b', 'mt_s', subjects => '{x.*}')");
        run("SELECT eventq.create_consumer('mt_log', 'mt_s', mode => 'log')");
        run("SELECT eventq.publish('mt_s', CASE WHEN n % 2 = 0 THEN 'x.even' ELSE 'y.odd' END) FROM generate_series(1, 10) n");
        let report = one::<pgrx::JsonB>("SELECT tests.maintain()").unwrap().0;
        assert_eq!(report["drained_events"], 10);
        assert_eq!(report["created_tasks"], 15);
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 0);
        assert_eq!(one::<i64>("SELECT events FROM eventq.streams WHERE name = 'mt_s'"), Some(10));
        let again = one::<pgrx::JsonB>("SELECT tests.maintain()").unwrap().0;
        assert_eq!(again["drained_events"], 0);
    }

    #[pg_test]
    fn drained_events_are_numbered_in_id_order_across_fan_out_rounds() {
        run("SELECT eventq.create_stream('mt_n')");
        run("SET LOCAL eventq.drain_batch_size = 3");
        run("SELECT eventq.publish('mt_n', 'e') FROM generate_series(1, 10)");
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<bool>("SELECT array_agg(event_id ORDER BY seq) = array_agg(event_id ORDER BY event_id) FROM eventq.events WHERE stream = 'mt_n'"),
            Some(true)
        );
        assert_eq!(
            one::<i64>("SELECT count(DISTINCT seq) FROM eventq.events WHERE stream = 'mt_n'"),
            Some(10)
        );
        // tasks are created for every event, whatever the number of fan-out rounds
        run("SELECT eventq.create_consumer('mt_n_c', 'mt_n')");
        run("SELECT eventq.publish('mt_n', 'f') FROM generate_series(1, 10)");
        assert_eq!(one::<i64>("SELECT (tests.maintain()->>'created_tasks')::bigint"), Some(10));
    }

    #[pg_test]
    fn events_of_a_dropped_stream_are_not_drained() {
        run("SELECT eventq.create_stream('mt_gone')");
        run("SELECT eventq.publish('mt_gone', 'a')");
        run("SELECT eventq.drop_stream('mt_gone')");
        let report = one::<pgrx::JsonB>("SELECT tests.maintain()").unwrap().0;
        assert_eq!(report["drained_events"], 0);
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 0);
        assert_eq!(count("SELECT 1 FROM eventq_internal.events"), 0);
    }

    // A stream missing without a tombstone is one a restore has not loaded yet: its staged
    // events wait for it instead of being thrown away.
    #[pg_test]
    fn events_of_an_unknown_stream_wait_in_staging() {
        run("SELECT eventq.create_stream('mt_later')");
        run("SELECT eventq.publish('mt_later', 'a')");
        run("DELETE FROM eventq_internal.streams WHERE name = 'mt_later'");
        let report = one::<pgrx::JsonB>("SELECT tests.maintain()").unwrap().0;
        assert_eq!(report["drained_events"], 0);
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 1);
        assert_eq!(count("SELECT 1 FROM eventq_internal.events"), 0);
    }

    // The views check the reader's role once per query, not once per row they look at.
    #[pg_test]
    fn views_check_the_readers_role_once_per_query() {
        run("SET LOCAL track_functions = 'all'");
        run("SELECT eventq.create_stream('mt_v')");
        run("SELECT eventq.create_consumer('mt_v_c', 'mt_v')");
        run("SELECT eventq.publish('mt_v', 'e') FROM generate_series(1, 200)");
        run("SELECT tests.maintain()");
        let calls = || {
            one::<i64>(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
                 WHERE schemaname = 'eventq_internal' AND funcname = 'caller_is_admin'",
            )
            .unwrap_or(0)
        };
        for view in ["events", "streams", "consumers", "tasks", "attempts"] {
            let before = calls();
            run(&format!("SELECT count(*) FROM eventq.{view}"));
            let per_query = calls() - before;
            assert!(per_query <= 2, "{view}: caller_is_admin() ran {per_query} times");
        }
    }

    #[pg_test]
    fn subject_matches_follows_nats_rules() {
        assert_eq!(
            one::<bool>("SELECT eventq.subject_matches('order.*', 'order.created')"),
            Some(true)
        );
        assert_eq!(
            one::<bool>("SELECT eventq.subject_matches('order.*', 'order.item.added')"),
            Some(false)
        );
        assert_eq!(
            one::<bool>("SELECT eventq.subject_matches('order.>', 'order.item.added')"),
            Some(true)
        );
        assert_eq!(one::<bool>("SELECT eventq.subject_matches('order.>', 'order')"), Some(false));
        assert_eq!(
            one::<bool>("SELECT eventq.subject_matches('Order.*', 'order.created')"),
            Some(false)
        );
        assert_eq!(one::<bool>("SELECT eventq.subject_matches(NULL, 'order')"), None);
        assert_error(
            "SELECT eventq.subject_matches('order.>.x', 'order.a.x')",
            "22023",
            "invalid subject pattern",
        );
        assert_error(
            "SELECT eventq.subject_matches('order.*', 'order..x')",
            "22023",
            "invalid subject",
        );
    }

    #[pg_test]
    fn views_show_where_every_task_stands() {
        stream_with_consumer("mt_v", "mt_v_c", "");
        run("SELECT eventq.publish('mt_v', 'e') FROM generate_series(1, 4)");
        let ids =
            one::<Vec<i64>>("SELECT array_agg(task_id ORDER BY seq) FROM eventq.pull('mt_v_c', 3)")
                .unwrap();
        run(&format!("SELECT eventq.ack('mt_v_c', ARRAY[{}])", ids[0]));
        run(&format!("SELECT eventq.retry('mt_v_c', {})", ids[1]));
        let counts = one::<String>(
            "SELECT concat_ws(',', available, waiting, running, retryable, completed, discarded, expired, lag)
             FROM eventq.consumers WHERE name = 'mt_v_c'",
        );
        assert_eq!(counts, Some("1,0,1,1,1,0,0,3".into()));
        assert_eq!(
            one::<String>("SELECT concat_ws(',', events, head_seq IS NOT NULL, oldest_at <= newest_at) FROM eventq.streams WHERE name = 'mt_v'"),
            Some("4,t,t".into())
        );
        assert_eq!(
            count("SELECT 1 FROM eventq.tasks WHERE consumer = 'mt_v_c' AND event_id IS NOT NULL"),
            4
        );
    }
}
