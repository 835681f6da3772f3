//! Consumer settings: the enumerations users spell as text, and the rules that tie the
//! numeric settings together.

use super::Invalid;

macro_rules! text_enum {
    ($name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn parse(text: &str) -> Result<Self, Invalid> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(Invalid(format!(
                        concat!("invalid ", $what, " \"{}\": expected one of {}"),
                        super::shown(other),
                        [$(concat!("'", $text, "'")),+].join(", ")
                    ))),
                }
            }

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

text_enum!(Mode, "mode", { Task => "task", Log => "log" });
text_enum!(KeyOrdering, "ordering", { None => "none", Key => "key" });
text_enum!(BackoffKind, "backoff", { Fixed => "fixed", Exponential => "exponential" });
text_enum!(Privilege, "privilege", { Publish => "publish", Consume => "consume", Manage => "manage" });

/// The defaults of `create_stream` and `create_consumer` (intervals in microseconds), as
/// their SQL signatures spell them.
pub const DEFAULT_RETENTION: i64 = 7 * 86_400 * 1_000_000;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
pub const DEFAULT_BACKOFF_BASE: i64 = 1_000_000;
pub const DEFAULT_BACKOFF_MAX: i64 = 3_600 * 1_000_000;
pub const DEFAULT_LEASE: i64 = 30 * 1_000_000;

/// The retry policy of a task consumer, with intervals in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub backoff: BackoffKind,
    pub backoff_base: i64,
    pub backoff_max: i64,
    pub lease: i64,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_attempts < 1 {
            return Err(Invalid(format!(
                "max_attempts must be at least 1, got {}",
                self.max_attempts
            )));
        }
        positive("backoff_base", self.backoff_base)?;
        positive("backoff_max", self.backoff_max)?;
        positive("lease", self.lease)?;
        if self.backoff_max < self.backoff_base {
            return Err(Invalid::new("backoff_max must not be shorter than backoff_base"));
        }
        Ok(())
    }
}

/// What one event's publisher asked of the retry policy of its tasks (Medusa's emit
/// options), for every consumer; NULL settings leave the consumer's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventRetry {
    pub max_attempts: Option<i32>,
    pub backoff: Option<BackoffKind>,
    pub backoff_base: Option<i64>,
}

impl EventRetry {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(n) = self.max_attempts {
            if n < 1 {
                return Err(Invalid(format!("max_attempts must be at least 1, got {n}")));
            }
        }
        if let Some(base) = self.backoff_base {
            positive("backoff_base", base)?;
        }
        Ok(())
    }

    /// The consumer's policy with this event's settings over it. A base above the
    /// consumer's cap raises the cap to it: the publisher asked for at least that wait.
    pub fn applied_to(&self, consumer: &RetryPolicy) -> RetryPolicy {
        let backoff_base = self.backoff_base.unwrap_or(consumer.backoff_base);
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(consumer.max_attempts),
            backoff: self.backoff.unwrap_or(consumer.backoff),
            backoff_base,
            backoff_max: consumer.backoff_max.max(backoff_base),
            lease: consumer.lease,
        }
    }
}

/// The most subjects a `sequence` may list: a key's finished subjects are kept as the bits
/// of a bigint.
pub const MAX_SEQUENCE: usize = 63;

/// A consumer's `sequence` (declared action order): distinct subjects, in order. An empty
/// list clears it (`None`). Only with key ordering: the order holds per key.
pub fn sequence(
    list: Vec<Option<String>>,
    ordering: KeyOrdering,
) -> Result<Option<Vec<String>>, Invalid> {
    if list.is_empty() {
        return Ok(None);
    }
    if ordering != KeyOrdering::Key {
        return Err(Invalid::new("sequence needs ordering => 'key': the order holds for each key"));
    }
    if list.len() > MAX_SEQUENCE {
        return Err(Invalid(format!("sequence may list at most {MAX_SEQUENCE} subjects")));
    }
    let mut subjects: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        let subject = item.ok_or_else(|| Invalid::new("sequence must not contain NULL"))?;
        super::subject::validate_subject(&subject)?;
        if subjects.contains(&subject) {
            return Err(Invalid(format!("sequence lists \"{}\" twice", super::shown(&subject))));
        }
        subjects.push(subject);
    }
    Ok(Some(subjects))
}

/// The longest interval any setting or argument takes: 100 years (36,525 days; an interval
/// counts a month as 30 days). Longer ones would push timestamps eventq computes (a
/// retention's cutoff, a retry's due time) towards the end of Postgres' range, where
/// computing them fails and stops maintenance or the call that computes them.
pub const MAX_INTERVAL_MICROS: i64 = 36_525 * 24 * 3600 * 1_000_000;

fn at_most_max(what: &str, micros: i64) -> Result<(), Invalid> {
    if micros <= MAX_INTERVAL_MICROS {
        Ok(())
    } else {
        Err(Invalid(format!("{what} must be at most 100 years")))
    }
}

pub fn positive(what: &str, micros: i64) -> Result<(), Invalid> {
    if micros > 0 {
        at_most_max(what, micros)
    } else {
        Err(Invalid(format!("{what} must be a positive interval")))
    }
}

pub fn not_negative(what: &str, micros: i64) -> Result<(), Invalid> {
    if micros >= 0 {
        at_most_max(what, micros)
    } else {
        Err(Invalid(format!("{what} must not be a negative interval")))
    }
}

/// Row-count limits such as `pull(max)` and `fetch(max)`.
pub fn batch_size(what: &str, n: i32, most: i32) -> Result<i64, Invalid> {
    if (1..=most).contains(&n) {
        Ok(n as i64)
    } else {
        Err(Invalid(format!("{what} must be between 1 and {most}, got {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROS_PER_SECOND: i64 = 1_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff: BackoffKind::Exponential,
            backoff_base: MICROS_PER_SECOND,
            backoff_max: 3600 * MICROS_PER_SECOND,
            lease: 30 * MICROS_PER_SECOND,
        }
    }

    #[test]
    fn enums_round_trip_and_reject_unknown_text() {
        assert_eq!(Mode::parse("log").unwrap(), Mode::Log);
        assert_eq!(KeyOrdering::parse("key").unwrap().as_str(), "key");
        assert_eq!(BackoffKind::parse("fixed").unwrap(), BackoffKind::Fixed);
        let err = Mode::parse("Task").unwrap_err();
        assert_eq!(err.0, "invalid mode \"Task\": expected one of 'task', 'log'");
        assert!(KeyOrdering::parse("fifo").is_err());
        assert!(BackoffKind::parse("").is_err());
    }

    #[test]
    fn the_default_policy_is_valid() {
        policy().validate().unwrap();
    }

    #[test]
    fn policies_that_cannot_work_are_rejected() {
        let bad = [
            RetryPolicy { max_attempts: 0, ..policy() },
            RetryPolicy { backoff_base: 0, ..policy() },
            RetryPolicy { backoff_max: -1, ..policy() },
            RetryPolicy { lease: 0, ..policy() },
            RetryPolicy { backoff_base: 10, backoff_max: 5, ..policy() },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn an_events_retry_settings_override_the_consumers() {
        assert_eq!(EventRetry::default().applied_to(&policy()), policy());
        let fixed_hour = EventRetry {
            max_attempts: Some(2),
            backoff: Some(BackoffKind::Fixed),
            backoff_base: Some(7200 * MICROS_PER_SECOND),
        };
        let applied = fixed_hour.applied_to(&policy());
        assert_eq!(applied.max_attempts, 2);
        assert_eq!(applied.backoff, BackoffKind::Fixed);
        assert_eq!(applied.backoff_base, 7200 * MICROS_PER_SECOND);
        // the cap rises to the base asked for; the lease stays the consumer's
        assert_eq!(applied.backoff_max, 7200 * MICROS_PER_SECOND);
        assert_eq!(applied.lease, policy().lease);
        applied.validate().unwrap();
        let only_attempts =
            EventRetry { max_attempts: Some(3), ..EventRetry::default() }.applied_to(&policy());
        assert_eq!(only_attempts, RetryPolicy { max_attempts: 3, ..policy() });
        assert!(EventRetry { max_attempts: Some(0), ..EventRetry::default() }.validate().is_err());
        assert!(EventRetry { backoff_base: Some(0), ..EventRetry::default() }.validate().is_err());
        assert!(EventRetry {
            backoff_base: Some(MAX_INTERVAL_MICROS + 1),
            ..EventRetry::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn a_sequence_lists_distinct_subjects_and_needs_key_ordering() {
        let list = |items: &[&str]| items.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(
            sequence(list(&["user.created", "user.paid"]), KeyOrdering::Key).unwrap(),
            Some(vec!["user.created".to_string(), "user.paid".to_string()])
        );
        assert_eq!(sequence(vec![], KeyOrdering::None).unwrap(), None);
        for (items, ordering, message) in [
            (list(&["a"]), KeyOrdering::None, "needs ordering => 'key'"),
            (list(&["a", "b", "a"]), KeyOrdering::Key, "lists \"a\" twice"),
            (list(&["a.*"]), KeyOrdering::Key, "invalid subject"),
            (vec![None], KeyOrdering::Key, "must not contain NULL"),
            ((0..64).map(|i| Some(format!("s{i}"))).collect(), KeyOrdering::Key, "at most 63"),
        ] {
            let err = sequence(items, ordering).unwrap_err();
            assert!(err.0.contains(message), "{}", err.0);
        }
    }

    #[test]
    fn limits_and_intervals() {
        assert_eq!(batch_size("max", 1, 10).unwrap(), 1);
        assert!(batch_size("max", 0, 10).is_err());
        assert!(batch_size("max", 11, 10).is_err());
        assert!(positive("lease", 0).is_err());
        assert!(not_negative("delay", 0).is_ok());
        assert!(not_negative("delay", -1).is_err());
        assert!(positive("retention", MAX_INTERVAL_MICROS).is_ok());
        assert!(positive("retention", MAX_INTERVAL_MICROS + 1).is_err());
        assert!(not_negative("delay", i64::MAX).is_err());
        assert!(RetryPolicy { lease: i64::MAX, ..policy() }.validate().is_err());
    }
}
