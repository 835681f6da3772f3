//! The web console in a real browser (headless Chromium through chromedriver's WebDriver
//! protocol), against a server with the background worker: the pages show the counts the
//! database holds, refresh themselves, and each action changes the database as it says;
//! a read-only console offers none.
//!
//! `EVENTQ_SCREENSHOT=docs/console.png` also saves the overview as the README shows it.

mod common;

use common::command::{free_port, http, wait_for_http};
use common::{count, wait_for, wait_for_count, Cluster, PRELOAD};
use postgres::Client;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; `make test` installs it)");
        wait_for_http(port, &mut driver);
        let mut b = Browser { driver, port, session: String::new() };
        let created = b.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1500,1000"]}}}}),
        );
        b.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, text) = self.raw(method, path, body);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: {status} {text}"));
        assert!(status == 200, "{method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn raw(&self, method: &str, path: &str, body: Value) -> (u16, String) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        http(self.port, method, path, &[("Content-Type", "application/json")], &body)
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.at("/url"), json!({"url": url}));
    }

    fn url(&self) -> String {
        self.call("GET", &self.at("/url"), Value::Null).as_str().unwrap_or_default().to_string()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.call("POST", &self.at("/elements"), json!({"using": "css selector", "value": css}))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap_or_else(|| panic!("an element: {e}")).to_string())
            .collect()
    }

    fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {css} on {}", self.url()))
    }

    /// The element's text; found again if a refresh replaced it meanwhile.
    fn text(&self, css: &str) -> String {
        for _ in 0..20 {
            let e = self.find(css);
            match self.raw("GET", &self.at(&format!("/element/{e}/text")), Value::Null) {
                (200, body) => {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    return v["value"].as_str().unwrap_or_default().to_string();
                }
                (_, body) if body.contains("stale element") => continue,
                (status, body) => panic!("text of {css}: {status} {body}"),
            }
        }
        panic!("{css} kept going stale")
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &self.at(&format!("/element/{e}/click")), json!({}));
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", &self.at("/execute/sync"), json!({"script": script, "args": []}))
    }

    /// Clicks a button whose form asks first, says yes, and waits for the page it leads to.
    fn confirm_click(&self, css: &str) {
        self.script("document.documentElement.dataset.before = 'action'; return true;");
        self.click(css);
        wait_for("the confirmation", Duration::from_secs(10), || {
            match self.raw("GET", &self.at("/alert/text"), Value::Null) {
                (200, _) => Ok(()),
                (status, text) => Err(format!("{status} {text}")),
            }
        });
        self.call("POST", &self.at("/alert/accept"), json!({}));
        wait_for("the page after the action", Duration::from_secs(10), || {
            let loaded = self.script(
                "return document.readyState === 'complete' && !document.documentElement.dataset.before;",
            );
            if loaded == Value::Bool(true) {
                Ok(())
            } else {
                Err(self.url())
            }
        });
    }

    fn screenshot(&self, path: &str) {
        let png = self.call("GET", &self.at("/screenshot"), Value::Null);
        let bytes = decode_base64(png.as_str().unwrap());
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !matches!(c, b'=' | b'\n' | b'\r')).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| value(c) as u32).collect();
        let n = v.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if v.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if v.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

struct Console {
    child: Child,
    base: String,
}

impl Console {
    fn start(cluster: &Cluster, extra: &[&str]) -> Console {
        let (child, port) = cluster.console("postgres", None, extra);
        Console { child, base: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn task_state(db: &mut Client, task: i64) -> String {
    db.query_one(
        "SELECT state FROM eventq.tasks WHERE consumer = 'mailer' AND task_id = $1",
        &[&task],
    )
    .unwrap()
    .get(0)
}

fn cell(b: &Browser, row_css: &str, column: &str) -> String {
    b.text(&format!("{row_css} td[data-column=\"{column}\"]"))
}

#[test]
fn the_console_shows_the_database_and_its_actions_change_it() {
    let cluster = Cluster::start("console", &[PRELOAD]);
    let mut db = cluster.connect();
    db.batch_execute(
        "SELECT eventq.create_stream('orders');
         SELECT eventq.create_consumer('mailer', 'orders', max_attempts => 3, backoff => 'fixed',
                                       backoff_base => '1 hour');
         SELECT eventq.create_consumer('audit', 'orders', mode => 'log');
         SELECT eventq.publish('orders', 'order.created', jsonb_build_object('n', n), key => 'k' || n)
         FROM generate_series(1, 5) n;",
    )
    .unwrap();
    wait_for_count(&mut db, "the tasks", "SELECT 1 FROM eventq.tasks", 5);
    let pulled: Vec<i64> = db
        .query("SELECT task_id FROM eventq.pull('mailer', 3) ORDER BY task_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (t1, t2, t3) = (pulled[0], pulled[1], pulled[2]);
    db.execute("SELECT eventq.ack('mailer', ARRAY[$1::bigint])", &[&t1]).unwrap();
    db.execute("SELECT eventq.retry('mailer', $1, 'smtp timeout')", &[&t2]).unwrap();
    db.execute("SELECT eventq.discard('mailer', $1, 'bad address')", &[&t3]).unwrap();
    let t4: i64 = db.query_one("SELECT min(task_id) FROM eventq.tasks WHERE consumer = 'mailer' AND state = 'available'", &[]).unwrap().get(0);

    let console = Console::start(&cluster, &[]);
    let b = Browser::start();
    let base = &console.base;

    // the overview: the counts the database holds
    b.go(&format!("{base}/"));
    let mailer = "#consumers tr:has(a[href=\"/consumers/mailer\"])";
    for (column, expected) in [
        ("available", "2"),
        ("retryable", "1"),
        ("completed", "1"),
        ("discarded", "1"),
        ("running", "0"),
    ] {
        assert_eq!(cell(&b, mailer, column), expected, "{column}");
    }
    assert_eq!(cell(&b, "#streams tr:has(a[href=\"/events?stream=orders\"])", "events"), "5");
    assert!(
        !b.find_all("#workers tbody tr td[data-column=\"pid\"]").is_empty(),
        "the worker's row"
    );
    assert!(b.text("#health").contains("oldest snapshot"));
    if let Ok(path) = std::env::var("EVENTQ_SCREENSHOT") {
        b.screenshot(&path);
    }
    // it refreshes itself
    db.batch_execute("SELECT eventq.publish('orders', 'order.created', '{\"n\": 6}', key => 'k6')")
        .unwrap();
    wait_for("the overview to refresh", Duration::from_secs(15), || {
        match cell(&b, mailer, "available").as_str() {
            "3" => Ok(()),
            other => Err(other.to_string()),
        }
    });

    // the consumer page and its actions
    b.go(&format!("{base}/consumers/mailer"));
    assert_eq!(b.text("#counts td[data-state=\"available\"]"), "3");
    b.confirm_click("#pause");
    assert!(db
        .query_one("SELECT paused FROM eventq.consumers WHERE name = 'mailer'", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(b.text("#paused"), "paused");
    b.confirm_click("#resume");
    assert!(!db
        .query_one("SELECT paused FROM eventq.consumers WHERE name = 'mailer'", &[])
        .unwrap()
        .get::<_, bool>(0));

    b.click(&format!("#tasks tr[data-task=\"{t2}\"] input[type=checkbox]"));
    b.confirm_click("#retry-now");
    assert_eq!(task_state(&mut db, t2), "available");
    assert!(b.text("#notice").contains("1 of 1"), "{}", b.text("#notice"));

    b.click(&format!("#tasks tr[data-task=\"{t4}\"] input[type=checkbox]"));
    b.confirm_click("#discard");
    assert_eq!(task_state(&mut db, t4), "discarded");

    b.click(&format!("#tasks tr[data-task=\"{t3}\"] input[type=checkbox]"));
    b.confirm_click("#redrive");
    assert_eq!(task_state(&mut db, t3), "available");

    // filtered by state
    b.go(&format!("{base}/consumers/mailer?state=discarded"));
    let discarded = count(
        &mut db,
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'mailer' AND state = 'discarded'",
    );
    assert_eq!(b.find_all("#tasks tbody tr[data-task]").len() as i64, discarded);

    // a task: its attempts and payload
    b.go(&format!("{base}/consumers/mailer/tasks/{t2}"));
    let attempts = b.text("#attempts");
    assert!(attempts.contains("failed") && attempts.contains("smtp timeout"), "{attempts}");
    assert!(b.text("#payload").contains("\"n\""), "{}", b.text("#payload"));
    b.confirm_click("#discard");
    assert_eq!(task_state(&mut db, t2), "discarded");

    // a log consumer: a preview of what a seek replays, then the seek
    db.batch_execute(
        "SELECT eventq.commit('audit', (SELECT max(seq) FROM eventq.fetch('audit', 100)))",
    )
    .unwrap();
    b.go(&format!("{base}/consumers/audit?preview_seq=0"));
    assert_eq!(b.text("b[data-field=\"replayed\"]"), "6");
    assert_eq!(b.text("b[data-field=\"again\"]"), "6");
    assert_eq!(b.find_all("#replay tbody tr").len(), 6);
    b.confirm_click("#seek");
    assert_eq!(
        db.query_one("SELECT cursor_seq FROM eventq.consumers WHERE name = 'audit'", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    assert_eq!(b.text("td[data-field=\"cursor\"]"), "0");
    // and by time, through seek(consumer, at)
    db.batch_execute(
        "SELECT eventq.commit('audit', (SELECT max(seq) FROM eventq.fetch('audit', 100)))",
    )
    .unwrap();
    b.go(&format!("{base}/consumers/audit?preview_at=2000-01-01"));
    assert_eq!(b.text("b[data-field=\"replayed\"]"), "6");
    b.confirm_click("#seek");
    assert_eq!(
        db.query_one("SELECT cursor_seq FROM eventq.consumers WHERE name = 'audit'", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );

    // events: searched, and one with the tasks it made
    b.go(&format!("{base}/events?stream=orders&subject=order.*&key=k2"));
    assert_eq!(b.find_all("#events tbody tr td[data-column=\"seq\"]").len(), 1);
    b.click("#events tbody td[data-column=\"seq\"] a");
    assert!(b.text("#tasks").contains("mailer"));
    assert!(b.text("#payload").contains("2"));

    // what events carry is shown as text, never run as markup
    db.batch_execute(
        r#"SELECT eventq.publish('orders', 'order.created',
               '{"html": "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">"}',
               key => '<b>bold</b>')"#,
    )
    .unwrap();
    wait_for_count(
        &mut db,
        "the hostile event's task",
        "SELECT 1 FROM eventq.tasks WHERE consumer = 'mailer' AND key = '<b>bold</b>'",
        1,
    );
    let hostile: i64 = db
        .query_one(
            "SELECT task_id FROM eventq.tasks WHERE consumer = 'mailer' AND key = '<b>bold</b>'",
            &[],
        )
        .unwrap()
        .get(0);
    for page in [
        format!("{base}/consumers/mailer/tasks/{hostile}"),
        format!("{base}/events/orders/{hostile}"),
        format!("{base}/consumers/mailer"),
    ] {
        b.go(&page);
        assert_eq!(
            b.script(
                "return window.pwned === undefined && document.querySelectorAll('main b').length;"
            ),
            json!(0),
            "{page}"
        );
    }
    b.go(&format!("{base}/consumers/mailer/tasks/{hostile}"));
    assert!(
        b.text("#payload").contains("<script>window.pwned = 1</script>"),
        "{}",
        b.text("#payload")
    );

    // read-only: nothing to click, and actions are refused
    let read_only = Console::start(&cluster, &["--read-only"]);
    b.go(&format!("{}/consumers/mailer", read_only.base));
    assert!(b.find_all("form[method=\"post\"]").is_empty());
    assert!(b.find_all("#pause").is_empty());
    let port: u16 = read_only.base.rsplit(':').next().unwrap().parse().unwrap();
    let (status, _) = http(port, "POST", "/consumers/mailer/actions", &[], "action=pause");
    assert_eq!(status, 403);
    // and without the form's token, the writable console refuses too
    let port: u16 = console.base.rsplit(':').next().unwrap().parse().unwrap();
    let (status, _) = http(
        port,
        "POST",
        "/consumers/mailer/actions",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "action=pause",
    );
    assert_eq!(status, 403);
    assert!(!db
        .query_one("SELECT paused FROM eventq.consumers WHERE name = 'mailer'", &[])
        .unwrap()
        .get::<_, bool>(0));
}
