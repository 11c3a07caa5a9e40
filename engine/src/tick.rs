//! The per-shard tick: every [`TICK`] a shard stamps its liveness time into its stats, feeds its
//! histogram log (when `--histogram-log` is set), folds its latency histograms into the shared
//! copies and, once per [`crate::depth::SAMPLE_PERIOD`], samples its queue depths. A shard whose
//! loop is stuck cannot run this task, so an old stamp is how the admin thread's /health sees a
//! stall.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::churn::ChurnMeter;
use crate::depth::DepthSampler;
use crate::histlog::{self, ShardLog};
use crate::hub::Hub;
use crate::stats::monotonic_ms;

/// Tick period.
pub const TICK: Duration = Duration::from_millis(100);

/// Run forever on the shard (dropped with the runtime at shutdown).
pub async fn tick_task(hub: Rc<Hub>) {
    hub.latency.set_recording(hub.config.latency_recording);
    let mut log = hub.config.histogram_log.as_deref().and_then(|dir| {
        let interval = Duration::from_millis(hub.config.histogram_log_interval_ms);
        ShardLog::start(hub.id, histlog::Settings::new(dir, interval))
            .inspect_err(|e| tracing::warn!(shard = hub.id, error = %e, "histogram log disabled"))
            .ok()
    });
    let mut depth = DepthSampler::default();
    let mut churn = ChurnMeter::default();
    loop {
        tick_once(&hub, log.as_mut(), &mut depth);
        churn_tick(&hub, &mut churn);
        monoio::time::sleep(TICK).await;
    }
}

/// Update the churn rate: accepted plus closed (every accepted connection no longer open).
fn churn_tick(hub: &Hub, meter: &mut ChurnMeter) {
    let s = hub.stats();
    let accepted = crate::stats::get(&s.connections_accepted);
    let closed = accepted.saturating_sub(crate::stats::get(&s.connections_active));
    if let Some(rate) = meter.handle_tick(monotonic_ms(), accepted + closed) {
        s.churn.set(rate);
    }
}

/// One tick: stamp, copy the queue gauges, feed the histogram log, publish histograms, sample
/// queue depths when due (not with `--latency-recording off`, which turns every histogram off).
pub fn tick_once(hub: &Hub, log: Option<&mut ShardLog>, depth: &mut DepthSampler) {
    let stats = hub.stats();
    stats.tick(monotonic_ms());
    hub.publish_gauges();
    let now = Instant::now();
    if let Some(log) = log {
        log.on_tick(&hub.latency, now);
    }
    hub.latency.publish(&stats.latency);
    if hub.latency.is_recording() {
        depth.on_tick(hub);
    }
}
