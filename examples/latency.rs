//! How long after a publish its task is available, with the background worker draining:
//! publishes one event at a time at a light rate and times each until the worker's NOTIFY
//! for the consumer arrives (the drain has committed: the task can be pulled).
//!
//! Usage: latency "<connection string>" [events] [pause_ms]
//! Used by `bench/run`; needs eventq preloaded and its worker enabled.

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let conninfo = args.next().expect("usage: latency <connection string> [events] [pause_ms]");
    let events: usize = args.next().map(|a| a.parse().expect("events")).unwrap_or(500);
    let pause =
        Duration::from_millis(args.next().map(|a| a.parse().expect("pause_ms")).unwrap_or(10));

    let mut publisher = Client::connect(&conninfo, NoTls).expect("connect");
    let mut listener = Client::connect(&conninfo, NoTls).expect("connect");
    publisher
        .batch_execute(
            "SELECT eventq.create_stream('latency', '1 hour', if_not_exists => true);
             SELECT eventq.drop_consumer(name) FROM eventq.consumers WHERE name = 'latency_c';
             SELECT eventq.create_consumer('latency_c', 'latency');",
        )
        .expect("setup");
    listener.batch_execute("LISTEN eventq_latency_c").expect("listen");

    let mut samples = Vec::with_capacity(events);
    for _ in 0..events {
        let start = Instant::now();
        publisher.execute("SELECT eventq.publish('latency', 'ping')", &[]).expect("publish");
        let mut notifications = listener.notifications();
        let mut wait = notifications.timeout_iter(Duration::from_secs(5));
        match wait.next() {
            Ok(Some(_)) => samples.push(start.elapsed()),
            _ => panic!("no notification within 5s: is the eventq worker running?"),
        }
        std::thread::sleep(pause);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} {:.2} {:.2} {:.2} {:.2}",
        samples.len(),
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(*samples.last().expect("samples"))
    );
}
