//! `eventq work CONSUMER -- COMMAND…`: pulls the consumer's tasks and runs the command once
//! per task, with the payload on its stdin and the task in its environment. Exit 0 acks
//! the task; any other exit retries it (the consumer's backoff applies) with the end of the
//! command's stderr as the error. Every call carries the attempt (the lease guard), and a
//! command that runs longer than half the lease has its lease extended, so a slow command
//! is not taken for a lost one.
//!
//! SIGTERM or SIGINT: no more pulls; the tasks in hand are finished and reported, then
//! the command exits 0. A second signal passes SIGTERM on to the running command, whose
//! task is then retried ("interrupted").

use crate::db::{self, Error};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio_postgres::{Client, Config};

#[derive(clap::Args)]
pub struct Args {
    consumer: String,
    /// Tasks leased per pull (all are run, one after the other, before the next pull).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000))]
    batch: i32,
    /// The lease to take (default: the consumer's), as an interval: `30 seconds`, `5 min`.
    #[arg(long)]
    lease: Option<String>,
    /// Stop once nothing is left to pull (instead of waiting for more).
    #[arg(long)]
    drain: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How much of a failing command's stderr is kept as the task's error.
const ERROR_BYTES: usize = 2000;

struct Task {
    id: i64,
    event_id: String,
    seq: i64,
    subject: String,
    key: Option<String>,
    payload: Value,
    headers: Option<Value>,
    attempt: i32,
}

enum Verdict {
    Done,
    Failed(String),
}

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    let (client, mut notifications) = db::connect(&config).await?;
    client.batch_execute(&format!("LISTEN {}", db::channel_of(&args.consumer))).await?;
    let lease_seconds: f64 = client
        .query_opt(
            "SELECT extract(epoch FROM coalesce($2::text::interval, lease))::float8
             FROM eventq.consumers WHERE name = $1 AND mode = 'task'",
            &[&args.consumer, &args.lease],
        )
        .await?
        .ok_or_else(|| {
            format!("no task consumer named \"{}\" (that this role may see)", args.consumer)
        })?
        .get(0);
    let pull = client
        .prepare(
            "SELECT task_id, event_id::text, seq, subject, key, payload, headers, attempt
             FROM eventq.pull($1, $2, $3::text::interval)",
        )
        .await?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut stopping = false;
    eprintln!("eventq work: working {} with {:?}", args.consumer, args.command);
    while !stopping {
        let rows = client.query(&pull, &[&args.consumer, &args.batch, &args.lease]).await?;
        if rows.is_empty() {
            if args.drain {
                break;
            }
            tokio::select! {
                _ = notifications.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = terminate.recv() => stopping = true,
                _ = interrupt.recv() => stopping = true,
            }
            continue;
        }
        let tasks: Vec<Task> = rows
            .iter()
            .map(|row| Task {
                id: row.get(0),
                event_id: row.get(1),
                seq: row.get(2),
                subject: row.get(3),
                key: row.get(4),
                payload: row.get(5),
                headers: row.get(6),
                attempt: row.get(7),
            })
            .collect();
        // the leases were taken now: extend them, all that are in hand, every half lease
        let every = Duration::from_secs_f64((lease_seconds / 2.0).max(0.1));
        let mut leases = Leases {
            timer: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
            lease: format!("{lease_seconds} seconds"),
        };
        for (i, task) in tasks.iter().enumerate() {
            let signals = Signals {
                terminate: &mut terminate,
                interrupt: &mut interrupt,
                stopping: &mut stopping,
            };
            let verdict = run_one(&client, &args, task, &tasks[i..], &mut leases, signals).await?;
            report(&client, &args.consumer, task, verdict).await?;
        }
    }
    eprintln!("eventq work: stopped");
    Ok(())
}

struct Leases {
    timer: tokio::time::Interval,
    lease: String,
}

impl Leases {
    /// Extends the leases of the tasks in hand (those its worker lost are left alone).
    async fn extend(&self, client: &Client, consumer: &str, in_hand: &[Task]) -> Result<(), Error> {
        for task in in_hand {
            client
                .execute(
                    "SELECT eventq.extend_lease($1, $2, $3::text::interval, attempt => $4)",
                    &[&consumer, &task.id, &self.lease, &task.attempt],
                )
                .await?;
        }
        Ok(())
    }
}

struct Signals<'a> {
    terminate: &'a mut tokio::signal::unix::Signal,
    interrupt: &'a mut tokio::signal::unix::Signal,
    stopping: &'a mut bool,
}

/// How long the command's pipes may stay open after it exited (a process it started in the
/// background may hold them).
const PIPES_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Runs the command for one task (the first of `in_hand`), keeping the leases in hand.
async fn run_one(
    client: &Client,
    args: &Args,
    task: &Task,
    in_hand: &[Task],
    leases: &mut Leases,
    signals: Signals<'_>,
) -> Result<Verdict, Error> {
    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("EVENTQ_CONSUMER", &args.consumer)
        .env("EVENTQ_TASK_ID", task.id.to_string())
        .env("EVENTQ_EVENT_ID", &task.event_id)
        .env("EVENTQ_SEQ", task.seq.to_string())
        .env("EVENTQ_SUBJECT", &task.subject)
        .env("EVENTQ_KEY", task.key.as_deref().unwrap_or(""))
        .env("EVENTQ_ATTEMPT", task.attempt.to_string())
        .env("EVENTQ_HEADERS", task.headers.as_ref().map(Value::to_string).unwrap_or_default())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ok(Verdict::Failed(format!("cannot run {:?}: {e}", args.command[0]))),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = task.payload.to_string();
    // a command that does not read its stdin must not block on a full pipe
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(payload.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    // only the end of stderr is kept
    let reader = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * ERROR_BYTES {
                tail.drain(..tail.len() - ERROR_BYTES);
            }
        }
        tail
    });
    let mut interrupted = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = leases.timer.tick() => leases.extend(client, &args.consumer, in_hand).await?,
            _ = signals.terminate.recv() => interrupted |= signalled(&child, signals.stopping),
            _ = signals.interrupt.recv() => interrupted |= signalled(&child, signals.stopping),
        }
    };
    writer.abort();
    let stderr = match tokio::time::timeout(PIPES_AFTER_EXIT, reader).await {
        Ok(Ok(tail)) => tail,
        _ => Vec::new(),
    };
    if status.success() && !interrupted {
        return Ok(Verdict::Done);
    }
    let tail = &stderr[stderr.len().saturating_sub(ERROR_BYTES)..];
    // (text cannot hold NUL)
    let mut error = String::from_utf8_lossy(tail).replace('\0', "").trim().to_string();
    if interrupted {
        error = format!("interrupted: {error}");
    }
    if error.is_empty() {
        error = format!("{:?} exited with {status}", args.command[0]);
    }
    Ok(Verdict::Failed(error))
}

/// The first signal stops pulling; a second one passes SIGTERM on to the command.
fn signalled(child: &tokio::process::Child, stopping: &mut bool) -> bool {
    if !*stopping {
        *stopping = true;
        eprintln!(
            "eventq work: stopping after the tasks in hand (signal again to interrupt the command)"
        );
        return false;
    }
    // the command's whole process group (it has its own)
    if let Some(pid) = child.id() {
        let _ =
            std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
    }
    true
}

async fn report(
    client: &Client,
    consumer: &str,
    task: &Task,
    verdict: Verdict,
) -> Result<(), Error> {
    match verdict {
        Verdict::Done => {
            let acked: i32 = client
                .query_one(
                    "SELECT eventq.ack($1, ARRAY[$2::bigint], ARRAY[$3::int])",
                    &[&consumer, &task.id, &task.attempt],
                )
                .await?
                .get(0);
            if acked == 1 {
                eprintln!("task {} ({}) completed", task.id, task.subject);
            } else {
                eprintln!(
                    "task {} ({}) finished after its lease was lost: not acked",
                    task.id, task.subject
                );
            }
        }
        Verdict::Failed(error) => {
            let state: Option<String> = client
                .query_one(
                    "SELECT eventq.retry($1, $2, $3, attempt => $4)",
                    &[&consumer, &task.id, &error, &task.attempt],
                )
                .await?
                .get(0);
            match state {
                Some(state) => {
                    eprintln!("task {} ({}) failed, now {state}: {error}", task.id, task.subject)
                }
                None => eprintln!(
                    "task {} ({}) failed after its lease was lost: {error}",
                    task.id, task.subject
                ),
            }
        }
    }
    Ok(())
}
