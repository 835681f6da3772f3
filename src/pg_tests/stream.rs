#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn create_alter_and_drop_a_stream() {
        run("SELECT eventq.create_stream('st_orders')");
        assert_eq!(
            one::<String>("SELECT retention::text FROM eventq.streams WHERE name = 'st_orders'"),
            Some("7 days".into())
        );
        run("SELECT eventq.alter_stream('st_orders', '1 day')");
        assert_eq!(
            one::<String>("SELECT retention::text FROM eventq.streams WHERE name = 'st_orders'"),
            Some("1 day".into())
        );
        run("SELECT eventq.alter_stream('st_orders', NULL)");
        assert_eq!(
            one::<bool>("SELECT retention IS NULL FROM eventq.streams WHERE name = 'st_orders'"),
            Some(true)
        );
        run("SELECT eventq.drop_stream('st_orders')");
        assert_eq!(count("SELECT 1 FROM eventq.streams WHERE name = 'st_orders'"), 0);
    }

    #[pg_test]
    fn forever_retention_and_if_not_exists() {
        run("SELECT eventq.create_stream('st_keep', NULL)");
        assert_eq!(
            one::<bool>("SELECT retention IS NULL FROM eventq.streams WHERE name = 'st_keep'"),
            Some(true)
        );
        run("SELECT eventq.create_stream('st_keep', '1 day', if_not_exists => true)");
        assert_eq!(
            one::<bool>("SELECT retention IS NULL FROM eventq.streams WHERE name = 'st_keep'"),
            Some(true)
        );
    }

    #[pg_test]
    fn stream_errors_name_the_object_and_change_nothing() {
        assert_error(
            "SELECT eventq.create_stream('Orders')",
            "22023",
            "invalid stream name \"Orders\"",
        );
        assert_error("SELECT eventq.create_stream('')", "22023", "invalid stream name");
        assert_error("SELECT eventq.create_stream(NULL)", "22023", "name must not be NULL");
        assert_error(
            "SELECT eventq.create_stream('st_x', '-1 day')",
            "22023",
            "retention must be a positive interval",
        );
        assert_error(
            "SELECT eventq.create_stream('st_x', '0')",
            "22023",
            "retention must be a positive interval",
        );
        assert_eq!(count("SELECT 1 FROM eventq.streams WHERE name = 'st_x'"), 0);

        run("SELECT eventq.create_stream('st_dup')");
        assert_error(
            "SELECT eventq.create_stream('st_dup')",
            "42710",
            "stream \"st_dup\" already exists",
        );
        assert_error(
            "SELECT eventq.alter_stream('st_none', '1 day')",
            "42704",
            "stream \"st_none\" does not exist",
        );
        assert_error("SELECT eventq.alter_stream('st_dup', '-1 day')", "22023", "retention");
        assert_error(
            "SELECT eventq.drop_stream('st_none')",
            "42704",
            "stream \"st_none\" does not exist",
        );
    }

    #[pg_test]
    fn drop_refuses_while_consumers_read_unless_forced() {
        stream_with_consumer("st_busy", "st_busy_c", "");
        run("SELECT eventq.publish('st_busy', 'a.b')");
        run("SELECT tests.maintain()");
        assert_error("SELECT eventq.drop_stream('st_busy')", "2BP01", "consumers read it");
        assert_eq!(count("SELECT 1 FROM eventq.tasks WHERE consumer = 'st_busy_c'"), 1);
        run("SELECT eventq.publish('st_busy', 'a.c')");
        run("SELECT eventq.drop_stream('st_busy', force => true)");
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'st_busy_c'"), 0);
        assert_eq!(count("SELECT 1 FROM eventq_internal.tasks t WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.consumers c WHERE c.id = t.consumer_id)"), 0);
        assert_eq!(count("SELECT 1 FROM eventq.events WHERE stream = 'st_busy'"), 0);
        // the drain deletes the staged events of a stream that is gone
        run("SELECT tests.maintain()");
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged s WHERE NOT EXISTS (SELECT 1 FROM eventq_internal.streams st WHERE st.id = s.stream_id)"), 0);
    }
    /// `newest_events` returns what `eventq.events … ORDER BY seq DESC LIMIT n` returns,
    /// page after page, but reads only those rows: the view reads the whole stream first.
    #[pg_test]
    fn newest_events_pages_back_from_the_end_of_the_log_reading_only_what_it_returns() {
        run("SELECT eventq.create_stream('st_n'); SELECT eventq.create_stream('st_other')");
        run("SELECT eventq.publish_batch('st_n', array_agg('s.' || i % 3),
                                         array_agg(jsonb_build_object('i', i)))
             FROM generate_series(1, 3000) i");
        run("SELECT eventq.publish('st_other', 'x', deliver_at => now() + interval '1 hour')");
        run("SELECT eventq.publish('st_n', 'late', '{}', key => 'k', headers => '{\"h\": 1}',
                                   deliver_at => now() + interval '1 hour')");
        run("SELECT tests.maintain()");
        let page = |before: &str| {
            (
                one::<String>(&format!(
                    "SELECT string_agg(to_jsonb(n)::text, ',' ORDER BY n.seq DESC)
                     FROM eventq.newest_events('st_n', 7, {before}) n"
                )),
                one::<String>(&format!(
                    "SELECT string_agg(to_jsonb(v)::text, ',' ORDER BY v.seq DESC)
                     FROM (SELECT * FROM eventq.events
                           WHERE stream = 'st_n' AND seq < coalesce({before}, 9e18)
                           ORDER BY seq DESC LIMIT 7) v"
                )),
            )
        };
        let (newest, view) = page("NULL");
        assert!(newest.as_deref().is_some_and(|p| p.contains("\"late\"")), "{newest:?}");
        assert_eq!(newest, view);
        let lowest = one::<i64>("SELECT min(seq) FROM eventq.newest_events('st_n', 7)").unwrap();
        let (older, view) = page(&lowest.to_string());
        assert!(older.is_some());
        assert_eq!(older, view);
        assert_eq!(count("SELECT * FROM eventq.newest_events('st_n', 100000)"), 3001);
        assert_eq!(count("SELECT * FROM eventq.newest_events('st_n', before => 1)"), 0);

        let before = log_rows_read();
        assert_eq!(count("SELECT * FROM eventq.newest_events('st_n', 10)"), 10);
        let n = log_rows_read() - before;
        assert!(n <= 30, "{n} rows of the log read for the newest 10 of 3001");

        assert_error("SELECT * FROM eventq.newest_events('st_none')", "42704", "st_none");
        assert_error("SELECT * FROM eventq.newest_events('st_n', 0)", "22023", "max");
    }
}
