#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    fn fetched(consumer: &str, max: i32) -> Option<String> {
        one::<String>(&format!(
            "SELECT string_agg(subject, ',' ORDER BY seq) FROM eventq.fetch('{consumer}', {max})"
        ))
    }

    #[pg_test]
    fn fetch_reads_after_the_cursor_and_commit_moves_it() {
        run("SELECT eventq.create_stream('lg_s')");
        run("SELECT eventq.create_consumer('lg_c', 'lg_s', mode => 'log')");
        run("SELECT eventq.publish('lg_s', 'e' || n, jsonb_build_object('n', n), key => 'k', headers => '{\"h\":true}') FROM generate_series(1, 5) n");
        assert_eq!(fetched("lg_c", 2), Some("e1,e2".into()));
        assert_eq!(fetched("lg_c", 2), Some("e1,e2".into()), "fetch does not move the cursor");
        let second = one::<i64>("SELECT max(seq) FROM eventq.fetch('lg_c', 2)").unwrap();
        run(&format!("SELECT eventq.commit('lg_c', {second})"));
        assert_eq!(fetched("lg_c", 100), Some("e3,e4,e5".into()));
        assert_eq!(
            one::<String>(
                "SELECT payload->>'n' || key || (headers->>'h') FROM eventq.fetch('lg_c', 1)"
            ),
            Some("3ktrue".into())
        );
        // never backward
        run(&format!("SELECT eventq.commit('lg_c', {})", second - 1));
        assert_eq!(fetched("lg_c", 1), Some("e3".into()));
        assert_eq!(one::<i64>("SELECT lag FROM eventq.consumers WHERE name = 'lg_c'"), Some(3));
        let last = one::<i64>("SELECT max(seq) FROM eventq.fetch('lg_c')").unwrap();
        run(&format!("SELECT eventq.commit('lg_c', {last})"));
        assert_eq!(fetched("lg_c", 100), None);
        assert_eq!(one::<i64>("SELECT lag FROM eventq.consumers WHERE name = 'lg_c'"), Some(0));
    }

    /// A fetch reads the log from its cursor in order and stops at `max`, even before the
    /// table was ever analyzed (a plan made then sorted the whole backlog at each fetch).
    #[pg_test]
    fn a_fetch_reads_only_the_events_it_returns() {
        run("SELECT eventq.create_stream('lg_big')");
        run("SELECT eventq.create_consumer('lg_big_c', 'lg_big', mode => 'log')");
        run("SELECT eventq.publish_batch('lg_big', array_agg('e.' || i), array_agg('{}'::jsonb))
             FROM generate_series(1, 3000) i");
        run("SELECT tests.maintain()");
        for _ in 0..3 {
            let before = log_rows_read();
            assert_eq!(count("SELECT * FROM eventq.fetch('lg_big_c', 10)"), 10);
            let n = log_rows_read() - before;
            assert!(n <= 30, "{n} rows of the log read to fetch 10 of 3000");
        }
    }

    #[pg_test]
    fn a_log_consumer_sees_only_matching_subjects() {
        run("SELECT eventq.create_stream('lg_f')");
        run("SELECT eventq.create_consumer('lg_f_c', 'lg_f', mode => 'log', subjects => '{seller_a.order.>,seller_b.order.*}', exclude => '{*.order.deleted}')");
        for s in [
            "seller_a.order.created",
            "seller_c.order.created",
            "seller_b.order.item.added",
            "seller_b.order.paid",
            "seller_a.order.deleted",
        ] {
            run(&format!("SELECT eventq.publish('lg_f', '{s}')"));
        }
        assert_eq!(
            fetched("lg_f_c", 100),
            Some("seller_a.order.created,seller_b.order.paid".into())
        );
    }

    #[pg_test]
    fn seek_replays_by_seq_and_by_time() {
        run("SELECT eventq.create_stream('lg_seek')");
        run("SELECT eventq.create_consumer('lg_seek_c', 'lg_seek', mode => 'log')");
        run("SELECT eventq.publish('lg_seek', 'old')");
        run("SELECT tests.maintain()");
        run("UPDATE eventq_internal.events SET published_at = now() - interval '1 day'");
        run("SELECT eventq.publish('lg_seek', 'new')");
        let last = one::<i64>("SELECT max(seq) FROM eventq.fetch('lg_seek_c')").unwrap();
        run(&format!("SELECT eventq.commit('lg_seek_c', {last})"));
        assert_eq!(fetched("lg_seek_c", 100), None);
        run("SELECT eventq.seek('lg_seek_c', 0::bigint)");
        assert_eq!(fetched("lg_seek_c", 100), Some("old,new".into()));
        run("SELECT eventq.seek('lg_seek_c', now() - interval '1 hour')");
        assert_eq!(fetched("lg_seek_c", 100), Some("new".into()));
        run("SELECT eventq.seek('lg_seek_c', now() + interval '1 hour')");
        assert_eq!(fetched("lg_seek_c", 100), None);
        run("SELECT eventq.seek('lg_seek_c', '-infinity'::timestamptz)");
        assert_eq!(fetched("lg_seek_c", 100), Some("old,new".into()));
    }

    #[pg_test]
    fn log_calls_check_their_arguments() {
        stream_with_consumer("lg_e", "lg_e_task", "");
        run("SELECT eventq.create_consumer('lg_e_c', 'lg_e', mode => 'log')");
        run("SELECT eventq.publish('lg_e', 'a')");
        run("SELECT tests.maintain()");
        let head =
            one::<i64>("SELECT pg_sequence_last_value('eventq_internal.event_seq')").unwrap();
        assert_error(
            "SELECT * FROM eventq.fetch('lg_none')",
            "42704",
            "consumer \"lg_none\" does not exist",
        );
        assert_error(
            "SELECT * FROM eventq.fetch('lg_e_task')",
            "55000",
            "is a task consumer; fetch needs a log consumer",
        );
        assert_error(
            "SELECT eventq.commit('lg_e_task', 1)",
            "55000",
            "commit needs a log consumer",
        );
        assert_error(
            "SELECT eventq.seek('lg_e_task', 1::bigint)",
            "55000",
            "seek needs a log consumer",
        );
        assert_error(
            "SELECT * FROM eventq.fetch('lg_e_c', 0)",
            "22023",
            "max must be between 1 and",
        );
        assert_error(
            &format!("SELECT eventq.commit('lg_e_c', {})", head + 1),
            "22023",
            "is not a position in the log",
        );
        assert_error("SELECT eventq.commit('lg_e_c', -1)", "22023", "is not a position in the log");
        assert_error("SELECT eventq.commit('lg_e_c', NULL)", "22023", "seq must not be NULL");
        assert_error(
            &format!("SELECT eventq.seek('lg_e_c', {}::bigint)", head + 1),
            "22023",
            "is not a position",
        );
        assert_error(
            "SELECT eventq.seek('lg_e_c', NULL::timestamptz)",
            "22023",
            "at must not be NULL",
        );
        // the cursor starts at the committed head of its creation, before the event
        assert_eq!(
            one::<bool>(&format!(
                "SELECT cursor_seq < {head} FROM eventq.consumers WHERE name = 'lg_e_c'"
            )),
            Some(true)
        );
    }

    // Fetches that found nothing remember the stretch they read (storage::log): what is
    // published after it, and what a changed filter lets through, is still seen.
    #[pg_test]
    fn a_filter_that_matched_nothing_still_sees_what_comes_later() {
        run("SELECT eventq.create_stream('lg_q')");
        run("SELECT eventq.create_consumer('lg_q_c', 'lg_q', mode => 'log', subjects => '{rare}')");
        run("SELECT eventq.publish('lg_q', 'common') FROM generate_series(1, 50)");
        run("SELECT tests.maintain()");
        assert_eq!(count("SELECT * FROM eventq.fetch('lg_q_c', 10)"), 0);
        assert_eq!(count("SELECT * FROM eventq.fetch('lg_q_c', 10)"), 0);
        run("SELECT eventq.publish('lg_q', 'rare')");
        run("SELECT eventq.publish('lg_q', 'common') FROM generate_series(1, 5)");
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<String>("SELECT string_agg(subject, ',') FROM eventq.fetch('lg_q_c', 10)"),
            Some("rare".into())
        );
        assert_eq!(count("SELECT * FROM eventq.fetch('lg_q_c', 10)"), 1);
        run("SELECT eventq.alter_consumer('lg_q_c', subjects => '{common,rare}')");
        assert_eq!(count("SELECT * FROM eventq.fetch('lg_q_c', 100)"), 56);
    }
}
