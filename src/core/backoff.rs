//! How long a failed task waits before its next attempt.
//!
//! `fixed` waits `base` every time. `exponential` waits `base * 2^(attempt - 1)`, capped at
//! `max`, then spread by ±10% so that tasks which failed together do not all come back in
//! the same instant; the spread never takes a delay past `max`.

use super::settings::BackoffKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub kind: BackoffKind,
    pub base_micros: i64,
    pub max_micros: i64,
}

/// ±10%.
const JITTER: f64 = 0.10;

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based). `unit` is a uniform sample
    /// from [0, 1) that picks the jitter; callers pass a random number, tests pass fixed ones.
    pub fn delay_micros(&self, attempt: i32, unit: f64) -> i64 {
        match self.kind {
            BackoffKind::Fixed => self.base_micros,
            BackoffKind::Exponential => {
                let doublings = attempt.saturating_sub(1).clamp(0, 62) as u32;
                let raw = (self.base_micros as i128) << doublings;
                let capped = raw.min(self.max_micros as i128) as f64;
                let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
                ((capped * factor).round() as i64).clamp(0, self.max_micros)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn exp(base: i64, max: i64) -> Backoff {
        Backoff { kind: BackoffKind::Exponential, base_micros: base, max_micros: max }
    }

    #[test]
    fn fixed_waits_base_every_time() {
        let b = Backoff { kind: BackoffKind::Fixed, base_micros: 5 * S, max_micros: 60 * S };
        for attempt in 1..20 {
            assert_eq!(b.delay_micros(attempt, 0.99), 5 * S);
        }
    }

    #[test]
    fn exponential_doubles_from_base_without_jitter_at_the_midpoint() {
        let b = exp(S, 3600 * S);
        assert_eq!(b.delay_micros(1, 0.5), S);
        assert_eq!(b.delay_micros(2, 0.5), 2 * S);
        assert_eq!(b.delay_micros(3, 0.5), 4 * S);
        assert_eq!(b.delay_micros(10, 0.5), 512 * S);
    }

    #[test]
    fn exponential_is_capped_and_never_overflows() {
        let b = exp(S, 3600 * S);
        assert_eq!(b.delay_micros(13, 0.5), 3600 * S);
        assert_eq!(b.delay_micros(1000, 0.5), 3600 * S);
        assert_eq!(b.delay_micros(i32::MAX, 0.999), 3600 * S);
        assert_eq!(exp(i64::MAX / 2, i64::MAX).delay_micros(64, 0.5) > 0, true);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_below_the_cap() {
        let b = exp(10 * S, 3600 * S);
        for i in 0..=100 {
            let unit = i as f64 / 100.0;
            let d = b.delay_micros(2, unit);
            assert!((18 * S..=22 * S).contains(&d), "{d}");
            let capped = b.delay_micros(20, unit);
            assert!((3240 * S..=3600 * S).contains(&capped), "{capped}");
        }
        assert_eq!(b.delay_micros(2, 0.0), 18 * S);
        assert_eq!(b.delay_micros(2, 1.0), 22 * S);
    }

    #[test]
    fn attempt_zero_or_negative_counts_as_the_first() {
        let b = exp(S, 60 * S);
        assert_eq!(b.delay_micros(0, 0.5), S);
        assert_eq!(b.delay_micros(-3, 0.5), S);
    }
}
