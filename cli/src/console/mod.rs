//! `eventq console`: the web console and HTTP publishing, one small server.
//!
//! Everything it shows comes from eventq's views and everything it does goes through
//! eventq's SQL functions, on connections of the role in the connection string: a console
//! started as a role that may only consume one stream shows that stream and can do no more
//! than that role could in psql.
//!
//! Hazards: the pages themselves ask for no password (listen on a local address, or put
//! the console behind a proxy that authenticates). Forms carry a token drawn at start, so
//! another site cannot make a visitor's browser post actions. HTTP publishing requires
//! `Authorization: Bearer $EVENTQ_TOKEN` when that variable is set.

mod actions;
mod api;
mod pages;

use crate::db::{self, Error, Pool};
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
}

pub struct App {
    pool: Arc<Pool>,
    read_only: bool,
    /// Put in every form and checked on every action.
    form_token: String,
    /// Required by HTTP publishing when set (`EVENTQ_TOKEN`).
    api_token: Option<String>,
}

type Shared = Arc<App>;

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    // fail at start, not at the first page, when the database cannot be reached
    let (probe, _) = db::connect(&config).await?;
    probe.query_one("SELECT count(*) FROM eventq.streams", &[]).await?;
    drop(probe);
    let app = Arc::new(App {
        pool: Pool::new(config, args.read_only),
        read_only: args.read_only,
        form_token: (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect(),
        api_token: std::env::var("EVENTQ_TOKEN").ok().filter(|t| !t.is_empty()),
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
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    eprintln!(
        "eventq console on http://{}/{}",
        listener.local_addr()?,
        if args.read_only { " (read-only)" } else { "" }
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
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
        // a read-only transaction or a standby
        "25006" => StatusCode::SERVICE_UNAVAILABLE,
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
            None => Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("database connection: {e}")),
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
