//! The NATS bridge: one more participant in the shard mesh, so several hosts serve one topic
//! space (`--nats-url`; docs/SCALE-OUT.md).
//!
//! It runs on its own plain thread (`nats-bridge`) with a current-thread tokio runtime for the
//! `async-nats` client; the shards never wait on it. Shards talk to it through the same SPSC
//! rings as to each other:
//! - shard → bridge: every message published locally (never one that came from NATS), and
//!   [`MeshItem::Interest`] notices when a shard gets its first / loses its last subscriber of
//!   a topic, and the `pause` notices every participant gets;
//! - bridge → shards: messages from NATS, encoded once here (as `Core::publish` does,
//!   compressed variants included when some shard has a subscriber that negotiated
//!   permessage-deflate: the bridge gets the shards' `MeshItem::Deflate` notices) and sent only
//!   to the shards interested in the topic.
//!
//! Outbound, local publishes go into a queue bounded in bytes (`nats_buffer_bytes`) drained by
//! a forwarding task; a full queue (NATS slow or down) drops and counts, so the rings into the
//! bridge always drain. Inbound, one subscription per topic some shard wants (interest-based);
//! a message is pulled only when every interested shard's ring has room and none is above the
//! overload mark of its queue ceiling, and paused topics are not pulled at all. What the bridge
//! does not pull waits in the client's per-subscription queue (`nats_pending_messages`), beyond
//! which the client drops it as a slow consumer (counted). Own messages are suppressed twice:
//! the connection is `no_echo`, and an origin header is checked.
//!
//! Continuity: the home shards forward local publishes with their number (headers), and with
//! `--nats-jetstream` the bridge keeps a JetStream stream over the topics' subjects and fetches
//! ranges from it for resumes older than the local history (`deep`).

//!
//! Behind the cargo feature `nats` (on by default): without it the bookkeeping below still
//! builds (the admin listener reads [`stats`]), but `--nats-url` is refused at start-up.

#[cfg(feature = "nats")]
mod deep;
pub mod interest;
pub mod linklog;
#[cfg(feature = "nats")]
mod run;
pub mod stats;
pub mod subject;

#[cfg(feature = "nats")]
pub use run::{servers, spawn, Bridge, OUTBOUND_OVERHEAD};

/// Without the `nats` feature: `--nats-url` cannot be served.
#[cfg(not(feature = "nats"))]
pub fn servers(_url: &str) -> std::io::Result<std::convert::Infallible> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "--nats-url: this build has no NATS bridge (cargo feature `nats`)",
    ))
}
