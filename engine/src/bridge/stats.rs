//! The bridge's counters: written by the bridge thread only, read by the admin thread.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;

use crate::obs::stats::{get, monotonic_ms};

/// The bridge's connection to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Never connected yet (first attempts under way).
    Connecting = 0,
    /// Connected.
    Up = 1,
    /// Was connected, lost it; reconnecting with backoff.
    Down = 2,
}

impl LinkState {
    /// Name for /stats and /health.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// Counters of the bridge (one writer: the bridge thread; Relaxed is enough).
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// This process's origin id (the `Shardcast-Origin` header of what it publishes).
    origin: OnceLock<String>,
    state: AtomicU8,
    /// [`monotonic_ms`] when the link was last seen not up (start, or the last disconnect).
    not_up_since_ms: AtomicU64,
    /// Local publishes handed to the NATS client.
    pub messages_out: AtomicU64,
    /// Messages from NATS handed to the shards (once per message, whatever the shard count).
    pub messages_in: AtomicU64,
    /// Local publishes not forwarded: the outbound buffer was full (NATS slow or down).
    pub out_dropped: AtomicU64,
    /// Bytes charged for local publishes waiting for the NATS client.
    pub out_buffered_bytes: AtomicU64,
    /// Messages the NATS client dropped because the bridge was not pulling (slow consumer).
    pub slow_consumer_drops: AtomicU64,
    /// Connections to NATS re-established after the first.
    pub reconnects: AtomicU64,
    /// Rounds of connection attempts that failed (the client then retries with backoff).
    pub connect_failures: AtomicU64,
    /// Topics whose subject is subscribed (the subscription was sent and the server answered
    /// a flush after it, or the client re-sends it on reconnect).
    pub subscriptions: AtomicU64,
    /// Topics some shard has subscribers for.
    pub interested_topics: AtomicU64,
    /// Own messages that came back from NATS and were ignored.
    pub own_ignored: AtomicU64,
    /// Messages from NATS dropped as invalid (text that is not UTF-8, unknown kind).
    pub in_invalid: AtomicU64,
    /// Times the bridge stopped pulling from NATS because a shard could not take more (ring
    /// full or queue memory above the overload mark).
    pub in_stalls: AtomicU64,
    /// Messages from NATS compressed here, once for every shard (permessage-deflate).
    pub compression: crate::obs::compression::CompressionStats,
    /// Deep history (`--nats-jetstream`): the stream exists (found or created) as of the last
    /// check.
    pub deep_stream_ready: AtomicU64,
    /// Deep-history fetches answered (each a replay chunk's worth at most).
    pub deep_fetches: AtomicU64,
    /// Messages those fetches returned.
    pub deep_messages: AtomicU64,
    /// Lookups of a topic's last numbering in the stream (a host that had not received the
    /// topic adopts it) answered.
    pub deep_lookups: AtomicU64,
    /// Fetches that did not find the first number asked for (the stream's retention trimmed
    /// it, or it never reached the stream): the client is told `trimmed`.
    pub deep_short: AtomicU64,
    /// Fetches that failed because JetStream did not answer in time (`trimmed` too).
    pub deep_timeouts: AtomicU64,
    /// Fetches that failed because JetStream or the stream is missing or answered an error.
    pub deep_unavailable: AtomicU64,
}

/// A copy of the bridge's counters for /stats, /metrics and /health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BridgeSnapshot {
    /// Connection state.
    #[serde(serialize_with = "state_name")]
    pub state: LinkState,
    /// 1 while connected.
    pub up: u64,
    /// How long the link has not been up, in ms (0 while up).
    pub down_ms: u64,
    /// Local publishes handed to the NATS client.
    pub messages_out: u64,
    /// Messages from NATS handed to the shards.
    pub messages_in: u64,
    /// Local publishes dropped because the outbound buffer was full.
    pub out_dropped: u64,
    /// Bytes charged for local publishes waiting for the NATS client.
    pub out_buffered_bytes: u64,
    /// Messages the NATS client dropped for a slow consumer.
    pub slow_consumer_drops: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Failed rounds of connection attempts.
    pub connect_failures: u64,
    /// Subscribed subjects.
    pub subscriptions: u64,
    /// Topics with subscribers on some shard.
    pub interested_topics: u64,
    /// Own messages ignored.
    pub own_ignored: u64,
    /// Invalid messages dropped.
    pub in_invalid: u64,
    /// Times pulling from NATS stopped for back-pressure.
    pub in_stalls: u64,
    /// Compression of messages from NATS (the `compression` object of the bridge in /stats).
    pub compression: crate::obs::compression::Snapshot,
    /// Deep history: 1 once the JetStream stream exists.
    pub deep_stream_ready: u64,
    /// Deep-history fetches answered.
    pub deep_fetches: u64,
    /// Messages they returned.
    pub deep_messages: u64,
    /// Lookups of a topic's last numbering answered.
    pub deep_lookups: u64,
    /// Fetches that did not find the first number asked for.
    pub deep_short: u64,
    /// Fetches failed by timeout.
    pub deep_timeouts: u64,
    /// Fetches failed with JetStream or the stream unavailable.
    pub deep_unavailable: u64,
}

fn state_name<S: serde::Serializer>(s: &LinkState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.name())
}

impl BridgeStats {
    /// Fresh counters: connecting since now.
    pub fn new() -> BridgeStats {
        let s = BridgeStats::default();
        s.not_up_since_ms.store(monotonic_ms(), Relaxed);
        s
    }

    /// Record this process's origin id (once, when the bridge starts).
    pub fn set_origin(&self, origin: &str) {
        let _ = self.origin.set(origin.to_owned());
    }

    /// This process's origin id, once the bridge has started.
    pub fn origin(&self) -> Option<&str> {
        self.origin.get().map(String::as_str)
    }

    /// Record the link state at `now_ms`; the down clock starts at the first not-up sighting.
    pub fn set_state(&self, state: LinkState, now_ms: u64) {
        let before = self.state();
        if before == LinkState::Up && state != LinkState::Up {
            self.not_up_since_ms.store(now_ms, Relaxed);
        }
        self.state.store(state as u8, Relaxed);
    }

    /// The current link state.
    pub fn state(&self) -> LinkState {
        match self.state.load(Relaxed) {
            1 => LinkState::Up,
            2 => LinkState::Down,
            _ => LinkState::Connecting,
        }
    }

    /// Copy every counter at `now_ms` ([`monotonic_ms`]).
    pub fn snapshot(&self, now_ms: u64) -> BridgeSnapshot {
        let state = self.state();
        BridgeSnapshot {
            state,
            up: u64::from(state == LinkState::Up),
            down_ms: match state {
                LinkState::Up => 0,
                _ => now_ms.saturating_sub(get(&self.not_up_since_ms)),
            },
            messages_out: get(&self.messages_out),
            messages_in: get(&self.messages_in),
            out_dropped: get(&self.out_dropped),
            out_buffered_bytes: get(&self.out_buffered_bytes),
            slow_consumer_drops: get(&self.slow_consumer_drops),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            subscriptions: get(&self.subscriptions),
            interested_topics: get(&self.interested_topics),
            own_ignored: get(&self.own_ignored),
            in_invalid: get(&self.in_invalid),
            in_stalls: get(&self.in_stalls),
            compression: self.compression.snapshot(),
            deep_stream_ready: get(&self.deep_stream_ready),
            deep_fetches: get(&self.deep_fetches),
            deep_messages: get(&self.deep_messages),
            deep_lookups: get(&self.deep_lookups),
            deep_short: get(&self.deep_short),
            deep_timeouts: get(&self.deep_timeouts),
            deep_unavailable: get(&self.deep_unavailable),
        }
    }
}

impl BridgeSnapshot {
    /// The /health detail line: the bridge is not a health failure (local traffic is still
    /// served; see docs/SCALE-OUT.md), but it must be visible.
    pub fn health_detail(&self) -> String {
        match self.state {
            LinkState::Up => format!("nats bridge: up ({} subscriptions)", self.subscriptions),
            s => format!(
                "nats bridge: {} for {} ms (local delivery continues; reconnecting, {} reconnects so far, {} publishes not forwarded)",
                s.name(),
                self.down_ms,
                self.reconnects,
                self.out_dropped
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_clock_starts_when_the_link_drops() {
        let s = BridgeStats::new();
        let t0 = get(&s.not_up_since_ms);
        let snap = s.snapshot(t0 + 500);
        assert_eq!(
            (snap.state, snap.up, snap.down_ms),
            (LinkState::Connecting, 0, 500)
        );
        assert!(snap
            .health_detail()
            .starts_with("nats bridge: connecting for 500 ms"));
        s.set_state(LinkState::Up, t0 + 600);
        let snap = s.snapshot(t0 + 700);
        assert_eq!((snap.up, snap.down_ms), (1, 0));
        assert_eq!(snap.health_detail(), "nats bridge: up (0 subscriptions)");
        s.set_state(LinkState::Down, t0 + 1000);
        s.set_state(LinkState::Down, t0 + 1500); // still down: the clock keeps its start
        let snap = s.snapshot(t0 + 3000);
        assert_eq!(
            (snap.state, snap.up, snap.down_ms),
            (LinkState::Down, 0, 2000)
        );
        assert!(snap.health_detail().contains("down for 2000 ms"));
        let json = serde_json::to_value(snap).unwrap();
        assert_eq!(json["state"], "down");
    }
}
