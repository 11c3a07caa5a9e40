//! Connection churn: connections accepted plus connections closed, per second, over the last
//! [`WINDOW`], per shard. A reconnect storm (every client of a restarted host arriving at once,
//! or a proxy cycling its connections) shows as churn far above its usual level while the
//! connection count stays flat.
//!
//! Contract: the shard's tick calls [`ChurnMeter::handle_tick`] with the time and the shard's
//! running total of events (accepted + closed); once per [`SAMPLE_MS`] it returns the new rate,
//! which the tick stores in [`ChurnGauge`] for the admin thread. Before a whole window has
//! passed the rate covers the time since the first sample. For Prometheus the same figure is
//! `rate(shardcast_connections_accepted_total[1m]) + rate(shardcast_connections_closed_total[1m])`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The window the rate is taken over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How often a sample is kept (and the rate updated).
pub const SAMPLE_MS: u64 = 1_000;

/// The shard-side meter: one (time, total) sample per second, a window's worth kept.
#[derive(Debug, Default)]
pub struct ChurnMeter {
    samples: VecDeque<(u64, u64)>,
}

impl ChurnMeter {
    /// A meter for a shard starting at `now_ms` with no events yet, so what happens before its
    /// first tick (a tick is 100 ms away) is counted too.
    pub fn new(now_ms: u64) -> ChurnMeter {
        ChurnMeter {
            samples: VecDeque::from([(now_ms, 0)]),
        }
    }

    /// A tick at `now_ms` with `events` accepted + closed since start; the new rate (events per
    /// second) when a sample was taken, else `None`.
    pub fn handle_tick(&mut self, now_ms: u64, events: u64) -> Option<f64> {
        if let Some(&(last, _)) = self.samples.back() {
            if now_ms.saturating_sub(last) < SAMPLE_MS {
                return None;
            }
        }
        self.samples.push_back((now_ms, events));
        let window_ms = WINDOW.as_millis() as u64;
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now_ms.saturating_sub(t) > window_ms)
        {
            self.samples.pop_front();
        }
        let &(t0, e0) = self.samples.front()?;
        let span = now_ms.saturating_sub(t0);
        Some(if span == 0 {
            0.0
        } else {
            events.saturating_sub(e0) as f64 * 1000.0 / span as f64
        })
    }
}

/// The latest rate, readable from the admin thread (an `f64` in an atomic).
#[derive(Debug, Default)]
pub struct ChurnGauge(AtomicU64);

impl ChurnGauge {
    /// Store a rate.
    pub fn set(&self, per_second: f64) {
        self.0.store(per_second.to_bits(), Relaxed);
    }

    /// The latest rate (0 before the first).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_last_ten_seconds() {
        let mut m = ChurnMeter::default();
        assert_eq!(m.handle_tick(0, 0), Some(0.0), "first sample, nothing yet");
        assert_eq!(m.handle_tick(100, 5), None, "one sample per second");
        assert_eq!(m.handle_tick(1_000, 50), Some(50.0));
        // 50/s for 10 s, then a storm of 1,000 in one second.
        let mut t = 1_000;
        for e in (100..=500).step_by(50) {
            t += 1_000;
            m.handle_tick(t, e);
        }
        let storm = m.handle_tick(t + 1_000, 1_500).unwrap();
        assert!(
            (storm - 145.0).abs() < 1e-9,
            "{storm}: 1,450 events over 10 s"
        );
        // Quiet again: the storm leaves the window after ten seconds.
        let mut last = 0.0;
        for s in 2..=11 {
            last = m.handle_tick(t + s * 1_000, 1_500).unwrap();
        }
        assert_eq!(last, 0.0);
        // Events before the first tick count against the start.
        let mut m = ChurnMeter::new(5_000);
        assert_eq!(m.handle_tick(5_100, 11), None);
        assert_eq!(m.handle_tick(6_000, 11), Some(11.0));
        let g = ChurnGauge::default();
        assert_eq!(g.get(), 0.0);
        g.set(12.5);
        assert_eq!(g.get(), 12.5);
    }
}
