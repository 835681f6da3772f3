//! Event ids: ULIDs (48-bit millisecond time, 80 random bits) stored as `uuid`.
//!
//! The 16 bytes are the ULID in big-endian order, so Postgres' `uuid` ordering (memcmp) is
//! ULID ordering. Ids from one backend strictly increase, also within a millisecond: the
//! drain numbers the events of a transaction in id order, which keeps them in the order
//! they were published.

use std::time::Duration;

pub struct IdSource {
    generator: ulid::Generator,
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource { generator: ulid::Generator::new() }
    }
}

impl IdSource {
    pub fn next_id(&mut self) -> [u8; 16] {
        loop {
            match self.generator.generate() {
                Ok(id) => return id.to_bytes(),
                // 2^80 ids in one millisecond: wait for the clock to move on.
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn timestamp_ms(id: &[u8; 16]) -> u64 {
        ulid::Ulid::from_bytes(*id).timestamp_ms()
    }

    fn datetime(id: &[u8; 16]) -> SystemTime {
        ulid::Ulid::from_bytes(*id).datetime()
    }

    #[test]
    fn ids_strictly_increase_even_within_a_millisecond() {
        let mut source = IdSource::default();
        let mut last = source.next_id();
        for _ in 0..100_000 {
            let id = source.next_id();
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn ids_carry_the_current_time() {
        let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let id = IdSource::default().next_id();
        let after = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let ms = timestamp_ms(&id) as u128;
        assert!(before.as_millis() <= ms && ms <= after.as_millis());
        assert!(datetime(&id) <= SystemTime::now());
    }

    #[test]
    fn separate_sources_do_not_collide() {
        let mut a = IdSource::default();
        let mut b = IdSource::default();
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..10_000).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 20_000);
    }
}
