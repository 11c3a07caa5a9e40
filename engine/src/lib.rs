//! shardcast: a thread-per-core WebSocket broadcast engine (monoio; io_uring with epoll
//! fallback).
//!
//! Modules, one concern each:
//! - [`config`]: options from CLI, env and TOML, with precedence and defaults.
//! - [`rlimit`]: raise RLIMIT_NOFILE at start.
//! - [`preflight`]: host limits vs configuration, with the fix for each shortfall.
//! - [`listener`]: SO_REUSEPORT listeners, one per shard.
//! - [`mesh`]: SPSC rings between shards with park/wake doorbells.
//! - [`topic`]: topic names and the shard-local topic table.
//! - [`queue`]: per-connection send queues and the shard's exact accounting of queued frames.
//! - [`policy`]: per-topic back-pressure policies and glob matching.
//! - [`governor`]: the memory ceiling and eviction decisions.
//! - [`route`]: request routing and publish authorization.
//! - [`control`]: Binance-style SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS messages.
//! - [`signals`]: SIGINT/SIGTERM via sigwait on a plain thread.
//! - [`stats`]: per-shard counters.
//! - [`shard`]: shard threads and their runtimes.
//! - [`sockio`]: raw nonblocking socket I/O after readiness.
//! - [`hub`]: a shard's connections, topics and mesh end; publish and fan-out.
//! - [`conn`]: one client connection, handshake to close.
//! - [`server`]: start-up, accept loops, mesh drain, graceful shutdown.
//! - [`latency`]: per-shard HdrHistograms (shard-local, folded into shared copies per tick).
//! - [`depth`]: per-connection queue depth distribution, sampled once per second.
//! - [`tick`]: the per-shard 100 ms tick (liveness stamp, histogram publish, depth sample).
//! - [`admin`]: the admin listener thread (/health, /stats, /histograms).
//! - [`metrics`]: Prometheus text for /metrics.
//! - [`dashboard`]: the embedded live HTML page for /dashboard.
//! - [`histlog`]: periodic HdrHistogram interval logs per shard (`--histogram-log`).
//! - [`bridge`]: the NATS bridge (`--nats-url`): several hosts, one topic space.
//! - [`tls`]: wss:// with rustls: options, key material, reload, the per-connection session.
//! - [`continuity`]: per-topic sequence numbers, history and resume (sans-IO; docs/CONTINUITY.md).
#![deny(missing_docs)]

pub mod admin;
pub mod bridge;
pub mod config;
pub mod conn;
pub mod continuity;
pub mod control;
pub mod dashboard;
pub mod depth;
pub mod governor;
pub mod heartbeat;
pub mod histlog;
pub mod hub;
pub mod latency;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod queue;
pub mod rlimit;
pub mod route;
pub mod server;
pub mod shard;
pub mod signals;
pub mod sockio;
pub mod stats;
pub mod tick;
pub mod tls;
pub mod topic;
