//! `eventq publish STREAM SUBJECT [PAYLOAD|-]`: one event, or one per JSON line of stdin,
//! published with `publish_batch` in batches (each batch its own transaction: a failure
//! stops at a batch boundary, and says how many were published before it).

use crate::db::{self, Error};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_postgres::Config;

#[derive(clap::Args)]
pub struct Args {
    stream: String,
    subject: String,
    /// The payload as JSON; `-` (or nothing, with stdin not a terminal) reads one payload
    /// per line from stdin. Nothing at all publishes `{}`.
    payload: Option<String>,
    /// The events' key (key-ordered consumers deliver one key's tasks one at a time).
    #[arg(long)]
    key: Option<String>,
    /// Headers, as a JSON object.
    #[arg(long)]
    headers: Option<String>,
    /// For a single event: a second publish with the same key returns the first event.
    #[arg(long, conflicts_with = "batch")]
    dedup_key: Option<String>,
    /// Events per `publish_batch` call when reading stdin.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

fn json(what: &str, text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}").into())
}

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    let headers = args.headers.as_deref().map(|h| json("--headers", h)).transpose()?;
    let from_stdin = match args.payload.as_deref() {
        Some("-") => true,
        Some(_) => false,
        None => !std::io::stdin().is_terminal(),
    };
    let (client, _) = db::connect(&config).await?;
    if !from_stdin {
        let payload = match args.payload.as_deref() {
            Some(p) => json("the payload", p)?,
            None => Value::Object(Default::default()),
        };
        let row = client
            .query_one(
                "SELECT eventq.publish($1, $2, $3::jsonb, key => $4, headers => $5::jsonb, dedup_key => $6)::text",
                &[&args.stream, &args.subject, &payload, &args.key, &headers, &args.dedup_key],
            )
            .await?;
        println!("{}", row.get::<_, String>(0));
        return Ok(());
    }
    let statement = client
        .prepare("SELECT count(*) FROM eventq.publish_batch($1, $2::text[], $3::jsonb[], $4::text[], $5::jsonb[])")
        .await?;
    let progress = ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{spinner} {human_pos} events published ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if !std::io::stderr().is_terminal() {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (mut line_no, mut published) = (0u64, 0u64);
    let mut payloads: Vec<Value> = Vec::new();
    loop {
        let line = lines.next_line().await?;
        let end = line.is_none();
        if let Some(line) = line {
            line_no += 1;
            if !line.trim().is_empty() {
                payloads.push(json(&format!("line {line_no}"), &line)?);
            }
        }
        if payloads.len() >= args.batch as usize || (end && !payloads.is_empty()) {
            let n = payloads.len();
            let subjects = vec![args.subject.clone(); n];
            let keys = args.key.as_ref().map(|k| vec![k.clone(); n]);
            let all_headers = headers.as_ref().map(|h| vec![h.clone(); n]);
            let result = client
                .query_one(&statement, &[&args.stream, &subjects, &payloads, &keys, &all_headers])
                .await;
            if let Err(e) = result {
                progress.finish_and_clear();
                return Err(format!(
                    "{} ({published} events published before this batch)",
                    db::describe(&e)
                )
                .into());
            }
            published += n as u64;
            progress.set_position(published);
            payloads.clear();
        }
        if end {
            break;
        }
    }
    progress.finish_and_clear();
    eprintln!("published {published} events to {}", args.stream);
    Ok(())
}
