//! The clocks, one home: a process-wide monotonic millisecond count (what shards stamp their
//! ticks with and the admin thread compares against), and a shard's millisecond clock — a
//! wrapping `u32` since the shard's epoch, the unit of every per-connection deadline.
//!
//! Nothing below the loop reads a clock: the loop reads `Instant::now()` once per turn and
//! hands it in, so every rule is testable on a virtual clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The shard tick's period (stats stamp, gauges, histograms, deadlines: `obs::tick`).
pub const TICK: Duration = Duration::from_millis(100);

/// Milliseconds on a process-wide monotonic clock (starts near 0 at first use).
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A shard's millisecond clock: wraps every 49.7 days; deadlines are compared as signed
/// differences (exact while they are less than 2^31 ms apart).
#[derive(Clone, Copy, Debug)]
pub struct ShardClock {
    epoch: Instant,
}

impl ShardClock {
    /// A clock whose 0 is `epoch`.
    pub fn new(epoch: Instant) -> Self {
        ShardClock { epoch }
    }

    /// `at` in ms since the epoch (instants before it read as 0).
    pub fn ms(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }
}

/// `now` is at or past `deadline` on a wrapping millisecond clock.
pub fn reached(now: u32, deadline: u32) -> bool {
    (now.wrapping_sub(deadline) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shard_clock_and_deadlines() {
        let t0 = Instant::now();
        let c = ShardClock::new(t0);
        assert_eq!(c.ms(t0), 0);
        assert_eq!(c.ms(t0 + Duration::from_millis(1500)), 1500);
        assert!(reached(10, 10) && reached(11, 10) && !reached(9, 10));
        assert!(reached(5, u32::MAX - 5), "across the wrap");
        assert!(!reached(u32::MAX - 5, 5));
        assert!(monotonic_ms() < u64::MAX);
    }
}
