//! `/metrics`: Prometheus text exposition format 0.0.4.
//!
//! Names follow the Prometheus conventions: `shardcast_` prefix, base units in the name
//! (`_bytes`, `_seconds`), `_total` on counters, one `shard` label per series and `reason`/`code`
//! labels for breakdowns. Latencies (and eviction stalls) are histograms in seconds, queue depths
//! histograms of connection-samples (every connection once per second) by depth: cumulative
//! `_bucket{le}` counters over the fixed bounds of `promhist`, so `rate()` gives any window and
//! `sum by (le)` aggregates shards and hosts. The standard `process_*` metrics come from /proc.

use std::fmt::Write;

use crate::bridge::stats::BridgeSnapshot;
use crate::obs::admin::{ProcessReport, ShardReport};
use crate::obs::latency::LatencyKind;
use crate::obs::procstat::ProcessStats;
use crate::obs::promhist::{latency_bounds, Buckets, DEPTH_BYTES, DEPTH_MESSAGES};
use crate::obs::stats::{
    AbortReason, AcceptErrorReason, Discard, Eviction, Refusal, Snapshot, COUNTED_CLOSE_CODES,
};

/// Content-Type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (name ends in `_total`).
    Counter,
    /// Value that goes up and down.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One scalar series taken from a snapshot `S`: per shard from a [`Snapshot`], or the
/// bridge's from a [`BridgeSnapshot`].
pub struct Scalar<S = Snapshot> {
    /// Full metric name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// HELP text.
    pub help: &'static str,
    /// Reads the value.
    pub get: fn(&S) -> u64,
}

/// Every per-shard scalar; a new [`Snapshot`] field gets one entry here.
pub const SCALARS: &[Scalar] = &[
    Scalar {
        name: "shardcast_connections_active",
        kind: Kind::Gauge,
        help: "Connections currently open (upgraded or in handshake).",
        get: |s| s.active_connections,
    },
    Scalar {
        name: "shardcast_connections_accepted_total",
        kind: Kind::Counter,
        help: "Connections accepted.",
        get: |s| s.accepted,
    },
    Scalar {
        name: "shardcast_connections_closed_total",
        kind: Kind::Counter,
        help: "Connections accepted and since closed (refused ones included); churn = rate(accepted) + rate(closed).",
        get: crate::obs::admin::connections_closed,
    },
    Scalar {
        name: "shardcast_messages_received_total",
        kind: Kind::Counter,
        help: "Messages received from clients (WebSocket and HTTP publish).",
        get: |s| s.messages_in,
    },
    Scalar {
        name: "shardcast_received_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes received from clients.",
        get: |s| s.bytes_in,
    },
    Scalar {
        name: "shardcast_messages_queued_total",
        kind: Kind::Counter,
        help: "Frames queued to clients.",
        get: |s| s.messages_out,
    },
    Scalar {
        name: "shardcast_sent_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to client sockets.",
        get: |s| s.bytes_out,
    },
    Scalar {
        name: "shardcast_ring_overflow_total",
        kind: Kind::Counter,
        help: "Envelopes that found an inter-shard ring full and spilled to the overflow queue.",
        get: |s| s.ring_overflow_total,
    },
    Scalar {
        name: "shardcast_ring_overflow_pending",
        kind: Kind::Gauge,
        help: "Envelopes waiting in inter-shard overflow queues.",
        get: |s| s.overflow_len,
    },
    Scalar {
        name: "shardcast_pings_sent_total",
        kind: Kind::Counter,
        help: "Pings sent by the heartbeat sweep.",
        get: |s| s.pings_sent_total,
    },
    Scalar {
        name: "shardcast_heartbeat_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed because no frame answered a ping within pong_timeout_ms.",
        get: |s| s.heartbeat_timeouts_total,
    },
    Scalar {
        name: "shardcast_idle_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed by idle_timeout_ms.",
        get: |s| s.idle_timeouts_total,
    },
    Scalar {
        name: "shardcast_lifetime_closes_total",
        kind: Kind::Counter,
        help: "Connections closed at the end of max_lifetime_ms.",
        get: |s| s.lifetime_closes_total,
    },
    Scalar {
        name: "shardcast_queue_retained_bytes",
        kind: Kind::Gauge,
        help: "Bytes charged to the shard's ceiling share: queued frames (each shared frame once, plus queue slots), kernel send buffers of live connections, plus shardcast_mesh_bytes.",
        get: |s| s.retained_bytes,
    },
    Scalar {
        name: "shardcast_mesh_bytes",
        kind: Kind::Gauge,
        help: "Bytes the shard keeps alive in the inter-shard rings and overflow until other shards consume them (each broadcast once).",
        get: |s| s.mesh_bytes,
    },
    Scalar {
        name: "shardcast_fragment_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed 1008 for leaving a message or frame unfinished for fragment_timeout_ms.",
        get: |s| s.fragment_timeouts_total,
    },
    Scalar {
        name: "shardcast_inbound_bytes",
        kind: Kind::Gauge,
        help: "Bytes held for clients' unfinished input: partial frames, fragmented messages, HTTP publish bodies (charged to the ceiling).",
        get: |s| s.inbound_bytes,
    },
    Scalar {
        name: "shardcast_subscriptions",
        kind: Kind::Gauge,
        help: "Subscriptions (connection x topic) on the shard, limited by max_subscriptions.",
        get: |s| s.subscriptions,
    },
    Scalar {
        name: "shardcast_topics",
        kind: Kind::Gauge,
        help: "Topics with at least one subscriber on the shard.",
        get: |s| s.topics,
    },
    Scalar {
        name: "shardcast_kernel_send_bytes",
        kind: Kind::Gauge,
        help: "Kernel memory held by unsent data of the shard's sockets (SO_MEMINFO wmem_queued, sampled while a socket is full); live connections' part is charged to the ceiling.",
        get: |s| s.kernel_bytes,
    },
    Scalar {
        name: "shardcast_mesh_stalls_total",
        kind: Kind::Counter,
        help: "WebSocket publishers stopped because the shard's mesh backlog was over its share of the ceiling.",
        get: |s| s.mesh_stalls_total,
    },
    Scalar {
        name: "shardcast_queue_unsent_bytes",
        kind: Kind::Gauge,
        help: "Logical unsent bytes summed over the shard's connection queues.",
        get: |s| s.total_queued_bytes,
    },
    Scalar {
        name: "shardcast_queue_entries",
        kind: Kind::Gauge,
        help: "Queue entries summed over the shard's connection queues.",
        get: |s| s.queued_frames,
    },
    Scalar {
        name: "shardcast_queue_ceiling_bytes",
        kind: Kind::Gauge,
        help: "The shard's share of the queue memory ceiling.",
        get: |s| s.queue_ceiling_bytes,
    },
    Scalar {
        name: "shardcast_memory_limit_bytes",
        kind: Kind::Gauge,
        help: "Memory limit the queue ceiling derives from (cgroup, MemTotal or configured).",
        get: |s| s.memory_limit,
    },
    Scalar {
        // /stats calls it slow_client_count; Prometheus keeps the `_count` suffix for
        // histograms and summaries (promtool refuses it on a gauge).
        name: "shardcast_slow_clients",
        kind: Kind::Gauge,
        help: "Connections whose queue is above its high-water mark (until back below low water); slow_client_count in /stats.",
        get: |s| s.slow_clients,
    },
    Scalar {
        name: "shardcast_paused_topics",
        kind: Kind::Gauge,
        help: "Topics paused (pause policy) as seen by the shard.",
        get: |s| s.paused_topics,
    },
    Scalar {
        name: "shardcast_pauses_total",
        kind: Kind::Counter,
        help: "Times a subscriber on the shard paused a topic.",
        get: |s| s.pauses_total,
    },
    Scalar {
        name: "shardcast_bridge_ring_dropped_total",
        kind: Kind::Counter,
        help: "Local publishes the shard did not hand to the NATS bridge: its ring and overflow were full.",
        get: |s| s.bridge_dropped,
    },
    Scalar {
        name: "shardcast_compression_connections",
        kind: Kind::Gauge,
        help: "Open connections that negotiated permessage-deflate.",
        get: |s| s.compression.connections,
    },
    Scalar {
        name: "shardcast_compression_topics",
        kind: Kind::Gauge,
        help: "Topics the shard builds compressed variants for: some compressing connection of the process reads them.",
        get: |s| s.compression.topics,
    },
    Scalar {
        name: "shardcast_compressed_messages_total",
        kind: Kind::Counter,
        help: "Payloads compressed by the shard: once per published message and wire variant, for every compressing connection of every shard.",
        get: |s| s.compression.compressed_messages,
    },
    Scalar {
        name: "shardcast_incompressible_messages_total",
        kind: Kind::Counter,
        help: "Compressions that did not shrink the payload (the plain frame was sent).",
        get: |s| s.compression.incompressible_messages,
    },
    Scalar {
        name: "shardcast_compression_input_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes of the compressed messages before compression.",
        get: |s| s.compression.bytes_before,
    },
    Scalar {
        name: "shardcast_compression_output_bytes_total",
        kind: Kind::Counter,
        help: "The same payloads after compression.",
        get: |s| s.compression.bytes_after,
    },
    Scalar {
        name: "shardcast_compressed_deliveries_total",
        kind: Kind::Counter,
        help: "Compressed frames queued to connections (one per delivery).",
        get: |s| s.compression.compressed_deliveries,
    },
    Scalar {
        name: "shardcast_compression_saved_bytes_total",
        kind: Kind::Counter,
        help: "Bytes the compressed deliveries saved against the plain frames.",
        get: |s| s.compression.bytes_saved,
    },
    Scalar {
        name: "shardcast_inflated_messages_total",
        kind: Kind::Counter,
        help: "Compressed messages received from clients and inflated.",
        get: |s| s.compression.inflated_messages,
    },
    Scalar {
        name: "shardcast_inflated_bytes_total",
        kind: Kind::Counter,
        help: "Bytes those messages inflated to.",
        get: |s| s.compression.inflated_bytes_out,
    },
    // Continuity (docs/CONTINUITY.md, "History").
    Scalar {
        name: "shardcast_history_bytes",
        kind: Kind::Gauge,
        help: "Bytes the shard's topic history holds (charged to its ceiling share).",
        get: |s| s.continuity.history_bytes,
    },
    Scalar {
        name: "shardcast_history_messages",
        kind: Kind::Gauge,
        help: "Messages kept in the shard's topic history.",
        get: |s| s.continuity.history_messages,
    },
    Scalar {
        name: "shardcast_sequence_stamped_total",
        kind: Kind::Counter,
        help: "Messages numbered by this shard as the home shard of their topic.",
        get: |s| s.continuity.counters.stamped,
    },
    Scalar {
        name: "shardcast_resume_asks_total",
        kind: Kind::Counter,
        help: "Sequenced subscriptions (fresh or resuming) answered by this shard.",
        get: |s| s.continuity.counters.asks,
    },
    Scalar {
        name: "shardcast_resume_resyncs_total",
        kind: Kind::Counter,
        help: "Resumes answered with a resync notice (history did not cover them).",
        get: |s| s.continuity.counters.resyncs,
    },
    Scalar {
        name: "shardcast_resume_replayed_total",
        kind: Kind::Counter,
        help: "Messages handed out from history for replay.",
        get: |s| s.continuity.counters.replayed,
    },
];

/// A per-shard gauge that is a ratio or a rate, computed from a whole [`ShardReport`].
pub struct Ratio {
    /// Full metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Reads the value.
    pub get: fn(&ShardReport) -> f64,
}

/// Every per-shard ratio and rate.
pub const RATIOS: &[Ratio] = &[
    Ratio {
        name: "shardcast_buffer_fill_ratio",
        help: "Queued frames and mesh backlog over the shard's share of the queue ceiling (1 = evictions start).",
        get: ShardReport::buffer_fill_ratio,
    },
    Ratio {
        name: "shardcast_connection_churn_per_second",
        help: "Connections accepted + closed per second over the last 10 s.",
        get: |r| r.churn_per_second,
    },
];

/// The NATS bridge's series (process-wide, no `shard` label); present only with `--nats-url`.
pub const BRIDGE_SCALARS: &[Scalar<BridgeSnapshot>] = &[
    Scalar {
        name: "shardcast_bridge_up",
        kind: Kind::Gauge,
        help: "1 while the NATS bridge is connected, else 0.",
        get: |s| s.up,
    },
    Scalar {
        name: "shardcast_bridge_down_seconds",
        kind: Kind::Gauge,
        help: "How long the NATS bridge has not been connected (0 while up).",
        get: |s| s.down_ms / 1000,
    },
    Scalar {
        name: "shardcast_bridge_messages_out_total",
        kind: Kind::Counter,
        help: "Local publishes handed to NATS.",
        get: |s| s.messages_out,
    },
    Scalar {
        name: "shardcast_bridge_messages_in_total",
        kind: Kind::Counter,
        help: "Messages from NATS delivered to the shards (once per message).",
        get: |s| s.messages_in,
    },
    Scalar {
        name: "shardcast_bridge_out_dropped_total",
        kind: Kind::Counter,
        help: "Local publishes not forwarded to NATS: buffer full while NATS was slow or down.",
        get: |s| s.out_dropped,
    },
    Scalar {
        name: "shardcast_bridge_out_buffered_bytes",
        kind: Kind::Gauge,
        help: "Bytes of local publishes waiting for NATS (payload + 64 per message).",
        get: |s| s.out_buffered_bytes,
    },
    Scalar {
        name: "shardcast_bridge_slow_consumer_drops_total",
        kind: Kind::Counter,
        help: "Messages the NATS client dropped because the shards could not take them (slow consumer).",
        get: |s| s.slow_consumer_drops,
    },
    Scalar {
        name: "shardcast_bridge_reconnects_total",
        kind: Kind::Counter,
        help: "Connections to NATS re-established after the first.",
        get: |s| s.reconnects,
    },
    Scalar {
        name: "shardcast_bridge_connect_failures_total",
        kind: Kind::Counter,
        help: "Rounds of connection attempts to NATS that failed (each retried with backoff; logged once per outage).",
        get: |s| s.connect_failures,
    },
    Scalar {
        name: "shardcast_bridge_subscriptions",
        kind: Kind::Gauge,
        help: "NATS subjects subscribed (one per topic with subscribers on this host).",
        get: |s| s.subscriptions,
    },
    Scalar {
        name: "shardcast_bridge_own_ignored_total",
        kind: Kind::Counter,
        help: "This host's own messages that came back from NATS and were ignored.",
        get: |s| s.own_ignored,
    },
    Scalar {
        name: "shardcast_bridge_in_invalid_total",
        kind: Kind::Counter,
        help: "Messages from NATS dropped as invalid (text not UTF-8, unknown kind).",
        get: |s| s.in_invalid,
    },
    Scalar {
        name: "shardcast_bridge_in_stalls_total",
        kind: Kind::Counter,
        help: "Times the bridge stopped pulling from NATS because a shard could not take more.",
        get: |s| s.in_stalls,
    },
    Scalar {
        name: "shardcast_bridge_compressed_messages_total",
        kind: Kind::Counter,
        help: "Messages from NATS compressed by the bridge, once for every shard (permessage-deflate).",
        get: |s| s.compression.compressed_messages,
    },
    Scalar {
        name: "shardcast_bridge_compression_input_bytes_total",
        kind: Kind::Counter,
        help: "Payload bytes of those messages before compression.",
        get: |s| s.compression.bytes_before,
    },
    Scalar {
        name: "shardcast_bridge_compression_output_bytes_total",
        kind: Kind::Counter,
        help: "The same payloads after compression.",
        get: |s| s.compression.bytes_after,
    },
    Scalar {
        name: "shardcast_bridge_deep_stream_ready",
        kind: Kind::Gauge,
        help: "1 once the JetStream stream for deep history exists (--nats-jetstream), else 0.",
        get: |s| s.deep_stream_ready,
    },
    Scalar {
        name: "shardcast_bridge_deep_fetches_total",
        kind: Kind::Counter,
        help: "Deep-history fetches from JetStream answered (one replay chunk each at most).",
        get: |s| s.deep_fetches,
    },
    Scalar {
        name: "shardcast_bridge_deep_messages_total",
        kind: Kind::Counter,
        help: "Messages deep-history fetches returned.",
        get: |s| s.deep_messages,
    },
    Scalar {
        name: "shardcast_bridge_deep_lookups_total",
        kind: Kind::Counter,
        help: "Lookups of a topic's last numbering in the JetStream stream answered (a host that had received nothing of a topic adopts its origin's numbering from there).",
        get: |s| s.deep_lookups,
    },
    Scalar {
        name: "shardcast_bridge_deep_short_total",
        kind: Kind::Counter,
        help: "Deep-history fetches that did not find the first number asked for (trimmed by the stream's retention): the client is told trimmed.",
        get: |s| s.deep_short,
    },
    Scalar {
        name: "shardcast_bridge_deep_timeouts_total",
        kind: Kind::Counter,
        help: "Deep-history fetches that failed: JetStream did not answer within nats_jetstream_timeout_ms (client told trimmed).",
        get: |s| s.deep_timeouts,
    },
    Scalar {
        name: "shardcast_bridge_deep_unavailable_total",
        kind: Kind::Counter,
        help: "Deep-history fetches that failed: no JetStream, no stream, or an error from it (client told trimmed).",
        get: |s| s.deep_unavailable,
    },
];

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter family with a `reason` label: one series per shard and reason, `get(snapshot, i)`
/// reading the count of `reasons[i]`.
fn by_reason(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[ShardReport],
    reasons: &[&str],
    get: impl Fn(&Snapshot, usize) -> u64,
) {
    family(out, name, "counter", help);
    for (i, r) in shards.iter().enumerate() {
        for (j, why) in reasons.iter().enumerate() {
            let n = get(&r.snap, j);
            let _ = writeln!(out, "{name}{{shard=\"{i}\",reason=\"{why}\"}} {n}");
        }
    }
}

/// Render every family (the bridge's only when it is on).
pub fn render(
    shards: &[ShardReport],
    process: &ProcessReport,
    bridge: Option<&BridgeSnapshot>,
) -> String {
    let mut out = String::with_capacity(4096 + shards.len() * 2048);
    family(
        &mut out,
        "shardcast_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(out, "shardcast_uptime_seconds {}", process.uptime_seconds);
    if let Some(p) = &process.process {
        process_families(&mut out, p);
    }
    family(
        &mut out,
        "shardcast_shard_info",
        "gauge",
        "Always 1; the driver label names the shard's I/O driver.",
    );
    for (i, r) in shards.iter().enumerate() {
        let driver = r.driver.name();
        let _ = writeln!(
            out,
            "shardcast_shard_info{{shard=\"{i}\",driver=\"{driver}\"}} 1"
        );
    }
    for g in RATIOS {
        family(&mut out, g.name, "gauge", g.help);
        for (i, r) in shards.iter().enumerate() {
            let _ = writeln!(out, "{}{{shard=\"{i}\"}} {}", g.name, (g.get)(r));
        }
    }
    family(
        &mut out,
        "shardcast_shard_tick_age_seconds",
        "gauge",
        "Time since the shard's loop last ran its 100 ms tick (high means stalled).",
    );
    for (i, r) in shards.iter().enumerate() {
        let age = r.tick_age_ms as f64 / 1000.0;
        let _ = writeln!(
            out,
            "shardcast_shard_tick_age_seconds{{shard=\"{i}\"}} {age}"
        );
    }
    for m in SCALARS {
        family(&mut out, m.name, m.kind.name(), m.help);
        for (i, r) in shards.iter().enumerate() {
            let _ = writeln!(out, "{}{{shard=\"{i}\"}} {}", m.name, (m.get)(&r.snap));
        }
    }
    family(
        &mut out,
        "shardcast_compression_seconds_total",
        "counter",
        "Time the shard spent compressing.",
    );
    for (i, r) in shards.iter().enumerate() {
        let secs = r.snap.compression.compress_ns as f64 / 1e9;
        let _ = writeln!(
            out,
            "shardcast_compression_seconds_total{{shard=\"{i}\"}} {secs}"
        );
    }
    if let Some(b) = bridge {
        for m in BRIDGE_SCALARS {
            family(&mut out, m.name, m.kind.name(), m.help);
            let _ = writeln!(out, "{} {}", m.name, (m.get)(b));
        }
    }
    by_reason(
        &mut out,
        "shardcast_connections_refused_total",
        "Connections or requests refused, by reason.",
        shards,
        &Refusal::ALL.map(Refusal::name),
        |s, i| s.refused[i],
    );
    crate::access::stats::render_metrics(&mut out, shards.iter().map(|r| &r.snap.access));
    family(
        &mut out,
        "shardcast_protocol_errors_total",
        "counter",
        "Connections closed for a protocol error, by close code (other: any other code).",
    );
    for (i, r) in shards.iter().enumerate() {
        let codes = COUNTED_CLOSE_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(["other".to_owned()]);
        for (code, n) in codes.zip(r.snap.protocol_errors) {
            let _ = writeln!(
                out,
                "shardcast_protocol_errors_total{{shard=\"{i}\",code=\"{code}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "shardcast_evictions_total",
        "counter",
        "Connections closed 1013 by back-pressure, by reason (and policy).",
    );
    for (i, r) in shards.iter().enumerate() {
        for why in Eviction::ALL {
            let policy = match why {
                Eviction::HighWater => "evict",
                Eviction::Ceiling | Eviction::SlowClients => "any",
            };
            let _ = writeln!(
                out,
                "shardcast_evictions_total{{shard=\"{i}\",reason=\"{}\",policy=\"{policy}\"}} {}",
                why.name(),
                r.snap.evictions[why as usize]
            );
        }
    }
    family(
        &mut out,
        "shardcast_messages_discarded_total",
        "counter",
        "Queued messages discarded by back-pressure, by reason (and policy).",
    );
    for (i, r) in shards.iter().enumerate() {
        for why in Discard::ALL {
            let policy = match why {
                Discard::Conflated => "conflate",
                Discard::DropOldest => "drop-oldest",
            };
            let _ = writeln!(
                out,
                "shardcast_messages_discarded_total{{shard=\"{i}\",reason=\"{}\",policy=\"{policy}\"}} {}",
                why.name(),
                r.snap.discarded[why as usize]
            );
        }
    }
    by_reason(
        &mut out,
        "shardcast_aborts_total",
        "Connections reset (RST) because their close frame was not flushed in time, by reason.",
        shards,
        &AbortReason::ALL.map(AbortReason::name),
        |s, i| s.aborts[i],
    );
    by_reason(
        &mut out,
        "shardcast_accept_errors_total",
        "Failed accepts, by reason (emfile, enfile: out of descriptors; memory; other).",
        shards,
        &AcceptErrorReason::ALL.map(AcceptErrorReason::name),
        |s, i| s.accept_errors[i],
    );
    crate::tls::stats::render_metrics(
        &mut out,
        shards.iter().map(|r| &r.snap.tls),
        process.tls_reloads.as_ref(),
    );
    for kind in LatencyKind::ALL {
        let (name, help) = match kind {
            LatencyKind::Handshake => (
                "shardcast_handshake_latency_seconds",
                "Accept to 101 written, since start.",
            ),
            LatencyKind::RingTransit => (
                "shardcast_ring_transit_latency_seconds",
                "Publish to drained by the receiving shard's ring consumer, since start.",
            ),
            LatencyKind::Broadcast => (
                "shardcast_broadcast_latency_seconds",
                "Publish accepted to the frame fully written to a subscriber's socket, per delivery, since start.",
            ),
            LatencyKind::EvictionStall => (
                "shardcast_eviction_stall_seconds",
                "Time an evicted connection had gone without write progress, per eviction, since start.",
            ),
        };
        let bounds = latency_bounds(kind);
        histogram(&mut out, name, help, shards, bounds, 1e6, |r| {
            &r.latency_buckets[kind as usize]
        });
    }
    histogram(
        &mut out,
        "shardcast_queue_depth_messages",
        "Queued messages per connection, every connection sampled once per second since start (rate() over a window: the depth distribution over that window).",
        shards,
        DEPTH_MESSAGES,
        1.0,
        |r| &r.depth_buckets[0],
    );
    histogram(
        &mut out,
        "shardcast_queue_depth_bytes",
        "Unsent bytes per connection, every connection sampled once per second since start (rate() over a window: the depth distribution over that window).",
        shards,
        DEPTH_BYTES,
        1.0,
        |r| &r.depth_buckets[1],
    );
    out
}

/// One histogram family, one series set per shard: `bounds` in the buckets' unit, `per_unit`
/// of which make the family's unit (µs per second: 1e6). Dividing by an exact power of ten
/// prints round bounds as such (`0.000025`, not `2.4999999999999998e-5`).
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[ShardReport],
    bounds: &[u64],
    per_unit: f64,
    get: impl Fn(&ShardReport) -> &Buckets,
) {
    family(out, name, "histogram", help);
    for (i, r) in shards.iter().enumerate() {
        let b = get(r);
        for (bound, n) in bounds.iter().zip(&b.le) {
            let le = *bound as f64 / per_unit;
            let _ = writeln!(out, "{name}_bucket{{shard=\"{i}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {}",
            b.count
        );
        let _ = writeln!(out, "{name}_sum{{shard=\"{i}\"}} {}", b.sum / per_unit);
        let _ = writeln!(out, "{name}_count{{shard=\"{i}\"}} {}", b.count);
    }
}

/// The standard `process_*` families (the names every Prometheus client library uses).
fn process_families(out: &mut String, p: &ProcessStats) {
    let rows = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            Some(p.cpu_seconds.to_string()),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            Some(p.resident_bytes.to_string()),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            Some(p.virtual_bytes.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            Some(p.start_time_seconds.to_string()),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            Some(p.threads.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|n| n.to_string()),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds.map(|n| n.to_string()),
        ),
    ];
    for (name, kind, help, value) in rows {
        if let Some(value) = value {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::depth::DepthSummary;
    use crate::obs::latency::Summary;
    use crate::obs::stats::DriverKind;

    fn report() -> ShardReport {
        let snap = Snapshot {
            messages_in: 7,
            accepted: 10,
            active_connections: 4,
            retained_bytes: 250,
            queue_ceiling_bytes: 1000,
            ..Snapshot::default()
        };
        let mut broadcast = crate::obs::latency::new_histogram(LatencyKind::Broadcast);
        broadcast.record_n(20, 3).unwrap();
        broadcast.record(2_000).unwrap();
        let mut depth = crate::obs::depth::DepthSample::default();
        depth.record(0, 0);
        depth.record(5, 3000);
        ShardReport {
            snap,
            driver: DriverKind::Epoll,
            latency: [Summary::default(); crate::obs::latency::KINDS],
            depth: DepthSummary::default(),
            latency_buckets: LatencyKind::ALL.map(|k| {
                let h = if k == LatencyKind::Broadcast {
                    broadcast.clone()
                } else {
                    crate::obs::latency::new_histogram(k)
                };
                Buckets::of(&h, latency_bounds(k))
            }),
            depth_buckets: [
                Buckets::of(&depth.frames, DEPTH_MESSAGES),
                Buckets::of(&depth.bytes, DEPTH_BYTES),
            ],
            churn_per_second: 1.5,
            tick_age_ms: 50,
        }
    }

    #[test]
    fn families_are_declared_and_counters_end_in_total() {
        let bridge = crate::bridge::stats::BridgeStats::new();
        crate::obs::stats::add(&bridge.messages_in, 3);
        let text = render(
            &[report()],
            &ProcessReport {
                rss_bytes: Some(4096),
                uptime_seconds: 1.5,
                process: crate::obs::procstat::read(),
                tls_reloads: None,
            },
            Some(&bridge.snapshot(crate::obs::stats::monotonic_ms())),
        );
        for line in [
            "shardcast_messages_received_total{shard=\"0\"} 7",
            "shardcast_connections_closed_total{shard=\"0\"} 6",
            "shardcast_buffer_fill_ratio{shard=\"0\"} 0.25",
            "shardcast_connection_churn_per_second{shard=\"0\"} 1.5",
            "shardcast_slow_clients{shard=\"0\"} 0",
            "shardcast_bridge_messages_in_total 3",
            "shardcast_bridge_up 0",
            "shardcast_shard_tick_age_seconds{shard=\"0\"} 0.05",
            "# TYPE shardcast_broadcast_latency_seconds histogram",
            "shardcast_broadcast_latency_seconds_bucket{shard=\"0\",le=\"0.00001\"} 0",
            "shardcast_broadcast_latency_seconds_bucket{shard=\"0\",le=\"0.000025\"} 3",
            "shardcast_broadcast_latency_seconds_bucket{shard=\"0\",le=\"0.0025\"} 4",
            "shardcast_broadcast_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 4",
            "shardcast_broadcast_latency_seconds_count{shard=\"0\"} 4",
            "shardcast_eviction_stall_seconds_count{shard=\"0\"} 0",
            "# TYPE shardcast_queue_depth_messages histogram",
            "shardcast_queue_depth_messages_bucket{shard=\"0\",le=\"0\"} 1",
            "shardcast_queue_depth_messages_bucket{shard=\"0\",le=\"4\"} 1",
            "shardcast_queue_depth_messages_bucket{shard=\"0\",le=\"8\"} 2",
            "shardcast_queue_depth_bytes_sum{shard=\"0\"} 3000",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("shardcast_broadcast_latency_seconds_sum{shard=\"0\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 0.00206).abs() < 0.00206 * 0.01, "{sum}");
        assert!(text.contains(
            "shardcast_tls_handshake_failures_total{shard=\"0\",reason=\"bad_record\"} 0\n"
        ));
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} lacks HELP"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert_ne!(kind, "summary", "no summaries: {line}");
        }
    }
}
