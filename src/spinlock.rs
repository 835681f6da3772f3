//! A spinlock on a flag in shared memory, for the few loads and stores of one entry of a
//! shared table (`pull_start`, `unread_counts`). Nothing that can fail, wait or be
//! interrupted runs while one is held.

use std::sync::atomic::{AtomicBool, Ordering};

pub fn lock(flag: &AtomicBool) {
    let mut spins = 0u32;
    while flag.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        spins += 1;
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

pub fn unlock(flag: &AtomicBool) {
    flag.store(false, Ordering::Release);
}
