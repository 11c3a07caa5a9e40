//! The per-shard counters' three operations. Each counter has one writer (its shard) and any
//! number of readers (the admin listener), so `Relaxed` is enough: a reader sees some recent
//! value, and a total is a sum of monotone parts. A leaf, so every stats module can use it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Add `n` to a counter (single writer, so Relaxed).
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Subtract `n` from a gauge.
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

/// Read a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}
