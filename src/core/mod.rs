//! Pure logic with no Postgres in it: name and subject grammar, subject routing, the
//! subject scopes of grants, retry timing, consumer settings, the declarative spec and ids. Everything here is
//! unit-tested with plain `cargo test`.

pub mod backoff;
pub mod names;
pub mod scope;
pub mod settings;
pub mod spec;
pub mod staging;
pub mod subject;
pub mod ulid;

use std::borrow::Cow;
use std::fmt;

/// Characters of a caller's value that an error message quotes.
pub const SHOWN_CHARS: usize = 64;

/// A caller's value as an error message quotes it: whole, or its first characters when it
/// is long (a megabyte-long name must not make a megabyte-long error).
pub fn shown(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}...", &text[..end])),
    }
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn long_values_are_shown_shortened() {
        assert_eq!(super::shown("orders"), "orders");
        let long = "é".repeat(1000);
        let shown = super::shown(&long);
        assert_eq!(shown.chars().count(), super::SHOWN_CHARS + 3);
        assert!(shown.ends_with("..."));
    }
}
