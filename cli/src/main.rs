//! `eventq`: a web console, a command line and an HTTP publisher for any database where
//! the eventq extension is installed. Every command works through eventq's SQL API and
//! views, under the privileges of the role it connects as.

mod apply;
mod console;
mod db;
mod html;
mod overview;
mod publish;
mod status;
mod tail;
mod work;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "eventq", version, about = "Console, CLI and HTTP publisher for eventq")]
struct Cli {
    /// Connection string (URL or key=value); without it, libpq's PG* variables.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web console, and HTTP publishing under /api.
    Console(console::Args),
    /// Publish one event, or each JSON line of stdin as an event (in batches).
    Publish(publish::Args),
    /// Print a stream's events (or what a consumer would receive) as JSON lines.
    Tail(tail::Args),
    /// Work a task consumer's tasks with a command: the payload on its stdin, ack on exit
    /// 0, retry with its stderr otherwise.
    Work(work::Args),
    /// Create or change streams, consumers and grants as a YAML or JSON file describes.
    Apply(apply::Args),
    /// Streams, consumers and health, as tables.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("eventq: {e}");
                return ExitCode::FAILURE;
            }
        };
    let result = runtime.block_on(async move {
        let config = db::config(cli.database_url.as_deref())?;
        match cli.command {
            Command::Console(args) => console::run(config, args).await,
            Command::Publish(args) => publish::run(config, args).await,
            Command::Tail(args) => tail::run(config, args).await,
            Command::Work(args) => work::run(config, args).await,
            Command::Apply(args) => apply::run(config, args).await,
            Command::Status => status::run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => eprintln!("eventq: {}", db::describe(pg)),
                None => eprintln!("eventq: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
