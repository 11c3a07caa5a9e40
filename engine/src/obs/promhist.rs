//! Prometheus histograms (`_bucket{le=...}`, `_sum`, `_count`) from the per-shard
//! HdrHistograms, over fixed, documented bucket bounds.
//!
//! Why fixed bounds: a classic Prometheus histogram aggregates across shards and hosts only when
//! every series has the same `le` values (`sum by (le) (rate(..._bucket[5m]))`), and decays only
//! through `rate()` over cumulative counters. The shards keep exact-to-1% HdrHistograms (for
//! /stats, /histograms and the interval logs); this module folds one into cumulative bucket
//! counts when /metrics is scraped, so the data path pays nothing for it.
//!
//! Precision: an HdrHistogram bin holds values within 1% of each other (2 significant digits);
//! a bin is counted under the first bound not below its *lowest* value, so a sample up to 1%
//! above a bound can be counted in that bound's bucket (the bounds below are exact up to 255, in
//! µs or entries). `_sum` is the histogram's mean × count, also within 1%.

use hdrhistogram::Histogram;

use crate::obs::latency::LatencyKind;

/// Handshake (accept → 101 written), µs: ~50 µs on an idle host, milliseconds in a reconnect
/// storm, up to the 10 s handshake timeout.
#[rustfmt::skip]
pub const HANDSHAKE_US: &[u64] = &[
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Ring transit (publish → drained by another shard), µs: a few µs while consumers are awake;
/// milliseconds mean a shard too busy to drain its rings.
#[rustfmt::skip]
pub const RING_TRANSIT_US: &[u64] = &[
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Broadcast (publish → written to a subscriber's socket), µs: tens of µs for a fast client, up
/// to minutes for one a `pause` or `drop-oldest` policy keeps behind.
#[rustfmt::skip]
pub const BROADCAST_US: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000, 300_000_000,
];

/// Eviction stall (no write progress before a 1013), µs: ~0 when one message alone was over
/// the mark, else typically 100 ms to a few seconds; minutes for a heartbeat-era dead peer.
#[rustfmt::skip]
pub const EVICTION_STALL_US: &[u64] = &[
    1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
    30_000_000, 60_000_000, 300_000_000,
];

/// Queue depth in messages per connection: 0 (caught up) matters most, then powers of two.
#[rustfmt::skip]
pub const DEPTH_MESSAGES: &[u64] = &[
    0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1_024, 4_096, 16_384, 65_536,
];

/// Queue depth in unsent bytes per connection, around the default 1 MiB high-water mark.
#[rustfmt::skip]
pub const DEPTH_BYTES: &[u64] = &[
    0, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20,
    16 << 20, 64 << 20, 256 << 20, 1 << 30,
];

/// The bounds of a latency kind, in µs.
pub fn latency_bounds(kind: LatencyKind) -> &'static [u64] {
    match kind {
        LatencyKind::Handshake => HANDSHAKE_US,
        LatencyKind::RingTransit => RING_TRANSIT_US,
        LatencyKind::Broadcast => BROADCAST_US,
        LatencyKind::EvictionStall => EVICTION_STALL_US,
    }
}

/// Cumulative bucket counts over fixed bounds, in the histogram's own unit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// Samples at or below each bound (same order as the bounds; cumulative).
    pub le: Vec<u64>,
    /// All samples (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the samples (approximate: mean × count).
    pub sum: f64,
}

impl Buckets {
    /// Empty buckets over `bounds`.
    pub fn empty(bounds: &[u64]) -> Buckets {
        Buckets {
            le: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    /// `h` folded into `bounds` (ascending).
    pub fn of(h: &Histogram<u64>, bounds: &[u64]) -> Buckets {
        let mut b = Buckets::empty(bounds);
        if h.is_empty() {
            return b;
        }
        let mut per_bucket = vec![0u64; bounds.len()];
        for v in h.iter_recorded() {
            let low = h.lowest_equivalent(v.value_iterated_to());
            // The first bound not below the bin's lowest value; past the last: +Inf only.
            let i = bounds.partition_point(|&bound| bound < low);
            if let Some(slot) = per_bucket.get_mut(i) {
                *slot += v.count_at_value();
            }
        }
        let mut running = 0;
        for (le, n) in b.le.iter_mut().zip(per_bucket) {
            running += n;
            *le = running;
        }
        b.count = h.len();
        b.sum = h.mean() * h.len() as f64;
        b
    }

    /// Add `other` (over the same bounds).
    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.le.iter_mut().zip(&other.le) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap();
        for &(v, n) in values {
            h.record_n(v, n).unwrap();
        }
        h
    }

    #[test]
    fn buckets_are_cumulative_and_exact_at_round_bounds() {
        let h = hist(&[
            (0, 5),
            (1, 1),
            (10, 2),
            (11, 3),
            (999, 1),
            (1_000, 4),
            (2_000_000, 1),
        ]);
        let b = Buckets::of(&h, &[0, 10, 1_000, 1_000_000]);
        assert_eq!(
            b.le,
            vec![5, 8, 16, 16],
            "0; <=10; <=1000 (1000 itself in); <=1e6"
        );
        assert_eq!(b.count, 17, "+Inf has the 2 s one too");
        let exact = 1 + 20 + 33 + 999 + 4_000 + 2_000_000;
        assert!(
            (b.sum - exact as f64).abs() / (exact as f64) < 0.01,
            "{}",
            b.sum
        );
        let mut twice = b.clone();
        twice.add(&b);
        assert_eq!((twice.le[2], twice.count), (32, 34));
        assert_eq!(Buckets::of(&hist(&[]), &[1, 2]), Buckets::empty(&[1, 2]));
    }

    #[test]
    fn a_bin_straddling_a_bound_counts_below_it_within_one_percent() {
        // 1003 shares its bin with 1000 (bins are 4 wide from 512 to 1023).
        let h = hist(&[(1_003, 1), (1_004, 1)]);
        assert_eq!(Buckets::of(&h, &[1_000]).le, vec![1]);
    }

    #[test]
    fn bounds_ascend_and_fit_the_recorded_range() {
        for bounds in [
            HANDSHAKE_US,
            RING_TRANSIT_US,
            BROADCAST_US,
            EVICTION_STALL_US,
            DEPTH_MESSAGES,
            DEPTH_BYTES,
        ] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
        for kind in LatencyKind::ALL {
            assert!(*latency_bounds(kind).last().unwrap() <= kind.max_us());
        }
    }
}
