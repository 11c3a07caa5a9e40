//! TLS termination (wss://) with rustls, as sans-IO pieces the shard core drives:
//! - [`options`]: the `tls_*` option values and their validation;
//! - [`material`]: certificate chain, key and client CA files, checked (the key must match the
//!   leaf);
//! - [`server_config`]: the `rustls::ServerConfig` (versions, ALPN, client auth, tickets) and the
//!   crypto provider;
//! - [`reload`]: the configuration shared by the shards, swapped on SIGHUP;
//! - [`session`]: one connection's TLS session (handshake, decrypt, seal queued frames, alerts);
//! - [`shard`]: one shard's sessions (by slot, beside the slab) and the buffers they share;
//! - [`failure`]: why a handshake failed, in the classes the counters use;
//! - [`stats`]: per-shard counters and their /stats and /metrics rendering.
//!
//! docs/ENGINE.md ("TLS") has the design: where the session sits between the socket and the
//! WebSocket codec, its memory, record sealing, reload, and the kTLS plan.

pub mod failure;
pub mod material;
pub mod options;
pub mod reload;
pub mod server_config;
pub mod session;
pub mod shard;
pub mod stats;

pub use failure::Failure;
pub use material::SetupError;
pub use options::TlsOptions;
pub use reload::{ShardConfig, TlsContext};
pub use session::{Received, Sealed, Session};
pub use shard::{ShardTls, MAX_SEND_CIPHERTEXT};
pub use stats::{TlsSnapshot, TlsStats};
