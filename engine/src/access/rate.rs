//! Inbound rate limit of one connection: a token bucket over every frame it sends (data,
//! ping, pong, close, each fragment).
//!
//! Contract: sans-IO, time is an input (nanoseconds on any monotonic clock that starts near
//! 0, e.g. [`now_ns`]). The state is one `u64` (8 bytes per connection): the generic cell
//! rate algorithm (GCRA), which is a token bucket stored as its "theoretical arrival time".
//! A [`Limit`] of `rate` frames per second with a `burst` admits `burst` frames at once, then
//! one every `1/rate` s; [`Bucket::allow`] answers for one frame and charges it when allowed.
//! A denied frame is not charged. The caller closes the connection (1008) on the first denial.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds on a process-wide monotonic clock (starts near 0 at first use).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A rate: `rate` frames per second sustained, `burst` at once. `rate == 0` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds per frame (0 = unlimited).
    interval_ns: u64,
    /// How far ahead of now the bucket may run: `(burst - 1) × interval`.
    tolerance_ns: u64,
}

impl Limit {
    /// No limit.
    pub const OFF: Limit = Limit {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `rate` frames per second with bursts of `burst` (at least 1); `rate == 0` is [`Limit::OFF`].
    pub fn new(rate: u32, burst: u32) -> Limit {
        if rate == 0 {
            return Limit::OFF;
        }
        let interval_ns = 1_000_000_000 / u64::from(rate);
        Limit {
            interval_ns: interval_ns.max(1),
            tolerance_ns: interval_ns.max(1) * u64::from(burst.max(1) - 1),
        }
    }

    /// True unless this is [`Limit::OFF`].
    pub fn is_on(&self) -> bool {
        self.interval_ns > 0
    }
}

/// One connection's bucket (8 bytes). `Default` is a full bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time of the next frame (ns): the bucket is full when it is ≤ now.
    tat: u64,
}

impl Bucket {
    /// True when the bucket is as if no frame had arrived, at `now` under `limit` (it may
    /// then be forgotten: a default bucket behaves the same).
    pub fn is_full(&self, limit: &Limit, now: u64) -> bool {
        !limit.is_on() || self.tat <= now
    }

    /// May one more frame arrive at `now` under `limit`? Charges it if so.
    pub fn allow(&mut self, limit: &Limit, now: u64) -> bool {
        if !limit.is_on() {
            return true;
        }
        let tat = self.tat.max(now);
        if tat - now > limit.tolerance_ns {
            return false;
        }
        self.tat = tat + limit.interval_ns;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Frames allowed when `n` arrive at each of `times` (ns).
    fn run(limit: Limit, times: &[u64], n: u32) -> u32 {
        let mut b = Bucket::default();
        let mut ok = 0;
        for &t in times {
            for _ in 0..n {
                ok += u32::from(b.allow(&limit, t));
            }
        }
        ok
    }

    #[test]
    fn burst_at_once_then_the_rate() {
        let l = Limit::new(5, 10);
        let mut b = Bucket::default();
        let t0 = 7 * S;
        assert_eq!((0..20).filter(|_| b.allow(&l, t0)).count(), 10, "the burst");
        assert!(!b.allow(&l, t0 + S / 5 - 1), "not yet refilled");
        assert!(b.allow(&l, t0 + S / 5), "one every 200 ms");
        assert!(!b.allow(&l, t0 + S / 5));
        // Over 10 s of one frame every 200 ms the sustained rate holds exactly.
        let times: Vec<u64> = (0..50).map(|i| 100 * S + i * S / 5).collect();
        assert_eq!(run(l, &times, 1), 50);
        // Six per second is over: the burst absorbs the excess for a while, then frames fail.
        let times: Vec<u64> = (0..60).map(|i| 100 * S + i * S / 6).collect();
        let ok = run(l, &times, 1);
        assert!((55..60).contains(&ok), "{ok}");
    }

    #[test]
    fn idle_refills_to_the_burst_not_beyond() {
        let l = Limit::new(5, 3);
        let mut b = Bucket::default();
        assert_eq!((0..10).filter(|_| b.allow(&l, S)).count(), 3);
        // An hour idle: still only the burst.
        assert_eq!((0..10).filter(|_| b.allow(&l, 3600 * S)).count(), 3);
    }

    #[test]
    fn denied_frames_are_not_charged() {
        let l = Limit::new(1, 1);
        let mut b = Bucket::default();
        assert!(b.allow(&l, S));
        for _ in 0..1000 {
            assert!(!b.allow(&l, S + S / 2));
        }
        assert!(
            b.allow(&l, 2 * S),
            "a hammering client recovers after one interval"
        );
    }

    #[test]
    fn off_and_high_rates() {
        assert!(!Limit::OFF.is_on());
        assert_eq!(run(Limit::new(0, 0), &[0, 1, 2], 1000), 3000);
        // 100,000/s with a burst of 100,000: a second's worth at once, then 10 µs apart.
        let l = Limit::new(100_000, 100_000);
        let mut b = Bucket::default();
        assert_eq!((0..200_000).filter(|_| b.allow(&l, S)).count(), 100_000);
        assert!(b.allow(&l, S + 10_000));
        assert_eq!(Limit::new(3, 0), Limit::new(3, 1), "burst is at least 1");
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
