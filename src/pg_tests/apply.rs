#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::*;
    use pgrx::prelude::*;

    const SPEC: &str = r#"{
        "streams": {"ap_orders": {"retention": "30 days"}},
        "consumers": {
            "ap_mailer": {"stream": "ap_orders", "subjects": ["order.>"], "max_attempts": 5,
                          "backoff": "fixed", "lease": "2 minutes"},
            "ap_audit": {"stream": "ap_orders", "mode": "log", "paused": true}
        },
        "grants": [{"privilege": "consume", "stream": "ap_orders", "role": "ap_app", "subjects": ["order.>"]}]
    }"#;

    fn actions(report: &str) -> String {
        one::<String>(&format!(
            "SELECT coalesce(string_agg(c->>'action' || ':' || coalesce(c->>'consumer', c->>'stream'), ',' ORDER BY n), '')
             FROM jsonb_array_elements(({report})->'changes') WITH ORDINALITY AS x(c, n)"
        ))
        .unwrap_or_default()
    }

    #[pg_test]
    fn apply_makes_the_database_match_and_then_changes_nothing() {
        run("CREATE ROLE ap_app");
        // a dry run reports and keeps nothing
        let dry = format!("eventq.apply('{SPEC}', dry_run => true)");
        assert_eq!(
            actions(&dry),
            "create_stream:ap_orders,grant:ap_orders,create_consumer:ap_audit,pause_consumer:ap_audit,create_consumer:ap_mailer"
        );
        assert_eq!(count("SELECT 1 FROM eventq.streams WHERE name = 'ap_orders'"), 0);
        // the same, made
        assert_eq!(
            actions(&format!("eventq.apply('{SPEC}')")),
            "create_stream:ap_orders,grant:ap_orders,create_consumer:ap_audit,pause_consumer:ap_audit,create_consumer:ap_mailer"
        );
        assert_eq!(
            one::<String>("SELECT mode || '/' || subjects::text || '/' || max_attempts || '/' || backoff || '/' || lease::text || '/' || paused FROM eventq.consumers WHERE name = 'ap_mailer'"),
            Some("task/{order.>}/5/fixed/00:02:00/false".into())
        );
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'ap_audit' AND mode = 'log' AND paused"), 1);
        assert_eq!(count("SELECT 1 FROM eventq.grants WHERE stream = 'ap_orders' AND role = 'ap_app' AND subjects = '{order.>}'"), 1);
        // idempotent
        assert_eq!(actions(&format!("eventq.apply('{SPEC}')")), "");
        // a setting left out goes back to its default; pausing is left alone unless written
        let changed = r#"{"streams": {"ap_orders": {"retention": "720 hours"}},
                          "consumers": {"ap_mailer": {"stream": "ap_orders", "subjects": ["order.>"], "backoff": "fixed", "lease": "2 minutes"},
                                        "ap_audit": {"stream": "ap_orders", "mode": "log"}}}"#;
        assert_eq!(
            one::<String>(&format!("SELECT eventq.apply('{changed}')->'changes'->0->>'settings'")),
            Some(r#"["max_attempts"]"#.into())
        );
        assert_eq!(
            count("SELECT 1 FROM eventq.consumers WHERE name = 'ap_mailer' AND max_attempts = 10"),
            1
        );
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'ap_audit' AND paused"), 1);
        // absent
        let gone = r#"{"streams": {"ap_orders": {"absent": true, "force": true}},
                       "consumers": {"ap_mailer": {"absent": true}},
                       "grants": [{"privilege": "consume", "stream": "ap_orders", "role": "ap_app", "absent": true}]}"#;
        assert_eq!(
            actions(&format!("eventq.apply('{gone}')")),
            "revoke:ap_orders,drop_consumer:ap_mailer,drop_stream:ap_orders"
        );
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name LIKE 'ap_%'"), 0);
        assert_eq!(actions(&format!("eventq.apply('{gone}')")), "");
    }

    #[pg_test]
    fn apply_sets_and_removes_a_sequence() {
        let with = r#"{"streams": {"ap_s": {}}, "consumers": {"ap_seq": {"stream": "ap_s", "ordering": "key",
                       "sequence": ["a.created", "a.paid"], "sequence_timeout": "10 minutes"}}}"#;
        run(&format!("SELECT eventq.apply('{with}')"));
        assert_eq!(
            one::<String>("SELECT sequence::text || ' ' || sequence_timeout::text FROM eventq.consumers WHERE name = 'ap_seq'"),
            Some("{a.created,a.paid} 00:10:00".into())
        );
        assert_eq!(actions(&format!("eventq.apply('{with}')")), "");
        let without = r#"{"consumers": {"ap_seq": {"stream": "ap_s", "ordering": "key"}}}"#;
        assert_eq!(
            one::<String>(&format!("SELECT eventq.apply('{without}')->'changes'->0->>'settings'")),
            Some(r#"["sequence"]"#.into())
        );
        assert_eq!(count("SELECT 1 FROM eventq.consumers WHERE name = 'ap_seq' AND sequence IS NULL AND sequence_timeout IS NULL"), 1);
    }

    #[pg_test]
    fn apply_can_do_only_what_its_caller_may() {
        run("CREATE ROLE ap_nobody");
        run("SET LOCAL ROLE ap_nobody");
        assert_error(
            r#"SELECT eventq.apply('{"streams": {"ap_x": {}}}', dry_run => true)"#,
            "42501",
            "permission denied to create",
        );
        run("RESET ROLE");
        assert_error(
            r#"SELECT eventq.apply('{"streams": {"ap_x": {"retention": "often"}}}')"#,
            "22007",
            "often",
        );
        assert_error(
            r#"SELECT eventq.apply('{"consumer": {}}')"#,
            "22023",
            "unknown key \"consumer\"",
        );
        assert_error(
            r#"SELECT eventq.apply('{"streams": {"ap_y": {}}, "consumers": {"ap_c": {"stream": "ap_y", "subjects": ["a..b"]}}}')"#,
            "22023",
            "invalid subject pattern",
        );
        // a failed apply leaves nothing behind
        assert_eq!(count("SELECT 1 FROM eventq.streams WHERE name IN ('ap_x', 'ap_y')"), 0);
    }
}
