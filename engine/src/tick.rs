//! The per-shard tick: every [`TICK`] a shard stamps its liveness time into its stats and folds
//! its latency histograms into the shared copies. A shard whose loop is stuck cannot run this
//! task, so an old stamp is how the admin thread's /health sees a stall.

use std::rc::Rc;
use std::time::Duration;

use crate::hub::Hub;
use crate::stats::monotonic_ms;

/// Tick period.
pub const TICK: Duration = Duration::from_millis(100);

/// Run forever on the shard (dropped with the runtime at shutdown).
pub async fn tick_task(hub: Rc<Hub>) {
    loop {
        tick_once(&hub);
        monoio::time::sleep(TICK).await;
    }
}

/// One tick: stamp, then publish histograms.
pub fn tick_once(hub: &Hub) {
    let stats = hub.stats();
    stats.tick(monotonic_ms());
    hub.latency.publish(&stats.latency);
}
