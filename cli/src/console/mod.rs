//! `eventq console`: the web console and HTTP publishing, one small server.
//!
//! Everything it shows comes from eventq's views and everything it does goes through
//! eventq's SQL functions, on connections of the role in the connection string: a console
//! started as a role that may only consume one stream shows that stream and can do no more
//! than that role could in psql.
//!
//! Hazards: the pages themselves ask for no password (listen on a local address, or put
//! the console behind a proxy that authenticates). What stops another web site from using
//! a visitor's browser against it: requests must name an allowed host (`localhost`, the
//! listening address, `--allow-host`), so a DNS name rebound to this machine is refused;
//! posts that a browser marks as coming from another site are refused; forms carry a token
//! drawn at start; and HTTP publishing takes only `application/json` (which a page of
//! another origin cannot send without asking first, and is not answered) and requires
//! `Authorization: Bearer $EVENTQ_TOKEN` when that variable is set.

mod actions;
mod api;
mod pages;

use crate::db::{self, Error, Pool};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tokio_postgres::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Show only: no actions, no HTTP publishing, and connections that refuse writes.
    #[arg(long)]
    read_only: bool,
    /// How often open pages refresh their counts. Each refresh of the overview reads
    /// `eventq.streams` and `eventq.consumers`, which count their events and tasks (about
    /// 0.3 s on a stream of a million events).
    #[arg(long, default_value_t = 3.0)]
    refresh_seconds: f64,
    /// Another host name the console may be reached by (a proxy's, this machine's name or
    /// address); `*` allows any. Repeatable.
    #[arg(long)]
    allow_host: Vec<String>,
    /// The most database connections the console holds at once.
    #[arg(long, default_value_t = 8)]
    max_connections: usize,
}

pub struct App {
    pool: Arc<Pool>,
    read_only: bool,
    /// Put in every form and checked on every action.
    form_token: String,
    /// Required by HTTP publishing when set (`EVENTQ_TOKEN`).
    api_token: Option<String>,
    refresh_ms: u64,
    /// Host names requests may carry (lower case, without port); empty: any.
    hosts: Vec<String>,
}

type Shared = Arc<App>;

/// Equal strings, compared in a time that does not depend on where they differ.
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The host name of a `Host` header or an origin's authority, without port, lower case.
fn host_name(authority: &str) -> String {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let name = if authority.starts_with('[') {
        authority.split(']').next().map(|h| format!("{h}]")).unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or("").to_string()
    };
    name.to_ascii_lowercase()
}

/// Refuses requests for a host name not allowed (DNS rebinding), and posts a browser
/// says come from another site.
fn check_sender(
    app: &App,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> Result<(), Failure> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let allowed =
        |authority: &str| app.hosts.is_empty() || app.hosts.contains(&host_name(authority));
    if !header("host").is_some_and(allowed) {
        return Err(Failure::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this console is not served under that host name (see --allow-host)",
        ));
    }
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        let other_site = matches!(header("sec-fetch-site"), Some("cross-site") | Some("same-site"))
            || header("origin").is_some_and(|origin| {
                origin == "null" || !allowed(origin.split("://").nth(1).unwrap_or(""))
            });
        if other_site {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "requests from other sites are refused",
            ));
        }
    }
    Ok(())
}

async fn guard(
    State(app): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refusal) = check_sender(&app, request.method(), request.headers()) {
        return refusal.into_response();
    }
    next.run(request).await
}

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    // fail at start, not at the first page, when the database cannot be reached
    let (probe, _) = db::connect(&config).await?;
    probe.query_one("SELECT count(*) FROM eventq.streams", &[]).await?;
    drop(probe);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    let hosts = if args.allow_host.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        let mut hosts: Vec<String> =
            ["localhost", "127.0.0.1", "[::1]"].iter().map(|h| h.to_string()).collect();
        hosts.push(host_name(&address.to_string()));
        hosts.extend(args.allow_host.iter().map(|h| host_name(h)));
        hosts
    };
    let app = Arc::new(App {
        pool: Pool::new(config, args.read_only, args.max_connections),
        read_only: args.read_only,
        form_token: (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect(),
        api_token: std::env::var("EVENTQ_TOKEN").ok().filter(|t| !t.is_empty()),
        refresh_ms: (args.refresh_seconds.clamp(0.5, 3600.0) * 1000.0) as u64,
        hosts,
    });
    let router = Router::new()
        .route("/", get(pages::overview))
        .route("/consumers/{name}", get(pages::consumer))
        .route("/consumers/{name}/tasks/{id}", get(pages::task))
        .route("/consumers/{name}/actions", post(actions::consumer_action))
        .route("/consumers/{name}/seek", post(actions::seek))
        .route("/events", get(pages::events))
        .route("/events/{stream}/{seq}", get(pages::event))
        .route("/api/streams/{stream}/events", post(api::publish))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app);
    eprintln!(
        "eventq console on http://{}/{}",
        address,
        if args.read_only { " (read-only)" } else { "" }
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await?;
    Ok(())
}

/// What a failed request answers: an HTTP status from eventq's SQLSTATE, and its message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    pub sqlstate: Option<String>,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into(), sqlstate: None }
    }
}

/// The HTTP status for an error eventq (or Postgres) raised.
pub fn status_of(sqlstate: &str) -> StatusCode {
    match sqlstate {
        "42704" => StatusCode::NOT_FOUND,
        "42501" => StatusCode::FORBIDDEN,
        "42710" | "55000" => StatusCode::CONFLICT,
        // invalid name, subject, pattern, argument or payload; malformed input values
        s if s.starts_with("22") => StatusCode::UNPROCESSABLE_ENTITY,
        // a read-only transaction or a standby; conflicts, cancels, shutdowns, a lack of
        // resources or connections: worth trying again
        "25006" => StatusCode::SERVICE_UNAVAILABLE,
        s if s.starts_with("40")
            || s.starts_with("57")
            || s.starts_with("53")
            || s.starts_with("08") =>
        {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        match e.as_db_error() {
            Some(db) => Failure {
                status: status_of(db.code().code()),
                message: db.message().to_string(),
                sqlstate: Some(db.code().code().to_string()),
            },
            None => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("database connection: {e}"))
            }
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e.downcast::<tokio_postgres::Error>() {
            Ok(pg) => Failure::from(*pg),
            Err(e) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let detail = match &self.sqlstate {
            Some(code) => format!(" <span class=\"muted\">(SQLSTATE {code})</span>"),
            None => String::new(),
        };
        let body = format!(
            "<h1>{}</h1><p class=\"error\">{}{detail}</p><p><a href=\"/\">Back to the overview</a></p>",
            self.status,
            crate::html::esc(&self.message)
        );
        (self.status, Html(crate::html::page("Error", false, &body))).into_response()
    }
}

pub type Page = Result<Html<String>, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_and_case() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("user@evil.example:80"), "evil.example");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }

    #[test]
    fn retryable_failures_are_503() {
        for code in ["40001", "40P01", "57014", "57P01", "53300", "08006", "25006"] {
            assert_eq!(status_of(code), StatusCode::SERVICE_UNAVAILABLE, "{code}");
        }
    }
}
