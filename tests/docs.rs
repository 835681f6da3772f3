//! Every SQL block of the recipes under `docs/` runs, in order, in a database of its own:
//! the docs cannot rot. Each statement runs on its own (as `psql` would run the block), so
//! BEGIN ... COMMIT in a block is a transaction, and every statement outside one is.

mod common;

use common::{script, Cluster};
use std::path::Path;

fn sql_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an SQL block is not closed");
    blocks
}

#[test]
fn every_sql_block_of_every_recipe_runs() {
    let cluster = Cluster::start("docs", &[]);
    let mut admin = cluster.connect();
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut recipes: Vec<_> = std::fs::read_dir("docs")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 4, "recipes: {recipes:?}");
    for path in recipes {
        let name = path.file_stem().unwrap().to_string_lossy().replace('-', "_");
        let link = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        assert!(readme.contains(&link), "the README does not link {link}");
        let text = std::fs::read_to_string(&path).unwrap();
        let blocks = sql_blocks(&text);
        assert!(blocks.len() >= 3, "{}: only {} SQL blocks", path.display(), blocks.len());
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let mut db = cluster.connect_to(&name);
        db.batch_execute("CREATE EXTENSION eventq").unwrap();
        for (i, block) in blocks.iter().enumerate() {
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&mut db, block)));
            if let Err(e) = run {
                let message = e.downcast_ref::<String>().cloned().unwrap_or_default();
                panic!("{}, SQL block {}: {message}", show(&path), i + 1);
            }
        }
        drop(db);
        // roles are cluster-wide: the next recipe may create the same ones
        admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
        admin
            .batch_execute(
                "DO $$ DECLARE r text; BEGIN
                   FOR r IN SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' AND rolname NOT IN ('postgres', 'eventq_admin')
                   LOOP EXECUTE format('DROP ROLE %I', r); END LOOP; END $$",
            )
            .unwrap();
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}
