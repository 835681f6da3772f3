#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn publish_writes_one_staged_row_and_returns_its_id() {
        run("SELECT eventq.create_stream('pb_s')");
        let id = one::<pgrx::Uuid>("SELECT eventq.publish('pb_s', 'order.created', '{\"n\": 1}', key => 'k', headers => '{\"h\": 1}')").unwrap();
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 1);
        let row = Spi::get_three::<String, String, String>(&format!(
            "SELECT subject, key, payload::text FROM eventq_internal.staged WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(
            row,
            (Some("order.created".into()), Some("k".into()), Some("{\"n\": 1}".into()))
        );
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<String>(&format!(
                "SELECT headers::text FROM eventq.events WHERE event_id = '{id}'"
            )),
            Some("{\"h\": 1}".into())
        );
    }

    #[pg_test]
    fn ids_increase_and_the_default_payload_is_an_empty_object() {
        run("SELECT eventq.create_stream('pb_ids')");
        run("SELECT eventq.publish('pb_ids', 'a') FROM generate_series(1, 50)");
        assert_eq!(
            one::<String>("SELECT payload::text FROM eventq_internal.staged LIMIT 1"),
            Some("{}".into())
        );
        run("SELECT tests.maintain()");
        // seq order (drain order) equals id order (publish order) within a transaction
        assert_eq!(
            one::<bool>("SELECT array_agg(event_id ORDER BY seq) = array_agg(event_id ORDER BY event_id) FROM eventq.events WHERE stream = 'pb_ids'"),
            Some(true)
        );
    }

    #[pg_test]
    fn publish_errors_change_nothing() {
        run("SELECT eventq.create_stream('pb_err')");
        assert_error(
            "SELECT eventq.publish('pb_none', 'a')",
            "42704",
            "stream \"pb_none\" does not exist",
        );
        assert_error(
            "SELECT eventq.publish('pb_err', 'a..b')",
            "22023",
            "invalid subject \"a..b\"",
        );
        assert_error("SELECT eventq.publish('pb_err', 'a.*')", "22023", "invalid subject");
        assert_error("SELECT eventq.publish('pb_err', '')", "22023", "invalid subject");
        assert_error(
            &format!("SELECT eventq.publish('pb_err', '{}')", "a".repeat(256)),
            "22023",
            "1 to 255",
        );
        assert_error("SELECT eventq.publish('pb_err', NULL)", "22023", "subject must not be NULL");
        assert_error("SELECT eventq.publish(NULL, 'a')", "22023", "stream must not be NULL");
        assert_error(
            "SELECT eventq.publish('pb_err', 'a', NULL)",
            "22023",
            "payload must not be NULL",
        );
        assert_error(
            "SELECT eventq.publish('pb_err', 'a', headers => '[1]')",
            "22023",
            "headers must be a JSON object",
        );
        assert_error(
            "SELECT eventq.publish('pb_err', 'a', headers => '\"x\"')",
            "22023",
            "headers must be a JSON object",
        );
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 0);
        // JSON null headers are not an object either; SQL NULL is fine
        assert_error("SELECT eventq.publish('pb_err', 'a', headers => 'null')", "22023", "headers");
        run("SELECT eventq.publish('pb_err', 'a', headers => NULL)");
    }

    #[pg_test]
    fn dedup_returns_the_first_id_and_adds_nothing() {
        run("SELECT eventq.create_stream('pb_dd')");
        run("SELECT eventq.create_stream('pb_dd2')");
        let first = one::<pgrx::Uuid>(
            "SELECT eventq.publish('pb_dd', 'a', '{\"n\":1}', dedup_key => 'order-1')",
        )
        .unwrap();
        let again = one::<pgrx::Uuid>(
            "SELECT eventq.publish('pb_dd', 'a', '{\"n\":2}', dedup_key => 'order-1')",
        )
        .unwrap();
        assert_eq!(first, again);
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 1);
        // keys are per stream
        let other =
            one::<pgrx::Uuid>("SELECT eventq.publish('pb_dd2', 'a', dedup_key => 'order-1')")
                .unwrap();
        assert_ne!(first, other);
        run("SELECT tests.maintain()");
        let after_drain =
            one::<pgrx::Uuid>("SELECT eventq.publish('pb_dd', 'a', dedup_key => 'order-1')")
                .unwrap();
        assert_eq!(first, after_drain);
        assert_eq!(count("SELECT 1 FROM eventq.events WHERE stream = 'pb_dd'"), 1);
        assert_error(
            "SELECT eventq.publish('pb_none', 'a', dedup_key => 'x')",
            "42704",
            "does not exist",
        );
    }

    #[pg_test]
    fn publish_batch_returns_ids_in_input_order() {
        run("SELECT eventq.create_stream('pb_b')");
        run("SELECT eventq.create_consumer('pb_b_c', 'pb_b')");
        let ids = count(
            "SELECT eventq.publish_batch('pb_b', ARRAY['a.1','a.2','a.3'], ARRAY['1','2','3']::jsonb[],
                                         ARRAY['k1', NULL, 'k3'], ARRAY['{\"h\":1}', NULL, '{}']::jsonb[])",
        );
        assert_eq!(ids, 3);
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<String>("SELECT string_agg(subject || ':' || payload::text || ':' || coalesce(key, '-'), ',' ORDER BY seq) FROM eventq.events WHERE stream = 'pb_b'"),
            Some("a.1:1:k1,a.2:2:-,a.3:3:k3".into())
        );
        assert_eq!(
            one::<bool>("WITH ids AS (SELECT id, row_number() OVER () AS n FROM eventq.publish_batch('pb_b', ARRAY['x','y'], ARRAY['{}','{}']::jsonb[]) id)
                         SELECT bool_and(a.id < b.id) FROM ids a JOIN ids b ON b.n = a.n + 1"),
            Some(true)
        );
        assert_eq!(count("SELECT eventq.publish_batch('pb_b', '{}', '{}')"), 0);
    }

    #[pg_test]
    fn publish_batch_errors_change_nothing() {
        run("SELECT eventq.create_stream('pb_be')");
        let ok_payloads = "ARRAY['{}','{}']::jsonb[]";
        assert_error(
            &format!("SELECT eventq.publish_batch('pb_none', ARRAY['a','b'], {ok_payloads})"),
            "42704",
            "does not exist",
        );
        assert_error(
            "SELECT eventq.publish_batch('pb_be', ARRAY['a','b'], ARRAY['{}']::jsonb[])",
            "22023",
            "same length",
        );
        assert_error(&format!("SELECT eventq.publish_batch('pb_be', ARRAY['a','b'], {ok_payloads}, keys => ARRAY['k'])"), "22023", "keys has 1");
        assert_error(&format!("SELECT eventq.publish_batch('pb_be', ARRAY['a','b'], {ok_payloads}, headers => ARRAY['{{}}']::jsonb[])"), "22023", "headers has 1");
        assert_error(
            &format!("SELECT eventq.publish_batch('pb_be', ARRAY['a','b..c'], {ok_payloads})"),
            "22023",
            "invalid subject \"b..c\"",
        );
        assert_error(
            &format!("SELECT eventq.publish_batch('pb_be', ARRAY['a',NULL], {ok_payloads})"),
            "22023",
            "subjects[2] is NULL",
        );
        assert_error(
            "SELECT eventq.publish_batch('pb_be', ARRAY['a','b'], ARRAY['{}',NULL]::jsonb[])",
            "22023",
            "payloads[2] is NULL",
        );
        assert_error(&format!("SELECT eventq.publish_batch('pb_be', ARRAY['a','b'], {ok_payloads}, headers => ARRAY['{{}}','[]']::jsonb[])"), "22023", "headers[2] must be a JSON object");
        assert_error("SELECT eventq.publish_batch('pb_be', ARRAY[['a'],['b']], ARRAY[['{}'],['{}']]::jsonb[])", "22023", "one-dimensional");
        assert_error(
            "SELECT eventq.publish_batch('pb_be', NULL, ARRAY['{}']::jsonb[])",
            "22023",
            "subjects must not be NULL",
        );
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 0);
    }

    #[pg_test]
    fn a_rolled_back_publish_leaves_nothing() {
        run("SELECT eventq.create_stream('pb_rb')");
        assert!(error_of("SELECT eventq.publish('pb_rb', 'a'), 1/0").is_some());
        run("SELECT tests.maintain()");
        assert_eq!(count("SELECT 1 FROM eventq.events WHERE stream = 'pb_rb'"), 0);
    }

    #[pg_test]
    fn publishing_needs_a_publish_grant_not_rights_on_storage() {
        run("SELECT eventq.create_stream('pb_acl')");
        run("CREATE ROLE eventq_test_publisher");
        // rights on storage alone are not enough (nor needed)
        run("GRANT USAGE ON SCHEMA eventq_internal TO eventq_test_publisher");
        run("GRANT ALL ON ALL TABLES IN SCHEMA eventq_internal TO eventq_test_publisher");
        run("SET LOCAL ROLE eventq_test_publisher");
        assert_error(
            "SELECT eventq.publish('pb_acl', 'a')",
            "42501",
            "permission denied to publish to stream \"pb_acl\"",
        );
        run("RESET ROLE");
        run("REVOKE ALL ON ALL TABLES IN SCHEMA eventq_internal FROM eventq_test_publisher");
        run("REVOKE ALL ON SCHEMA eventq_internal FROM eventq_test_publisher");
        run("SELECT eventq.grant('publish', 'pb_acl', 'eventq_test_publisher')");
        run("SET LOCAL ROLE eventq_test_publisher");
        run("SELECT eventq.publish('pb_acl', 'a')");
        run("SELECT eventq.publish_batch('pb_acl', '{b}', ARRAY['{}']::jsonb[])");
        run("SELECT eventq.publish('pb_acl', 'c', dedup_key => 'once')");
        run("RESET ROLE");
        assert_eq!(count("SELECT 1 FROM eventq_internal.staged"), 3);
    }

    #[pg_test]
    fn payloads_larger_than_the_limit_are_refused() {
        run("SELECT eventq.create_stream('pb_limit')");
        run("SET LOCAL eventq.max_payload_size = '2kB'");
        run(
            "SELECT eventq.publish('pb_limit', 'fits', jsonb_build_object('b', repeat('x', 1500)))",
        );
        assert_error(
            "SELECT eventq.publish('pb_limit', 'big', jsonb_build_object('b', repeat('x', 3000)))",
            "22023",
            "more than eventq.max_payload_size (2.0 kB)",
        );
        assert_error(
            "SELECT eventq.publish('pb_limit', 'big', '{}', headers => jsonb_build_object('b', repeat('x', 3000)))",
            "22023",
            "the event is ",
        );
        assert_error(
            "SELECT eventq.publish_batch('pb_limit', '{a,b}', ARRAY['{}', jsonb_build_object('b', repeat('x', 3000))])",
            "22023",
            "event 2 of the batch",
        );
        // compressible or not, the limit is on the size uncompressed
        assert_error(
            "SELECT eventq.publish('pb_limit', 'big', jsonb_build_object('b', repeat('x', 100000)))",
            "22023",
            "max_payload_size",
        );
    }

    #[pg_test]
    fn large_payloads_are_toasted_and_survive_the_drain() {
        run("SELECT eventq.create_stream('pb_big')");
        run("SELECT eventq.publish('pb_big', 'big', jsonb_build_object('blob', repeat(md5(n::text), 20000))) FROM generate_series(1, 3) n");
        run("SELECT tests.maintain()");
        assert_eq!(
            one::<i64>(
                "SELECT sum(length(payload->>'blob')) FROM eventq.events WHERE stream = 'pb_big'"
            ),
            Some(3 * 32 * 20000)
        );
    }
}
