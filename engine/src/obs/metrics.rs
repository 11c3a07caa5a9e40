//! `/metrics`: Prometheus text exposition format 0.0.4.
//!
//! Names follow the Prometheus conventions: `shardcast_` prefix, base units in the name
//! (`_bytes`, `_seconds`), `_total` on counters, one `shard` label per series and `reason`/`code`
//! labels for breakdowns. Latencies (and eviction stalls) are summaries in seconds with
//! `quantile` labels 0.5, 0.9, 0.99, 0.999 and 1 (the maximum), cumulative since start. Queue
//! depths are summaries of the latest once-per-second sample of every connection, with quantiles
//! 0.5, 0.95, 0.99 and 1.

use std::fmt::Write;

use crate::bridge::stats::BridgeSnapshot;
use crate::obs::admin::{ProcessReport, ShardReport};
use crate::obs::depth::{DepthSummary, QUANTILES as DEPTH_QUANTILES};
use crate::obs::latency::LatencyKind;
use crate::obs::stats::{Discard, Eviction, Refusal, Snapshot, COUNTED_CLOSE_CODES};

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
        help: "Bytes charged to the shard's ceiling share: queued frames (each shared frame once, plus queue slots) plus shardcast_mesh_bytes.",
        get: |s| s.retained_bytes,
    },
    Scalar {
        name: "shardcast_mesh_bytes",
        kind: Kind::Gauge,
        help: "Bytes the shard keeps alive in the inter-shard rings and overflow until other shards consume them (each broadcast once).",
        get: |s| s.mesh_bytes,
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
        name: "shardcast_slow_clients",
        kind: Kind::Gauge,
        help: "Connections whose queue is above its high-water mark.",
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
];

/// One queue depth series of a [`DepthSummary`]: (values at the quantiles, max, sum).
type DepthSeries = fn(&DepthSummary) -> ([u64; 3], u64, f64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
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
    if let Some(rss) = process.rss_bytes {
        family(
            &mut out,
            "shardcast_resident_memory_bytes",
            "gauge",
            "Resident set size of the process (VmRSS).",
        );
        let _ = writeln!(out, "shardcast_resident_memory_bytes {rss}");
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
    if let Some(b) = bridge {
        for m in BRIDGE_SCALARS {
            family(&mut out, m.name, m.kind.name(), m.help);
            let _ = writeln!(out, "{} {}", m.name, (m.get)(b));
        }
    }
    family(
        &mut out,
        "shardcast_connections_refused_total",
        "counter",
        "Connections or requests refused, by reason.",
    );
    for (i, r) in shards.iter().enumerate() {
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "shardcast_connections_refused_total{{shard=\"{i}\",reason=\"{}\"}} {}",
                why.name(),
                r.snap.refused[why as usize]
            );
        }
    }
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
    for kind in LatencyKind::ALL {
        let (name, help) = match kind {
            LatencyKind::Handshake => (
                "shardcast_handshake_latency_seconds",
                "Accept to 101 written, since start (quantile 1 = max).",
            ),
            LatencyKind::RingTransit => (
                "shardcast_ring_transit_latency_seconds",
                "Publish to drained by the receiving shard's ring consumer, since start (quantile 1 = max).",
            ),
            LatencyKind::Broadcast => (
                "shardcast_broadcast_latency_seconds",
                "Publish accepted to the frame fully written to a subscriber's socket, per delivery, since start (quantile 1 = max).",
            ),
            LatencyKind::EvictionStall => (
                "shardcast_eviction_stall_seconds",
                "Time an evicted connection had gone without write progress, per eviction, since start (quantile 1 = max).",
            ),
        };
        family(&mut out, name, "summary", help);
        for (i, r) in shards.iter().enumerate() {
            let s = &r.latency[kind as usize];
            for (q, us) in s.quantiles() {
                let secs = us as f64 / 1e6;
                let _ = writeln!(out, "{name}{{shard=\"{i}\",quantile=\"{q}\"}} {secs}");
            }
            // hdrhistogram keeps no exact sum; mean × count is exact to the histogram's 1%.
            let sum = s.mean * s.count as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{shard=\"{i}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{shard=\"{i}\"}} {}", s.count);
        }
    }
    let depth_families: [(&str, &str, DepthSeries); 2] = [
        (
            "shardcast_queue_depth_messages",
            "Queued messages per connection, latest once-per-second sample of every connection (quantile 1 = max; _sum = all queued).",
            |d| (d.frames, d.max_frames, d.sum_frames),
        ),
        (
            "shardcast_queue_depth_bytes",
            "Unsent bytes per connection, latest once-per-second sample of every connection (quantile 1 = max; _sum = all unsent).",
            |d| (d.bytes, d.max_bytes, d.sum_bytes),
        ),
    ];
    for (name, help, get) in depth_families {
        family(&mut out, name, "summary", help);
        for (i, r) in shards.iter().enumerate() {
            let (at, max, sum) = get(&r.depth);
            for ((_, q), v) in DEPTH_QUANTILES.iter().zip(at) {
                let _ = writeln!(out, "{name}{{shard=\"{i}\",quantile=\"{q}\"}} {v}");
            }
            let _ = writeln!(out, "{name}{{shard=\"{i}\",quantile=\"1\"}} {max}");
            let _ = writeln!(out, "{name}_sum{{shard=\"{i}\"}} {}", sum.round());
            let _ = writeln!(out, "{name}_count{{shard=\"{i}\"}} {}", r.depth.connections);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::latency::Summary;
    use crate::obs::stats::DriverKind;

    #[test]
    fn families_are_declared_and_counters_end_in_total() {
        let snap = Snapshot {
            messages_in: 7,
            ..Snapshot::default()
        };
        let report = ShardReport {
            snap,
            driver: DriverKind::Epoll,
            latency: [Summary::default(); crate::obs::latency::KINDS],
            depth: DepthSummary {
                connections: 3,
                frames: [0, 1, 5],
                max_frames: 9,
                ..DepthSummary::default()
            },
            tick_age_ms: 50,
        };
        let bridge = crate::bridge::stats::BridgeStats::new();
        crate::obs::stats::add(&bridge.messages_in, 3);
        let text = render(
            &[report],
            &ProcessReport {
                rss_bytes: Some(4096),
                uptime_seconds: 1.5,
            },
            Some(&bridge.snapshot(crate::obs::stats::monotonic_ms())),
        );
        assert!(text.contains("shardcast_messages_received_total{shard=\"0\"} 7\n"));
        assert!(text.contains("shardcast_bridge_messages_in_total 3\n"));
        assert!(text.contains("shardcast_bridge_up 0\n"));
        assert!(text.contains("shardcast_shard_tick_age_seconds{shard=\"0\"} 0.05\n"));
        assert!(text.contains("shardcast_queue_depth_messages{shard=\"0\",quantile=\"0.99\"} 5\n"));
        assert!(text.contains("shardcast_queue_depth_messages{shard=\"0\",quantile=\"1\"} 9\n"));
        assert!(text.contains("shardcast_queue_depth_messages_count{shard=\"0\"} 3\n"));
        assert!(text.contains("shardcast_broadcast_latency_seconds_count{shard=\"0\"} 0\n"));
        assert!(text.contains("# TYPE shardcast_eviction_stall_seconds summary\n"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} lacks HELP"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }
}
