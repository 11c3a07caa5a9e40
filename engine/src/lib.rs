//! shardcast: a thread-per-core WebSocket broadcast engine.
//!
//! Modules, one home per concept:
//! - [`config`]: options from CLI, env and TOML, with precedence and defaults.
//! - [`access`]: tokens and grants, origin allow-list, implicit trust, inbound and per-address
//!   limits (sans-IO; `conn/` and `shard/` call in).
//! - [`runtime`]: I/O drivers, listeners, signals, rlimits, the clock, shard threads.
//! - [`mesh`]: SPSC rings between shards with park/wake doorbells, and what travels on them.
//! - [`shard`]: a shard's core: connections, fan-out, pause, the loop turn.
//! - [`flow`]: send queues and their accounting, policies, topics, the memory ceiling.
//! - [`conn`]: one connection: admission, upgrade, HTTP publish, roles, control, heartbeats.
//! - [`obs`]: counters, histograms, logs, the tick, the admin listener and what it serves.
//! - [`ops`]: host facts and the start-up preflight.
//! - [`bridge`]: the NATS bridge (`--nats-url`): several hosts, one topic space.
//! - [`deflate`]: permessage-deflate, compressed once per message for the whole process.
//! - [`tls`]: wss:// with rustls: options, key material, reload, the per-connection session.
//! - [`continuity`]: per-topic sequence numbers, history and resume (sans-IO; docs/CONTINUITY.md).
//! - [`server`]: start-up and shutdown: binds, builds the mesh, spawns the shards.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub mod bridge;
pub mod bytesize;
pub mod config;
pub mod conn;
pub mod continuity;
pub mod deflate;
pub mod flow;
pub mod mesh;
pub mod obs;
pub mod ops;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod tls;

pub use runtime::rlimit;
