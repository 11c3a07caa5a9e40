//! Per-shard latency histograms (HdrHistogram, microseconds).
//!
//! A shard records into its own [`LocalLatency`] (`RefCell`s, no atomics, no locks); once per
//! tick it folds them into the [`SharedLatency`] in its stats, the only lock, taken once per tick
//! by the shard and briefly by the admin thread. Readers therefore see data at most one tick old.

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest recordable value: one minute in µs (larger samples are clamped to it).
const MAX_US: u64 = 60_000_000;

/// Two significant digits (1% value precision) keep a histogram near 20 KB, four per shard.
const SIGFIGS: u8 = 2;

/// What a histogram measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyKind {
    /// Accept to the 101 response written.
    Handshake,
    /// `Envelope.published_at` to drained by the consuming shard.
    RingTransit,
}

impl LatencyKind {
    /// Every kind.
    pub const ALL: [LatencyKind; 2] = [LatencyKind::Handshake, LatencyKind::RingTransit];

    /// Stable name for /stats, /metrics and `/histograms?kind=`.
    pub fn name(self) -> &'static str {
        match self {
            LatencyKind::Handshake => "handshake",
            LatencyKind::RingTransit => "ring_transit",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<LatencyKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// An empty histogram with the engine's range and precision.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGFIGS).expect("static bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// A shard's own histograms, written on its hot path.
pub struct LocalLatency {
    hists: [RefCell<Histogram<u64>>; 2],
}

impl Default for LocalLatency {
    fn default() -> Self {
        LocalLatency {
            hists: [RefCell::new(new_histogram()), RefCell::new(new_histogram())],
        }
    }
}

impl LocalLatency {
    /// Record one sample.
    pub fn record(&self, kind: LatencyKind, d: Duration) {
        self.record_n(kind, d, 1);
    }

    /// Record `n` samples of the same value (a drained batch shares one clock read).
    pub fn record_n(&self, kind: LatencyKind, d: Duration, n: u64) {
        self.hists[kind as usize]
            .borrow_mut()
            .saturating_record_n(micros(d), n);
    }

    /// Move everything recorded since the last call into `shared` (skipped when empty, so an
    /// idle shard never takes the lock).
    pub fn publish(&self, shared: &SharedLatency) {
        for kind in LatencyKind::ALL {
            let mut local = self.hists[kind as usize].borrow_mut();
            if local.is_empty() {
                continue;
            }
            let mut total = shared.lock(kind);
            // Same bounds on both sides, so adding cannot fail.
            let _ = total.add(&*local);
            local.reset();
        }
    }
}

/// Cumulative histograms since start, readable from other threads.
#[derive(Debug)]
pub struct SharedLatency {
    hists: [Mutex<Histogram<u64>>; 2],
}

impl Default for SharedLatency {
    fn default() -> Self {
        SharedLatency {
            hists: [Mutex::new(new_histogram()), Mutex::new(new_histogram())],
        }
    }
}

impl SharedLatency {
    /// Lock one histogram (poisoning is ignored: a histogram is always valid).
    pub fn lock(&self, kind: LatencyKind) -> MutexGuard<'_, Histogram<u64>> {
        self.hists[kind as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of one histogram, so the lock is held only for the copy.
    pub fn clone_of(&self, kind: LatencyKind) -> Histogram<u64> {
        self.lock(kind).clone()
    }

    /// The summary of one histogram.
    pub fn summary(&self, kind: LatencyKind) -> Summary {
        Summary::of(&self.clone_of(kind))
    }
}

/// Quantiles of one histogram, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Summary {
    /// The quantiles exposed by /stats and /metrics, with their Prometheus label values.
    pub fn quantiles(&self) -> [(&'static str, u64); 5] {
        [
            ("0.5", self.p50),
            ("0.9", self.p90),
            ("0.99", self.p99),
            ("0.999", self.p999),
            ("1", self.max),
        ]
    }

    /// Summarize `h`.
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_moves_samples_and_clamps() {
        let local = LocalLatency::default();
        let shared = SharedLatency::default();
        for us in 1..=1000 {
            local.record(LatencyKind::Handshake, Duration::from_micros(us));
        }
        local.record_n(LatencyKind::RingTransit, Duration::from_secs(3600), 3);
        local.publish(&shared);
        local.publish(&shared);
        let s = shared.summary(LatencyKind::Handshake);
        assert_eq!(s.count, 1000, "published once, not twice");
        assert!((495..=505).contains(&s.p50), "{s:?}");
        assert!((985..=1000).contains(&s.p99), "{s:?}");
        let r = shared.summary(LatencyKind::RingTransit);
        assert_eq!(r.count, 3);
        assert!(r.max >= MAX_US * 99 / 100, "clamped near the top: {r:?}");
        assert_eq!(
            LatencyKind::from_name("ring_transit"),
            Some(LatencyKind::RingTransit)
        );
        assert_eq!(LatencyKind::from_name("x"), None);
    }
}
