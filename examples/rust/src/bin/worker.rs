//! An eventq worker: LISTEN, pull, ack / ignore / retry with the lease guard, graceful stop.
//!
//!     DATABASE_URL=postgresql://app@localhost/shop cargo run --bin worker -- CONSUMER

use futures_util::{stream, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

const BATCH: i32 = 10;

enum Outcome {
    Done,
    NothingToDo(String),
    Failed(String),
}

/// The application's work.
async fn handle(subject: &str, payload: &Value) -> Outcome {
    if payload["fail"] == Value::Bool(true) {
        return Outcome::Failed(format!("cannot handle {subject} #{}", payload["n"]));
    }
    if payload["skip"] == Value::Bool(true) {
        return Outcome::NothingToDo("skipped by the demo".into());
    }
    Outcome::Done
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let consumer = std::env::args().nth(1).ok_or("usage: worker CONSUMER")?;
    let url = std::env::var("DATABASE_URL")?;
    let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await?;

    // The connection delivers notifications as messages beside query results.
    let (notify, mut notified) = mpsc::unbounded_channel();
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                let _ = notify.send(());
            }
        }
    });

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let channel = format!("\"eventq_{}\"", consumer.replace('"', "\"\""));
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    println!("worker for {consumer} started");

    let pull = client.prepare("SELECT task_id, subject, payload, attempt FROM eventq.pull($1, $2)").await?;
    loop {
        let tasks = client.query(&pull, &[&consumer, &BATCH]).await?;
        if tasks.is_empty() {
            // woken by a notification, or after a second (without the background worker)
            tokio::select! {
                _ = notified.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
            continue;
        }
        let (mut done, mut attempts) = (Vec::new(), Vec::new());
        for task in &tasks {
            let (task_id, subject, payload, attempt): (i64, String, Value, i32) =
                (task.get(0), task.get(1), task.get(2), task.get(3));
            match handle(&subject, &payload).await {
                Outcome::Done => {
                    done.push(task_id);
                    attempts.push(attempt);
                }
                Outcome::NothingToDo(reason) => {
                    client
                        .execute("SELECT eventq.ignore($1, $2, $3, attempt => $4)", &[&consumer, &task_id, &reason, &attempt])
                        .await?;
                }
                Outcome::Failed(error) => {
                    client
                        .execute("SELECT eventq.retry($1, $2, $3, attempt => $4)", &[&consumer, &task_id, &error, &attempt])
                        .await?;
                }
            }
        }
        if !done.is_empty() {
            client.execute("SELECT eventq.ack($1, $2, $3)", &[&consumer, &done, &attempts]).await?;
        }
        // a signal that came while the batch was handled stops the loop before the next pull
        if futures_util::FutureExt::now_or_never(terminate.recv()).is_some()
            || futures_util::FutureExt::now_or_never(interrupt.recv()).is_some()
        {
            break;
        }
    }
    println!("worker for {consumer} stopped");
    Ok(())
}
