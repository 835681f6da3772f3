//! Staging slots: published events wait in one of four partitions, chosen by the second
//! their transaction started. A slot is current for one second, next-to-come for one, and
//! idle (truncatable once drained) for the other two.

pub const SLOTS: i64 = 4;

/// The slot for a transaction that started at `unix_seconds`.
pub fn slot_at(unix_seconds: i64) -> i64 {
    unix_seconds.rem_euclid(SLOTS)
}

/// Whether a slot may be truncated at `unix_seconds`: neither the current slot nor the next.
pub fn is_idle(slot: i64, unix_seconds: i64) -> bool {
    slot != slot_at(unix_seconds) && slot != slot_at(unix_seconds + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_turn_over_every_second() {
        assert_eq!((0..8).map(slot_at).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(slot_at(-1), 3);
    }

    #[test]
    fn two_slots_are_idle_at_any_time() {
        for now in 0..8 {
            let idle: Vec<i64> = (0..SLOTS).filter(|&s| is_idle(s, now)).collect();
            assert_eq!(idle.len(), 2);
            assert!(!idle.contains(&slot_at(now)) && !idle.contains(&slot_at(now + 1)));
        }
    }
}
