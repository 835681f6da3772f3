//! Publishes COUNT demo events, each in the transaction that records the application's row.
//!
//!     DATABASE_URL=postgresql://app@localhost/shop cargo run --bin publish -- STREAM COUNT

use serde_json::json;
use tokio_postgres::NoTls;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (stream, count) = match (args.next(), args.next()) {
        (Some(s), Some(c)) => (s, c.parse::<i32>()?),
        _ => return Err("usage: publish STREAM COUNT".into()),
    };
    let (mut client, connection) = tokio_postgres::connect(&std::env::var("DATABASE_URL")?, NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE IF NOT EXISTS demo_orders (n int PRIMARY KEY)").await?;
    for n in 1..=count {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO demo_orders VALUES ($1) ON CONFLICT DO NOTHING", &[&n]).await?;
        let payload = json!({"n": n, "fail": n % 10 == 0, "skip": n % 7 == 0});
        let key = format!("order-{n}");
        tx.execute("SELECT eventq.publish($1, 'demo.created', $2, key => $3)", &[&stream, &payload, &key])
            .await?;
        tx.commit().await?;
    }
    println!("published {count} events to {stream}");
    Ok(())
}
