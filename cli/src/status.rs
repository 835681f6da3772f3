//! `eventq status`: the console's overview as text tables.

use crate::db::{self, Error};
use crate::overview::{self, Table};
use tokio_postgres::Config;

pub async fn run(config: Config) -> Result<(), Error> {
    let (client, _) = db::connect(&config).await?;
    print(&overview::streams(&client).await?);
    print(&overview::consumers(&client).await?);
    print(&overview::workers(&client).await?);
    print(&overview::health(&client).await?);
    Ok(())
}

/// Columns padded to their widest cell; numbers right-aligned.
pub fn render(table: &Table) -> String {
    let columns = table.headers.len();
    let mut widths: Vec<usize> = table.headers.iter().map(|h| h.chars().count()).collect();
    for row in &table.rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let numeric = !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit() || ch == '-');
                if numeric {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(table.headers.clone());
    out.push('\n');
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    if table.rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in &table.rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn print(table: &Table) {
    println!("{}", render(table));
}
