//! Per-shard counters. Each shard writes only its own [`ShardStats`] (Relaxed stores/adds are
//! enough: one writer, readers only want eventually consistent totals for /stats).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

pub use crate::conn::closing::AbortReason;
use crate::obs::churn::ChurnGauge;
pub use crate::obs::counter::{add, get, sub};
use crate::obs::depth::SharedDepth;
use crate::obs::latency::SharedLatency;
pub use crate::runtime::accept::AcceptErrorReason;

pub use crate::runtime::clock::monotonic_ms;
pub use crate::runtime::select::DriverKind;

/// Why a connection or request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the connection limit (503).
    MaxConnections,
    /// The upgrade did not complete in time (408 or silent close).
    HandshakeTimeout,
    /// Malformed request or failed upgrade validation (400).
    BadRequest,
    /// A method the route does not take (405).
    MethodNotAllowed,
    /// An upgrade with an unsupported `Sec-WebSocket-Version` (426).
    UpgradeRequired,
    /// A request head over `max_header_bytes` or `max_headers` (431).
    HeadersTooLarge,
    /// A request using what the server does not implement, e.g. `Transfer-Encoding` (501).
    NotImplemented,
    /// Missing or malformed publish credentials (401).
    Unauthorized,
    /// Wrong token or non-loopback peer without a token (403).
    Forbidden,
    /// Unknown route (404).
    NotFound,
    /// HTTP publish body over max_message_bytes (413).
    TooLarge,
    /// HTTP publish to a topic paused by back-pressure (503 with Retry-After).
    Paused,
    /// HTTP publish while the shard's inter-shard backlog is over its share (503 with
    /// Retry-After).
    MeshBacklog,
    /// HTTP publish body that would take the shard over its memory ceiling share (503 with
    /// Retry-After).
    Memory,
    /// Upgrade naming more topics than `max_subscriptions` leaves room for (503).
    Subscriptions,
    /// Out of file descriptors: answered 503 through the reserve descriptor (`accept.rs`).
    Descriptors,
    /// Per-address connection limits (429 with Retry-After; reason in `access.refused`).
    TooManyRequests,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; REFUSALS] = [
        Refusal::MaxConnections,
        Refusal::HandshakeTimeout,
        Refusal::BadRequest,
        Refusal::MethodNotAllowed,
        Refusal::UpgradeRequired,
        Refusal::HeadersTooLarge,
        Refusal::NotImplemented,
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::NotFound,
        Refusal::TooLarge,
        Refusal::Paused,
        Refusal::MeshBacklog,
        Refusal::Memory,
        Refusal::Subscriptions,
        Refusal::Descriptors,
        Refusal::TooManyRequests,
    ];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::BadRequest => "bad_request",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UpgradeRequired => "upgrade_required",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::NotImplemented => "not_implemented",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::TooLarge => "too_large",
            Refusal::Paused => "paused",
            Refusal::MeshBacklog => "mesh_backlog",
            Refusal::Memory => "memory",
            Refusal::Subscriptions => "subscriptions",
            Refusal::Descriptors => "descriptors",
            Refusal::TooManyRequests => "too_many_requests",
        }
    }

    /// The reason an HTTP error status answered before the upgrade is counted under. 503 is
    /// not mapped here: its causes (limit, pause, backlog) are told apart where it is sent.
    pub fn for_status(code: u16) -> Refusal {
        match code {
            401 => Refusal::Unauthorized,
            403 => Refusal::Forbidden,
            404 => Refusal::NotFound,
            405 => Refusal::MethodNotAllowed,
            408 => Refusal::HandshakeTimeout,
            413 => Refusal::TooLarge,
            426 => Refusal::UpgradeRequired,
            429 => Refusal::TooManyRequests,
            431 => Refusal::HeadersTooLarge,
            501 => Refusal::NotImplemented,
            _ => Refusal::BadRequest,
        }
    }
}

/// Number of [`Refusal`] reasons.
pub const REFUSALS: usize = 17;

/// Close codes with their own protocol-error counter; anything else lands in `other`.
pub const COUNTED_CLOSE_CODES: [u16; 6] = [1002, 1003, 1007, 1008, 1009, 1011];

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Connections currently open (upgraded or in handshake).
    pub connections_active: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    refused: [AtomicU64; REFUSALS],
    /// WebSocket/HTTP messages received from clients.
    pub messages_in: AtomicU64,
    /// Payload bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Frames queued to clients.
    pub messages_out: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_out: AtomicU64,
    /// Envelopes that found an inter-shard ring full and went to the overflow queue.
    pub ring_overflow_total: AtomicU64,
    /// Envelopes currently waiting in overflow queues.
    pub overflow_len: AtomicU64,
    protocol_errors: [AtomicU64; 7],
    driver: AtomicU8,
    /// [`monotonic_ms`] of the shard's last tick (a stalled shard stops updating it).
    pub last_tick_ms: AtomicU64,
    /// Latency histograms, folded in by the shard once per tick.
    pub latency: SharedLatency,
    /// The latest per-connection queue depth sample (`depth.rs`, once per second).
    pub queue_depth: SharedDepth,
    /// Connections accepted + closed per second over the last 10 s (`churn.rs`).
    pub churn: ChurnGauge,
    /// Pings sent by the heartbeat sweep.
    pub pings_sent_total: AtomicU64,
    /// Connections closed because no frame answered a ping in time.
    pub heartbeat_timeouts_total: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts_total: AtomicU64,
    /// Connections closed at the end of their maximum lifetime.
    pub lifetime_closes_total: AtomicU64,
    /// Connections closed 1008 for leaving a message or frame unfinished too long.
    pub fragment_timeouts_total: AtomicU64,
    /// Bytes held for clients' unfinished input: partial frames, fragmented messages being
    /// reassembled, HTTP publish bodies being read (charged to the ceiling).
    pub inbound_bytes: AtomicU64,
    /// Subscriptions on this shard (one per connection and topic).
    pub subscriptions: AtomicU64,
    /// Topics with at least one subscriber on this shard.
    pub topics: AtomicU64,
    /// Bytes charged to this shard's share of the ceiling: queued frames (each once, plus
    /// queue slots) plus `mesh_bytes`.
    pub retained_bytes: AtomicU64,
    /// Bytes this shard keeps alive in the inter-shard mesh (rings and overflow) until the
    /// other shards have consumed them; part of `retained_bytes`.
    pub mesh_bytes: AtomicU64,
    /// Kernel memory held by this shard's sockets' unsent data, as sampled while they were
    /// full (live connections' part is in `retained_bytes`).
    pub kernel_bytes: AtomicU64,
    /// Times a WebSocket publisher on this shard was stopped because the mesh backlog was
    /// over its share (once per publisher per episode).
    pub mesh_stalls_total: AtomicU64,
    /// Logical unsent bytes over this shard's queues (a shared frame counts per queue).
    pub total_queued_bytes: AtomicU64,
    /// Queue entries over this shard's queues.
    pub queued_frames: AtomicU64,
    /// This shard's share of the queue ceiling.
    pub queue_ceiling_bytes: AtomicU64,
    /// The memory limit the ceiling derives from (same on every shard).
    pub memory_limit: AtomicU64,
    /// Connections whose queue is above their high-water mark (until below low water).
    pub slow_clients: AtomicU64,
    /// Topics currently paused on this shard (by any shard's subscribers).
    pub paused_topics: AtomicU64,
    /// Times a subscriber on this shard paused a topic.
    pub pauses_total: AtomicU64,
    /// Local publishes not handed to the NATS bridge: its ring and overflow from this shard
    /// were full (the bridge thread did not keep up).
    pub bridge_dropped: AtomicU64,
    /// Continuity gauges and counters, replaced by the shard's tick (not on the hot path).
    pub continuity: std::sync::Mutex<crate::continuity::desk::Gauges>,
    evictions: [AtomicU64; 3],
    drops: [AtomicU64; 2],
    aborts: [AtomicU64; 2],
    accept_errors: [AtomicU64; 4],
    /// Access refusals and closes (`access/stats.rs`).
    pub access: crate::access::stats::AccessStats,
    /// permessage-deflate counters (`deflate::stats`).
    pub compression: crate::obs::compression::CompressionStats,
    /// TLS handshakes and failures (`tls/stats.rs`).
    pub tls: crate::tls::TlsStats,
}

/// A point-in-time copy of one shard's counters: plain numbers for /stats and /metrics.
/// A new counter is one field here, one line in [`ShardStats::snapshot`], and one entry in
/// `metrics::SCALARS` (/stats serializes every field by itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Connections currently open.
    pub active_connections: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Refusals, indexed like [`Refusal::ALL`].
    #[serde(skip)]
    pub refused: [u64; REFUSALS],
    /// Messages received from clients.
    pub messages_in: u64,
    /// Payload bytes received from clients.
    pub bytes_in: u64,
    /// Frames queued to clients.
    pub messages_out: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// Envelopes that spilled into overflow queues.
    pub ring_overflow_total: u64,
    /// Envelopes waiting in overflow queues.
    pub overflow_len: u64,
    /// Protocol errors, indexed like [`COUNTED_CLOSE_CODES`] plus one slot for other codes.
    #[serde(skip)]
    pub protocol_errors: [u64; 7],
    /// [`monotonic_ms`] of the last tick.
    #[serde(skip)]
    pub last_tick_ms: u64,
    /// Pings sent by the heartbeat sweep.
    pub pings_sent_total: u64,
    /// Connections closed because no frame answered a ping in time.
    pub heartbeat_timeouts_total: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts_total: u64,
    /// Connections closed at the end of their maximum lifetime.
    pub lifetime_closes_total: u64,
    /// Connections closed 1008 for leaving a message or frame unfinished too long.
    pub fragment_timeouts_total: u64,
    /// Bytes held for clients' unfinished input (charged to the ceiling).
    pub inbound_bytes: u64,
    /// Subscriptions on this shard.
    pub subscriptions: u64,
    /// Topics with at least one subscriber on this shard.
    pub topics: u64,
    /// Bytes charged to the ceiling share: queued frames (each once, plus slots) + mesh.
    pub retained_bytes: u64,
    /// Bytes kept alive in the inter-shard mesh for other shards (part of the above).
    pub mesh_bytes: u64,
    /// Kernel memory held by unsent data of this shard's sockets, as sampled.
    pub kernel_bytes: u64,
    /// WebSocket publishers stopped by the mesh backlog.
    pub mesh_stalls_total: u64,
    /// Logical unsent bytes over every queue.
    pub total_queued_bytes: u64,
    /// Queue entries over every queue.
    pub queued_frames: u64,
    /// The shard's share of the queue ceiling.
    pub queue_ceiling_bytes: u64,
    /// The memory limit the ceiling derives from.
    pub memory_limit: u64,
    /// Connections above their high-water mark.
    pub slow_clients: u64,
    /// Topics paused on this shard.
    pub paused_topics: u64,
    /// Pauses begun by this shard's subscribers.
    pub pauses_total: u64,
    /// Local publishes not handed to the NATS bridge (its ring and overflow were full).
    pub bridge_dropped: u64,
    /// Continuity: history, numbering and resume (`continuity::desk::Gauges`).
    pub continuity: crate::continuity::desk::Gauges,
    /// Evictions, indexed like [`Eviction::ALL`].
    #[serde(skip)]
    pub evictions: [u64; 3],
    /// Discarded messages, indexed like [`Discard::ALL`].
    #[serde(skip)]
    pub discarded: [u64; 2],
    /// Connections reset because their close did not flush in time, indexed like
    /// [`AbortReason::ALL`].
    #[serde(skip)]
    pub aborts: [u64; 2],
    /// Failed accepts, indexed like [`AcceptErrorReason::ALL`].
    #[serde(skip)]
    pub accept_errors: [u64; 4],
    /// Access refusals and closes (an object of its own in /stats).
    pub access: crate::access::stats::AccessSnapshot,
    /// permessage-deflate counters (the `compression` object of /stats).
    pub compression: crate::obs::compression::Snapshot,
    /// TLS handshakes and failures (a `tls` object in /stats).
    pub tls: crate::tls::TlsSnapshot,
}

/// Why a connection was evicted (closed 1013).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Its queue went over the high-water mark of an `evict` topic.
    HighWater,
    /// The shard's share of the queue ceiling was reached; largest queues go first.
    Ceiling,
    /// Slow clients exceeded 0.5% of the shard's connections; slowest go first.
    SlowClients,
}

impl Eviction {
    /// Every reason, in counter order.
    pub const ALL: [Eviction; 3] = [
        Eviction::HighWater,
        Eviction::Ceiling,
        Eviction::SlowClients,
    ];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Eviction::HighWater => "high_water",
            Eviction::Ceiling => "ceiling",
            Eviction::SlowClients => "slow_clients",
        }
    }
}

/// Why queued messages were discarded without closing the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// `conflate`: replaced by a newer message of the same topic.
    Conflated,
    /// `drop-oldest`: beyond the newest `keep` of the topic.
    DropOldest,
}

impl Discard {
    /// Every reason, in counter order.
    pub const ALL: [Discard; 2] = [Discard::Conflated, Discard::DropOldest];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Discard::Conflated => "conflated",
            Discard::DropOldest => "drop_oldest",
        }
    }
}

impl ShardStats {
    /// Count a refusal.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Refusals for one reason.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    fn close_slot(code: u16) -> usize {
        COUNTED_CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(COUNTED_CLOSE_CODES.len())
    }

    /// Count a connection closed for a protocol error with `code`.
    pub fn protocol_error(&self, code: u16) {
        self.protocol_errors[Self::close_slot(code)].fetch_add(1, Relaxed);
    }

    /// Protocol errors with `code` (codes not in [`COUNTED_CLOSE_CODES`] share one counter).
    pub fn protocol_errors(&self, code: u16) -> u64 {
        self.protocol_errors[Self::close_slot(code)].load(Relaxed)
    }

    /// Count an eviction.
    pub fn evict(&self, why: Eviction) {
        self.evictions[why as usize].fetch_add(1, Relaxed);
    }

    /// Evictions for one reason.
    pub fn evictions(&self, why: Eviction) -> u64 {
        self.evictions[why as usize].load(Relaxed)
    }

    /// Count `n` discarded messages.
    pub fn drop_messages(&self, why: Discard, n: u64) {
        self.drops[why as usize].fetch_add(n, Relaxed);
    }

    /// Discarded messages for one reason.
    pub fn dropped(&self, why: Discard) -> u64 {
        self.drops[why as usize].load(Relaxed)
    }

    /// Count a connection reset because its close did not flush in time.
    pub fn abort(&self, why: AbortReason) {
        self.aborts[why as usize].fetch_add(1, Relaxed);
    }

    /// Resets for one reason.
    pub fn aborts(&self, why: AbortReason) -> u64 {
        self.aborts[why as usize].load(Relaxed)
    }

    /// Count a failed accept.
    pub fn accept_error(&self, why: AcceptErrorReason) {
        self.accept_errors[why as usize].fetch_add(1, Relaxed);
    }

    /// Failed accepts for one reason.
    pub fn accept_errors(&self, why: AcceptErrorReason) -> u64 {
        self.accept_errors[why as usize].load(Relaxed)
    }

    /// Record the driver this shard runs on.
    pub fn set_driver(&self, d: DriverKind) {
        self.driver.store(d as u8, Relaxed);
    }

    /// Record a tick at `now_ms` ([`monotonic_ms`]).
    pub fn tick(&self, now_ms: u64) {
        self.last_tick_ms.store(now_ms, Relaxed);
    }

    /// Copy every counter (each load is Relaxed: the copy is consistent per counter only).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            active_connections: get(&self.connections_active),
            accepted: get(&self.connections_accepted),
            refused: std::array::from_fn(|i| get(&self.refused[i])),
            messages_in: get(&self.messages_in),
            bytes_in: get(&self.bytes_in),
            messages_out: get(&self.messages_out),
            bytes_out: get(&self.bytes_out),
            ring_overflow_total: get(&self.ring_overflow_total),
            overflow_len: get(&self.overflow_len),
            protocol_errors: std::array::from_fn(|i| get(&self.protocol_errors[i])),
            last_tick_ms: get(&self.last_tick_ms),
            pings_sent_total: get(&self.pings_sent_total),
            heartbeat_timeouts_total: get(&self.heartbeat_timeouts_total),
            idle_timeouts_total: get(&self.idle_timeouts_total),
            lifetime_closes_total: get(&self.lifetime_closes_total),
            fragment_timeouts_total: get(&self.fragment_timeouts_total),
            inbound_bytes: get(&self.inbound_bytes),
            subscriptions: get(&self.subscriptions),
            topics: get(&self.topics),
            retained_bytes: get(&self.retained_bytes),
            mesh_bytes: get(&self.mesh_bytes),
            kernel_bytes: get(&self.kernel_bytes),
            mesh_stalls_total: get(&self.mesh_stalls_total),
            total_queued_bytes: get(&self.total_queued_bytes),
            queued_frames: get(&self.queued_frames),
            queue_ceiling_bytes: get(&self.queue_ceiling_bytes),
            memory_limit: get(&self.memory_limit),
            slow_clients: get(&self.slow_clients),
            paused_topics: get(&self.paused_topics),
            pauses_total: get(&self.pauses_total),
            bridge_dropped: get(&self.bridge_dropped),
            continuity: *self.continuity.lock().unwrap_or_else(|e| e.into_inner()),
            evictions: std::array::from_fn(|i| get(&self.evictions[i])),
            discarded: std::array::from_fn(|i| get(&self.drops[i])),
            aborts: std::array::from_fn(|i| get(&self.aborts[i])),
            accept_errors: std::array::from_fn(|i| get(&self.accept_errors[i])),
            access: self.access.snapshot(),
            compression: self.compression.snapshot(),
            tls: self.tls.snapshot(),
        }
    }

    /// The driver this shard runs on.
    pub fn driver(&self) -> DriverKind {
        match self.driver.load(Relaxed) {
            1 => DriverKind::Uring,
            2 => DriverKind::Epoll,
            _ => DriverKind::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_separate_and_visible_across_threads() {
        let s = std::sync::Arc::new(ShardStats::default());
        let w = s.clone();
        std::thread::spawn(move || {
            w.refuse(Refusal::NotFound);
            w.refuse(Refusal::NotFound);
            w.refuse(Refusal::TooLarge);
            w.protocol_error(1002);
            w.protocol_error(4000);
            w.protocol_error(3999);
            add(&w.messages_in, 5);
            add(&w.connections_active, 3);
            sub(&w.connections_active, 1);
            w.set_driver(DriverKind::Epoll);
        })
        .join()
        .unwrap();
        assert_eq!(s.refused(Refusal::NotFound), 2);
        assert_eq!(s.refused(Refusal::TooLarge), 1);
        assert_eq!(s.refused(Refusal::MaxConnections), 0);
        assert_eq!(s.protocol_errors(1002), 1);
        assert_eq!(s.protocol_errors(1009), 0);
        assert_eq!(s.protocol_errors(4000), 2, "uncounted codes share one slot");
        assert_eq!(get(&s.messages_in), 5);
        assert_eq!(get(&s.connections_active), 2);
        assert_eq!(s.driver().name(), "epoll");
        let snap = s.snapshot();
        assert_eq!(snap.refused[Refusal::NotFound as usize], 2);
        assert_eq!(snap.protocol_errors[COUNTED_CLOSE_CODES.len()], 2);
        assert_eq!((snap.messages_in, snap.active_connections), (5, 2));
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (code, name) in [
            (400, "bad_request"),
            (405, "method_not_allowed"),
            (426, "upgrade_required"),
            (431, "headers_too_large"),
            (501, "not_implemented"),
            (413, "too_large"),
        ] {
            assert_eq!(Refusal::for_status(code).name(), name);
        }
        for (i, r) in Eviction::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in Discard::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        s.evict(Eviction::Ceiling);
        s.drop_messages(Discard::Conflated, 3);
        assert_eq!(s.evictions(Eviction::Ceiling), 1);
        assert_eq!(s.evictions(Eviction::HighWater), 0);
        assert_eq!(s.dropped(Discard::Conflated), 3);
    }
}
