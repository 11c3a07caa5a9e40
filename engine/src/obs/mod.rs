//! Observability: per-shard counters and histograms, the tick that publishes them, and the
//! admin listener that serves them (/health, /stats, /metrics, /histograms, /dashboard).

pub mod admin;
pub mod dashboard;
pub mod depth;
pub mod health;
pub mod histlog;
pub mod latency;
pub mod metrics;
pub mod stats;
pub mod tick;
