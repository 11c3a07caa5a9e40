//! Observability: per-shard counters and histograms, logs, the tick that publishes them, and the
//! admin listener that serves them (/health, /stats, /metrics, /histograms, /dashboard).

pub mod admin;
pub mod churn;
pub mod compression;
pub mod counter;
pub mod dashboard;
pub mod depth;
pub mod health;
pub mod histlog;
pub mod latency;
pub mod logging;
pub mod metrics;
pub mod procstat;
pub mod promhist;
pub mod stats;
pub mod tick;
