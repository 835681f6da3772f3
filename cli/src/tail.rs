//! `eventq tail STREAM|CONSUMER`: a stream's events, or those a consumer's filter selects,
//! as JSON lines, from `eventq.events` (what the role may see). It moves no cursor and
//! leases nothing. `--follow` waits on the stream's consumers' notification channels (the
//! drain notifies each consumer that receives something), with a poll as a fallback for
//! streams nobody consumes.

use crate::db::{self, Error};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use tokio_postgres::Config;

#[derive(clap::Args)]
pub struct Args {
    /// A stream, or a consumer (its stream, through its subject filter).
    target: String,
    /// Only subjects matching one of these patterns (NATS style: `order.*`, `order.>`).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Keep printing new events as they are drained.
    #[arg(short, long)]
    follow: bool,
    /// How many of the newest events to print first.
    #[arg(short = 'n', long, default_value_t = 10)]
    last: i64,
    /// Start after this seq instead (0: from the oldest retained event).
    #[arg(long, conflicts_with = "last")]
    after: Option<i64>,
}

/// The events of stream $1 that the filter ($2 include, $3 exclude, $6 start_at) and the
/// asked subjects ($4, none: all) select.
const SELECTED: &str = "FROM eventq.events
    WHERE stream = $1 AND ($6::text IS NULL OR published_at >= $6::text::timestamptz)
      AND EXISTS (SELECT 1 FROM unnest($2::text[]) p WHERE eventq.subject_matches(p, subject))
      AND NOT EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE eventq.subject_matches(p, subject))
      AND (cardinality($4::text[]) = 0
           OR EXISTS (SELECT 1 FROM unnest($4::text[]) p WHERE eventq.subject_matches(p, subject)))";

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    let (client, mut notifications) = db::connect(&config).await?;
    let stream_row = client
        .query_opt("SELECT name FROM eventq.streams WHERE name = $1", &[&args.target])
        .await?;
    // (a consumer with start_at receives only what was published from then on)
    let (stream, include, exclude, since): (String, Vec<String>, Vec<String>, Option<String>) =
        match stream_row {
            Some(_) => (args.target.clone(), vec![">".into()], Vec::new(), None),
            None => {
                let consumer = client
                .query_opt(
                    "SELECT stream, subjects, exclude, start_at::text FROM eventq.consumers WHERE name = $1",
                    &[&args.target],
                )
                .await?
                .ok_or_else(|| format!("no stream or consumer named \"{}\" (that this role may see)", args.target))?;
                (consumer.get(0), consumer.get(1), consumer.get(2), consumer.get(3))
            }
        };
    let read = client
        .prepare(&format!(
            "SELECT seq, event_id::text, subject, key, payload, headers, published_at::text {SELECTED}
               AND seq > $5 ORDER BY seq LIMIT 1000"
        ))
        .await?;
    let mut after: i64 = match args.after {
        Some(after) => after,
        // below the newest `last` selected events; with none, the stream's head
        None => client
            .query_one(
                &format!(
                    "SELECT coalesce((SELECT min(seq) - 1 FROM (SELECT seq {SELECTED} ORDER BY seq DESC LIMIT $5) newest
                                      HAVING count(*) > 0),
                                     (SELECT max(seq) FROM eventq.events WHERE stream = $1), 0)"
                ),
                &[&stream, &include, &exclude, &args.subjects, &args.last.max(0), &since],
            )
            .await?
            .get(0),
    };
    if args.follow {
        let workers: i64 =
            client.query_one("SELECT count(*) FROM eventq.workers", &[]).await?.get(0);
        if workers == 0 {
            eprintln!(
                "eventq tail: no background worker reports to this role: new events show up once \
                 something drains them (a pull, a fetch, run_maintenance())"
            );
        }
        let consumers =
            client.query("SELECT name FROM eventq.consumers WHERE stream = $1", &[&stream]).await?;
        for c in consumers {
            client.batch_execute(&format!("LISTEN {}", db::channel_of(c.get(0)))).await?;
        }
    }
    let mut out = std::io::stdout().lock();
    loop {
        loop {
            let rows = client
                .query(&read, &[&stream, &include, &exclude, &args.subjects, &after, &since])
                .await?;
            for row in &rows {
                let seq: i64 = row.get(0);
                let line = json!({
                    "stream": stream,
                    "seq": seq,
                    "event_id": row.get::<_, String>(1),
                    "subject": row.get::<_, String>(2),
                    "key": row.get::<_, Option<String>>(3),
                    "payload": row.get::<_, Value>(4),
                    "headers": row.get::<_, Option<Value>>(5),
                    "published_at": row.get::<_, String>(6),
                });
                // a reader that went away (`| head`) ends the command quietly
                if writeln!(out, "{line}").is_err() {
                    return Ok(());
                }
                after = seq;
            }
            if out.flush().is_err() {
                return Ok(());
            }
            if rows.len() < 1000 {
                break;
            }
        }
        if !args.follow {
            return Ok(());
        }
        tokio::select! {
            _ = notifications.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
