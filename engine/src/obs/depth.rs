//! Per-connection queue depth distribution, sampled: once per [`SAMPLE_PERIOD`] the shard's
//! tick has recorded every connection's current queue depth (entries and unsent bytes, idle
//! connections' zeros included) into a fresh pair of histograms and swaps them into its stats,
//! where the admin thread reads the percentiles.
//!
//! Why sampled and not tracked per message: the data path then pays nothing at all; the cost is
//! one pass over the shard's connection slab per second (a pointer chase and two histogram
//! records per connection, ~70 ns each at 100,000 connections: see docs/ENGINE.md), spread over
//! the second's ticks. The price is resolution: a queue that grows and drains within a second
//! is not seen.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::runtime::clock::TICK;

/// How often the distribution is sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Largest recorded depth in entries (deeper queues are clamped to it).
const MAX_FRAMES: u64 = u32::MAX as u64;

/// Largest recorded depth in bytes: 1 TiB, far above any ceiling.
const MAX_BYTES: u64 = 1 << 40;

/// Two significant digits: depths below 256 are exact, larger ones within 1%.
const SIGFIGS: u8 = 2;

/// Every connection's queue depth at one moment.
#[derive(Clone, Debug)]
pub struct DepthSample {
    /// Queue entries per connection.
    pub frames: Histogram<u64>,
    /// Unsent bytes per connection.
    pub bytes: Histogram<u64>,
}

impl Default for DepthSample {
    fn default() -> Self {
        DepthSample {
            frames: Histogram::new_with_bounds(1, MAX_FRAMES, SIGFIGS).expect("static bounds"),
            bytes: Histogram::new_with_bounds(1, MAX_BYTES, SIGFIGS).expect("static bounds"),
        }
    }
}

impl DepthSample {
    /// Record one connection's queue (0 is a valid depth: an idle connection).
    pub fn record(&mut self, frames: usize, bytes: usize) {
        self.frames.saturating_record(frames as u64);
        self.bytes.saturating_record(bytes as u64);
    }

    /// Add another shard's sample (for process-wide percentiles); an empty one is skipped
    /// (adding walks the whole counts array).
    pub fn add(&mut self, other: &DepthSample) {
        if other.frames.is_empty() {
            return;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.frames.add(&other.frames);
        let _ = self.bytes.add(&other.bytes);
    }

    fn reset(&mut self) {
        self.frames.reset();
        self.bytes.reset();
    }

    /// The percentiles /stats and /metrics show.
    pub fn summary(&self) -> DepthSummary {
        if self.frames.is_empty() {
            return DepthSummary::default();
        }
        // One scan per histogram for all three quantiles.
        let at = |h: &Histogram<u64>| {
            let mut q = h.value_at_quantiles(QUANTILES.map(|(q, _)| q));
            [(); 3].map(|_| q.next().unwrap_or(0))
        };
        DepthSummary {
            connections: self.frames.len(),
            frames: at(&self.frames),
            max_frames: self.frames.max(),
            bytes: at(&self.bytes),
            max_bytes: self.bytes.max(),
            // hdrhistogram keeps no exact sum; mean × count is within its 1%.
            sum_frames: self.frames.mean() * self.frames.len() as f64,
            sum_bytes: self.bytes.mean() * self.bytes.len() as f64,
        }
    }
}

/// Quantiles exposed by [`DepthSummary`], with their Prometheus label values.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")];

/// Percentiles of one sample (or of several shards' samples merged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DepthSummary {
    /// Connections sampled.
    pub connections: u64,
    /// Entries at the [`QUANTILES`].
    pub frames: [u64; 3],
    /// Deepest queue in entries.
    pub max_frames: u64,
    /// Unsent bytes at the [`QUANTILES`].
    pub bytes: [u64; 3],
    /// Deepest queue in bytes.
    pub max_bytes: u64,
    /// Entries over every sampled queue (approximate, from the histogram).
    pub sum_frames: f64,
    /// Unsent bytes over every sampled queue (approximate, from the histogram).
    pub sum_bytes: f64,
}

/// The latest sample of one shard, readable from the admin thread.
#[derive(Debug, Default)]
pub struct SharedDepth {
    latest: Mutex<DepthSample>,
}

impl SharedDepth {
    fn lock(&self) -> MutexGuard<'_, DepthSample> {
        // Poisoning is ignored: a histogram is always valid.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the latest sample (the lock is held only for the copy).
    pub fn clone_of(&self) -> DepthSample {
        self.lock().clone()
    }

    /// Publish `sample`; `sample` gets the previous one back to reuse (no allocation).
    pub fn swap(&self, sample: &mut DepthSample) {
        std::mem::swap(&mut *self.lock(), sample);
    }
}

/// Ticks one sample is spread over: [`SAMPLE_PERIOD`] / [`TICK`].
pub const SLICES: usize = (SAMPLE_PERIOD.as_millis() / TICK.as_millis()) as usize;

/// The shard's side: the sample being taken and how far it got. One pass over the connection
/// slab is spread over [`SLICES`] ticks (a tenth of the slots each), so a shard with 100,000
/// connections never pauses for the whole walk at once.
#[derive(Default)]
pub struct DepthSampler {
    scratch: DepthSample,
    slice: usize,
    cursor: usize,
    step: usize,
}

impl DepthSampler {
    /// Called on every tick: record the next slice of the `slots` connection slots through
    /// `visit(range, sample)` (which records every connection in `range`); after [`SLICES`]
    /// ticks, publish the sample into `out` (the shard's stats' `queue_depth`). Each connection is recorded once per pass, at the
    /// moment its slice is visited (connections that come or go during the pass may be missed).
    pub fn on_tick(
        &mut self,
        slots: usize,
        out: &SharedDepth,
        visit: impl FnOnce(std::ops::Range<usize>, &mut DepthSample),
    ) {
        if self.slice == 0 {
            self.scratch.reset();
            self.cursor = 0;
            self.step = slots.div_ceil(SLICES);
        }
        // The last slice takes whatever the slab grew to meanwhile.
        let end = if self.slice + 1 == SLICES {
            slots.max(self.cursor)
        } else {
            (self.cursor + self.step).min(slots.max(self.cursor))
        };
        visit(self.cursor..end, &mut self.scratch);
        self.cursor = end;
        self.slice += 1;
        if self.slice == SLICES {
            self.slice = 0;
            out.swap(&mut self.scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_count_and_percentiles_are_exact_for_small_depths() {
        let mut s = DepthSample::default();
        for _ in 0..98 {
            s.record(0, 0);
        }
        s.record(7, 70_000);
        s.record(200, 1 << 30);
        let d = s.summary();
        assert_eq!(d.connections, 100);
        assert_eq!(d.frames, [0, 0, 7]);
        assert_eq!(d.max_frames, 200);
        assert_eq!(d.bytes[..2], [0, 0]);
        assert!((69_300..=70_700).contains(&d.bytes[2]), "{d:?}");
        assert!(d.max_bytes >= 1 << 30 && d.max_bytes <= (1 << 30) / 100 * 101);
        let mut merged = DepthSample::default();
        merged.add(&s);
        merged.add(&s);
        assert_eq!(merged.summary().connections, 200);
        assert_eq!(DepthSample::default().summary(), DepthSummary::default());
    }

    #[test]
    fn one_pass_is_spread_over_the_ticks_of_a_period() {
        let stats = crate::obs::stats::ShardStats::default();
        // 30 slots: nine slices of 3, then the last slice takes the rest.
        let mut depths: Vec<(usize, usize)> = vec![(0, 0); 30];
        depths[29] = (1, 6);
        let mut sampler = DepthSampler::default();
        let published = || stats.queue_depth.clone_of().summary();
        let tick = |sampler: &mut DepthSampler, depths: &[(usize, usize)]| {
            sampler.on_tick(depths.len(), &stats.queue_depth, |range, sample| {
                for &(f, b) in &depths[range] {
                    sample.record(f, b);
                }
            })
        };
        for _ in 0..SLICES - 1 {
            tick(&mut sampler, &depths);
            assert_eq!(published().connections, 0, "nothing until the pass ends");
        }
        depths.push((0, 0)); // joins mid-pass: the last slice takes it
        tick(&mut sampler, &depths);
        let d = published();
        assert_eq!(d.connections, 31, "every connection once, zeros included");
        assert_eq!((d.max_frames, d.max_bytes), (1, 6));
        for _ in 0..SLICES {
            tick(&mut sampler, &depths);
        }
        assert_eq!(
            published().connections,
            31,
            "a fresh sample, not an accumulation"
        );
    }

    #[test]
    fn swap_publishes_and_returns_the_previous_sample() {
        let shared = SharedDepth::default();
        let mut s = DepthSample::default();
        s.record(3, 30);
        shared.swap(&mut s);
        assert_eq!(shared.clone_of().summary().max_frames, 3);
        assert!(s.frames.is_empty(), "got the empty previous sample back");
    }
}
