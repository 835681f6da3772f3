//! Pure logic with no Postgres in it: name and subject grammar, subject routing, retry
//! timing, consumer settings and ids. Everything here is unit-tested with plain `cargo test`.

pub mod backoff;
pub mod names;
pub mod settings;
pub mod staging;
pub mod subject;
pub mod ulid;

use std::fmt;

/// A value a caller passed that eventq refuses. The SQL layer reports it as SQLSTATE 22023
/// (invalid_parameter_value) with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
