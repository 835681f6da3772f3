//! Names of streams and consumers: `^[a-z][a-z0-9_]{0,47}$`.
//!
//! The grammar is deliberately narrow: names end up in NOTIFY channel names
//! (`eventq_<consumer>`, at most 63 bytes) and in log lines, so they must never need quoting.

use super::Invalid;

pub const MAX_NAME_LEN: usize = 48;

/// What is being named, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Consumer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Consumer => "consumer",
        }
    }
}

pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        None => false,
        Some((first, rest)) => {
            bytes.len() <= MAX_NAME_LEN
                && first.is_ascii_lowercase()
                && rest.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        }
    }
}

pub fn validate_name(kind: Kind, name: &str) -> Result<(), Invalid> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid {} name \"{}\": names are 1 to {} characters of a-z, 0-9 and _, starting with a letter",
            kind.as_str(),
            super::shown(name),
            MAX_NAME_LEN
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["a", "orders", "order_events_v2", "a1", &"a".repeat(48)] {
            assert!(is_valid_name(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "1orders",
            "_orders",
            "Orders",
            "order-events",
            "order.events",
            "orders ",
            "ordérs",
            &"a".repeat(49),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn error_names_the_kind_and_value() {
        let err = validate_name(Kind::Consumer, "Bad").unwrap_err();
        assert!(err.0.contains("consumer name \"Bad\""), "{}", err.0);
    }
}
