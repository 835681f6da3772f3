//! A throwaway Postgres cluster per test file, with eventq installed (`make test` runs
//! `cargo pgrx install` first). Started as the `postgres` OS user when the tests run as root,
//! since Postgres refuses to run as root.

#![allow(dead_code)]

pub use postgres;
use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
}

/// postgresql.conf lines that preload eventq, so that its worker runs.
pub const PRELOAD: &str = "shared_preload_libraries = 'eventq'";

fn pg_config(arg: &str) -> String {
    let out = Command::new(std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into()))
        .arg(arg)
        .output()
        .expect("pg_config must be on PATH (or set PG_CONFIG)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs a Postgres program as the user that owns the cluster.
fn pg_command(bindir: &Path, program: &str) -> Command {
    let path = bindir.join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    // Rust backtraces in server error details are noise for clients.
    command.env_remove("RUST_BACKTRACE");
    command
}

fn check(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts a new cluster with eventq created in database `postgres`; `settings` are
    /// appended to postgresql.conf.
    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        let cluster = Cluster::start_without_extension(name, settings);
        cluster.connect().batch_execute("CREATE EXTENSION eventq").unwrap();
        cluster
    }

    pub fn start_without_extension(name: &str, settings: &[&str]) -> Cluster {
        let sharedir = pg_config("--sharedir");
        assert!(
            Path::new(&sharedir).join("extension/eventq.control").exists(),
            "eventq is not installed; run `make install` (or `make test`)"
        );
        let bindir = PathBuf::from(pg_config("--bindir"));
        let dir = std::env::temp_dir().join(format!("eventq-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            check(Command::new("chown").arg("postgres").arg(&dir));
        }
        let data = dir.join("data");
        check(
            pg_command(&bindir, "initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 60\nlog_min_messages = warning\n",
            dir.display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        check(
            pg_command(&bindir, "pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log"))
                .arg("start"),
        );
        Cluster { dir, port, bindir }
    }

    pub fn connect(&self) -> Client {
        self.connect_to("postgres")
    }

    pub fn connect_to(&self, database: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(
                &format!("host=127.0.0.1 port={} user=postgres dbname={database}", self.port),
                NoTls,
            ) {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to the test cluster: {e}"),
            }
        }
    }

    /// Connects to `database` as `user` (trust authentication: any role that may log in).
    pub fn connect_as(&self, database: &str, user: &str) -> Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(database)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("cannot connect as {user}: {e}"))
    }

    /// Connects to database `postgres`, handing every notice and warning to `on_notice`.
    pub fn connect_with_notices(
        &self,
        on_notice: impl Fn(postgres::error::DbError) + Send + Sync + 'static,
    ) -> Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .notice_callback(on_notice)
            .connect(NoTls)
            .unwrap()
    }

    /// Runs one of the server's client programs (pg_dump, pg_restore, psql) against this
    /// cluster, as the cluster's owner; returns its output, failing the test if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut command = pg_command(&self.bindir, program);
        command.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]).args(args);
        let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
        assert!(
            out.status.success(),
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs pg_ctl with `args` on this cluster's data directory.
    pub fn pg_ctl(&self, args: &[&str]) {
        check(
            pg_command(&self.bindir, "pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(args),
        );
    }

    /// A hot standby of this cluster, made with `pg_basebackup -R` and streaming from it.
    /// The primary needs `wal_level = replica` (the default) and a free WAL sender.
    pub fn standby(&self, name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("eventq-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            check(Command::new("chown").arg("postgres").arg(&dir));
        }
        let data = dir.join("data");
        check(
            pg_command(&self.bindir, "pg_basebackup")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream", "-c", "fast"])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-D")
                .arg(&data),
        );
        let port = free_port();
        let conf_path = data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.display()
        ));
        std::fs::write(&conf_path, conf).unwrap();
        check(
            pg_command(&self.bindir, "pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log"))
                .arg("start"),
        );
        Cluster { dir, port, bindir: self.bindir.clone() }
    }
}

/// The SQLSTATE of a failed statement ("" when it is not a database error).
pub fn sqlstate(error: &postgres::Error) -> String {
    error.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// Runs `sql` and returns the SQLSTATE it failed with, panicking if it succeeded.
pub fn fails_with(db: &mut Client, sql: &str) -> String {
    match db.batch_execute(sql) {
        Ok(()) => panic!("expected {sql} to fail"),
        Err(e) => sqlstate(&e),
    }
}

/// `count(*)` of the rows of `sql`.
pub fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM ({sql}) q"), &[]).unwrap().get(0)
}

/// The first column of every row of `sql`, as text.
pub fn column(db: &mut impl postgres::GenericClient, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// Sleeps until just after the next second starts, so that what follows happens in a
/// known staging slot (slots turn over with the second; see core::staging).
pub fn at_next_second() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let into = now.subsec_millis() as u64;
    std::thread::sleep(Duration::from_millis(1000 - into + 20));
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command(&self.bindir, "pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last `Err`, which
/// describes what was seen instead.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic random number generator, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Runs a script one statement at a time, each in its own transaction: unlike one
/// multi-statement query, which Postgres runs as one implicit transaction block, where
/// run_maintenance() refuses to run, as VACUUM does. Statements end with `;` outside `$$`
/// and outside '...' literals; `--` comments are dropped.
pub fn script(db: &mut Client, sql: &str) {
    let mut statements = Vec::new();
    let (mut current, mut quoted, mut literal) = (String::new(), false, false);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' && chars.peek() == Some(&'-') && !quoted && !literal {
            for c in chars.by_ref() {
                if c == '\n' {
                    current.push('\n');
                    break;
                }
            }
        } else if c == '\'' && !quoted {
            literal = !literal;
            current.push(c);
        } else if c == '$' && chars.peek() == Some(&'$') && !literal {
            chars.next();
            current.push_str("$$");
            quoted = !quoted;
        } else if c == ';' && !quoted && !literal {
            statements.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    statements.push(current);
    for statement in statements.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        db.batch_execute(statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for a child process to exit, failing the test after `within`.
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not stop within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `SELECT … ` (counted) returns `expected` rows.
pub fn wait_for_count(db: &mut Client, what: &str, sql: &str, expected: i64) {
    wait_for(what, Duration::from_secs(60), || match count(db, sql) {
        n if n == expected => Ok(()),
        n => Err(format!("{n} rows, not {expected}")),
    });
}

pub mod command;

/// Checks the counts the views show (kept by triggers, see task_counts in sql/schema.sql)
/// against the rows themselves: per consumer and state, and per stream.
///
/// All in one REPEATABLE READ snapshot: a background worker that promotes a due retry
/// between two reads would otherwise move a task from one count to another.
pub fn assert_counts_match_rows(db: &mut Client, when: &str) {
    let mut snapshot = db
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .unwrap();
    let db = &mut snapshot;
    let shown = column(
        db,
        "SELECT name || ' ' || available || ' ' || waiting || ' ' || running || ' ' || retryable
                || ' ' || completed || ' ' || discarded
         FROM eventq.consumers WHERE mode = 'task' ORDER BY name",
    );
    let counted = column(
        db,
        "SELECT c.name || ' ' || count(*) FILTER (WHERE t.state IN ('available', 'scheduled'))
                || ' ' || count(*) FILTER (WHERE t.state = 'waiting')
                || ' ' || count(*) FILTER (WHERE t.state = 'running')
                || ' ' || count(*) FILTER (WHERE t.state = 'retryable')
                || ' ' || count(*) FILTER (WHERE t.state = 'completed')
                || ' ' || count(*) FILTER (WHERE t.state = 'discarded')
         FROM eventq_internal.consumers c
         LEFT JOIN eventq_internal.tasks t ON t.consumer_id = c.id
         WHERE c.mode = 'task' GROUP BY c.name ORDER BY c.name",
    );
    assert_eq!(shown, counted, "task counts {when}");
    let shown = column(db, "SELECT name || ' ' || events FROM eventq.streams ORDER BY name");
    let counted = column(
        db,
        "SELECT s.name || ' ' || count(e.seq) FROM eventq_internal.streams s
         LEFT JOIN eventq_internal.events e ON e.stream_id = s.id GROUP BY s.name ORDER BY s.name",
    );
    assert_eq!(shown, counted, "event counts {when}");
    // The kept counts themselves, by raw state (the views show scheduled as available).
    let kept = column(
        db,
        "SELECT consumer_id || ' ' || state || ' ' || sum(tasks) FROM eventq_internal.task_counts
         GROUP BY consumer_id, state HAVING sum(tasks) <> 0 ORDER BY consumer_id, state",
    );
    let counted = column(
        db,
        "SELECT consumer_id || ' ' || state || ' ' || count(*) FROM eventq_internal.tasks
         GROUP BY consumer_id, state ORDER BY consumer_id, state",
    );
    assert_eq!(kept, counted, "task counts by state {when}");
    // eventq.tasks reads each state apart: every task shows once, in its state.
    let shown = column(
        db,
        "SELECT consumer || ' ' || state || ' ' || count(*) FROM eventq.tasks
         GROUP BY consumer, state ORDER BY 1",
    );
    let counted = column(
        db,
        "SELECT name || ' ' || state || ' ' || count(*)
         FROM (SELECT c.name,
                      CASE t.state WHEN 'scheduled' THEN 'available' ELSE t.state::text END AS state
               FROM eventq_internal.tasks t
               JOIN eventq_internal.consumers c ON c.id = t.consumer_id) t
         GROUP BY name, state ORDER BY 1",
    );
    assert_eq!(shown, counted, "tasks shown by state {when}");
    snapshot.commit().unwrap();
}
