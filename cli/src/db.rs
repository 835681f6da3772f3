//! Connecting to the database: the connection string from `--database-url` or
//! `DATABASE_URL`, or else libpq's environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
//! `PGPASSWORD`, `PGAPPNAME`) with libpq's defaults. Everything eventq does runs under the
//! role that connects: the command holds no privilege of its own.

use futures_util::{stream, StreamExt};
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The connection settings: a URL or `key=value` string if given, else libpq's variables.
pub fn config(url: Option<&str>) -> Result<Config, Error> {
    let mut config = match url.filter(|u| !u.is_empty()) {
        Some(url) => Config::from_str(url)?,
        None => {
            let mut c = Config::new();
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        if h.starts_with('/') {
                            c.host_path(h);
                        } else {
                            c.host(h);
                        }
                    }
                }
                None => {
                    // libpq's default: the Unix socket directory Debian's Postgres uses
                    if std::path::Path::new("/var/run/postgresql").exists() {
                        c.host_path("/var/run/postgresql");
                    } else {
                        c.host("localhost");
                    }
                }
            }
            if let Some(port) = env("PGPORT") {
                c.port(port.parse().map_err(|_| format!("PGPORT is not a port: {port}"))?);
            }
            let user = env("PGUSER").or_else(|| env("USER")).unwrap_or_else(|| "postgres".into());
            c.dbname(env("PGDATABASE").as_deref().unwrap_or(&user));
            c.user(&user);
            if let Some(password) = env("PGPASSWORD") {
                c.password(password);
            }
            c
        }
    };
    if config.get_application_name().is_none() {
        config.application_name(std::env::var("PGAPPNAME").ok().as_deref().unwrap_or("eventq"));
    }
    Ok(config)
}

/// A connection whose notifications (LISTEN) arrive on the returned channel.
pub async fn connect(config: &Config) -> Result<(Client, mpsc::UnboundedReceiver<String>), Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.channel().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// A quoted identifier (for LISTEN, which takes no parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The channel the background worker notifies when a consumer receives tasks.
pub fn channel_of(consumer: &str) -> String {
    quote_ident(&format!("eventq_{consumer}"))
}

/// What a database error says, with its SQLSTATE; other errors as they print.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                s.push_str(&format!("\nhint: {hint}"));
            }
            s
        }
        None => error.to_string(),
    }
}

/// A few connections shared by the console's requests: taken for one request and given
/// back, reconnecting after one broke. At most `size` exist at once; a request beyond that
/// waits for one, so a burst of requests cannot use up the server's connections.
pub struct Pool {
    config: Config,
    read_only: bool,
    idle: std::sync::Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

pub struct Pooled {
    client: Option<Client>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a pooled client")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Every statement the console runs is its own transaction, and none LISTENs: a
        // connection that still works is as good as new.
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}

impl Pool {
    pub fn new(config: Config, read_only: bool, size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            read_only,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    pub async fn get(self: &Arc<Pool>) -> Result<Pooled, Error> {
        let permit = self.permits.clone().acquire_owned().await?;
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let client = match reused {
            Some(c) if !c.is_closed() => c,
            _ => {
                let (client, _) = connect(&self.config).await?;
                if self.read_only {
                    // belt and braces: the console offers no action, and the database
                    // refuses any write a bug might still attempt
                    client.batch_execute("SET default_transaction_read_only = on").await?;
                }
                client
            }
        };
        Ok(Pooled { client: Some(client), pool: self.clone(), _permit: permit })
    }
}
