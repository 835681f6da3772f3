//! `eventq apply FILE [--dry-run]`: the declarative setup (`eventq.apply`) from a YAML or
//! JSON file (`-`: stdin). Prints each change; a dry run changes nothing and fails where
//! the real run would.

use crate::db::{self, Error};
use serde_json::Value;
use tokio_postgres::Config;

#[derive(clap::Args)]
pub struct Args {
    /// A YAML or JSON document: streams, consumers and grants (see `eventq.apply`).
    file: String,
    /// Show what would change, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// JSON is YAML, but a JSON file's errors read better from the JSON parser.
fn parse(name: &str, text: &str) -> Result<Value, Error> {
    let looks_json = name.ends_with(".json") || text.trim_start().starts_with('{');
    if looks_json {
        return serde_json::from_str(text).map_err(|e| format!("{name}: {e}").into());
    }
    serde_yaml::from_str(text).map_err(|e| format!("{name}: {e}").into())
}

pub async fn run(config: Config, args: Args) -> Result<(), Error> {
    let text = if args.file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file))?
    };
    let spec = parse(&args.file, &text)?;
    let (client, _) = db::connect(&config).await?;
    let report: Value = client
        .query_one("SELECT eventq.apply($1::jsonb, $2)", &[&spec, &args.dry_run])
        .await?
        .get(0);
    let changes = report["changes"].as_array().cloned().unwrap_or_default();
    for change in &changes {
        println!("{}", describe(change));
    }
    let verb = if args.dry_run { "would change" } else { "changed" };
    eprintln!("{verb} {} thing{}", changes.len(), if changes.len() == 1 { "" } else { "s" });
    Ok(())
}

/// `create_consumer consumer=billing stream=orders`: the action, then what it is about.
fn describe(change: &Value) -> String {
    let Some(fields) = change.as_object() else { return change.to_string() };
    let mut line = fields.get("action").and_then(Value::as_str).unwrap_or("change").to_string();
    // what the change is about first, then its settings
    const FIRST: [&str; 4] = ["consumer", "stream", "privilege", "role"];
    let mut keys: Vec<&String> = fields.keys().filter(|k| *k != "action").collect();
    keys.sort_by_key(|k| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
    for (k, v) in keys.into_iter().map(|k| (k, &fields[k])) {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        line.push_str(&format!(" {k}={v}"));
    }
    line
}
