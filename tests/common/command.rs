//! The `eventq` command (the `cli` crate), built once per test binary into its own target
//! directory, and a minimal HTTP/1.1 client for its console and for chromedriver.

use super::Cluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The built binary (built on first use; a build that fails fails the test).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let target = root.join("target").join("cli");
            // its own target directory: the test run's own is locked by the cargo running it
            let status = Command::new("cargo")
                .args(["build", "--quiet", "-p", "eventq-cli", "--bin", "eventq"])
                .arg("--target-dir")
                .arg(&target)
                .current_dir(&root)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET_DIR")
                .status()
                .expect("cargo");
            assert!(status.success(), "the eventq command does not build");
            target.join("debug").join("eventq")
        })
        .clone()
}

impl Cluster {
    pub fn url_as(&self, user: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// `eventq ARGS…` connected to this cluster as `postgres`.
    pub fn eventq(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.env("DATABASE_URL", self.url_as("postgres")).env_remove("RUST_BACKTRACE").args(args);
        c
    }
}

impl Cluster {
    /// `eventq console` on a free local port, as `user`, with `EVENTQ_TOKEN` set to `token`
    /// (or unset), once it answers; the child and its port.
    pub fn console(
        &self,
        user: &str,
        token: Option<&str>,
        extra: &[&str],
    ) -> (std::process::Child, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = self.eventq(&["console", "--listen", &listen]);
        command
            .args(extra)
            .env("DATABASE_URL", self.url_as(user))
            .stderr(std::process::Stdio::null());
        match token {
            Some(t) => command.env("EVENTQ_TOKEN", t),
            None => command.env_remove("EVENTQ_TOKEN"),
        };
        let mut child = command.spawn().unwrap();
        wait_for_http(port, &mut child);
        (child, port)
    }
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP request; the status and the body (the connection is closed after it).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read the head, then the body by its length (a server may keep the connection open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before the response's head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &raw[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    (status, if chunked { dechunk(&body) } else { body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until something answers HTTP on the port.
pub fn wait_for_http(port: u16, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before it listened: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
