//! The per-shard tick: every [`TICK`] a shard stamps its liveness time into its stats, copies its
//! queue gauges, feeds its histogram log (when `--histogram-log` is set), folds its latency
//! histograms into the shared copies and, once per [`crate::obs::depth::SAMPLE_PERIOD`],
//! samples its queue depths. A shard whose loop is stuck does not tick, so an old stamp is how
//! the admin thread's /health sees a stall. The shard core calls [`Ticker::on_tick`] from its
//! `handle_time` when a tick is due.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::obs::depth::{DepthSample, DepthSampler};
use crate::obs::histlog::{self, ShardLog};
use crate::obs::latency::LocalLatency;
use crate::obs::stats::ShardStats;
use crate::runtime::clock::monotonic_ms;

pub use crate::runtime::clock::TICK;

/// A shard's tick state: its histogram log and its depth sampler.
#[derive(Default)]
pub struct Ticker {
    log: Option<ShardLog>,
    depth: DepthSampler,
}

impl Ticker {
    /// The tick of shard `shard`; with `log_dir` its histogram log is written there every
    /// `log_interval` (a log that cannot start is logged and left off).
    pub fn new(shard: usize, log_dir: Option<&Path>, log_interval: Duration) -> Ticker {
        let log = log_dir.and_then(|dir| {
            ShardLog::start(shard, histlog::Settings::new(dir, log_interval))
                .inspect_err(|e| tracing::warn!(shard, error = %e, "histogram log disabled"))
                .ok()
        });
        Ticker {
            log,
            depth: DepthSampler::default(),
        }
    }

    /// One tick at `now`: stamp, feed the histogram log, publish histograms, and sample the
    /// queue depths of `slots` connection slots through `visit` (not when recording is off,
    /// which turns every histogram off). The caller copies its gauges first.
    pub fn on_tick(
        &mut self,
        stats: &ShardStats,
        latency: &LocalLatency,
        now: Instant,
        slots: usize,
        visit: impl FnOnce(std::ops::Range<usize>, &mut DepthSample),
    ) {
        stats.tick(monotonic_ms());
        if let Some(log) = self.log.as_mut() {
            log.on_tick(latency, now);
        }
        latency.publish(&stats.latency);
        if latency.is_recording() {
            self.depth.on_tick(slots, &stats.queue_depth, visit);
        }
    }

    /// Only the depth sample's next slice (what a tick does for it), for measuring its cost.
    pub fn sample_depth(
        &mut self,
        stats: &ShardStats,
        slots: usize,
        visit: impl FnOnce(std::ops::Range<usize>, &mut DepthSample),
    ) {
        self.depth.on_tick(slots, &stats.queue_depth, visit);
    }
}
