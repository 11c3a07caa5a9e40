//! Continuity: per-topic sequence numbers, a bounded history, and resume without gap or
//! duplicate (docs/CONTINUITY.md is the user-facing contract; this is the engine's).
//!
//! Everything here is sans-IO: plain state machines with time (`now_ms`, a shard clock in
//! milliseconds) as an input, driven by the shard core. The pieces and their owners:
//! - [`epoch`]: a 64-bit epoch names one numbering of a topic; it changes whenever the
//!   numbering restarts (process start, a topic's state dropped and re-created, a change of
//!   origin across hosts, the 2^53 limit).
//! - [`sequence`]: the numbering of one topic on its **home shard** ([`home_shard`]): gap-free
//!   and strictly increasing for messages published on this host, or adopted from the origin
//!   host's numbers when the message came through NATS.
//! - [`history`]: a topic's ring of recent messages, bounded by count, bytes and age, with
//!   exact byte accounting and lookup by `since`.
//! - [`log`]: the home shard's table of topics (numbering + ring), its history budget (a share
//!   of the shard's memory ceiling), age sweep and counters.
//! - [`resume`]: the ask/answer protocol between a connection's shard and the topic's home
//!   shard, and the switch-over rule that makes replay + live gap-free and duplicate-free.
//! - [`deep`]: what a fetch from deep history (a JetStream stream, through the NATS bridge)
//!   asks for and returns, and how the bridge finds and keeps the range.
//! - [`wire`]: what a sequenced connection receives: the JSON wrapper with `seq`, the binary
//!   prefix, and the notices.
//! - [`params`]: `seq=1`, `since=` and `epoch=` in URLs and SUBSCRIBE messages.
//!
//! The total order of a topic has one owner on a host: its home shard. Publishes of a topic
//! on any other shard, and messages of it from NATS, go to the home shard first; the home
//! shard stamps, records and fans out. Every shard therefore sees a topic's messages in
//! sequence order through one FIFO ring (home → shard), which is what the switch-over rule in
//! [`resume`] relies on.

pub mod deep;
pub mod desk;
pub mod epoch;
pub mod history;
pub mod log;
pub mod params;
pub mod resume;
pub mod sequence;
pub mod wire;

#[cfg(test)]
mod sim;

pub use epoch::Epoch;

/// A sequence number: 1 for a numbering's first message, never 0 on the wire for data (0 is
/// the position "before the first message").
pub type Seq = u64;

/// The largest sequence number: 2^53 − 1, the largest integer a JavaScript number holds
/// exactly. A numbering that reaches it restarts under a new epoch.
pub const MAX_SEQ: Seq = (1 << 53) - 1;

/// A client's place in a topic: the last sequence number it has of `epoch` (0 = none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The numbering the sequence number belongs to.
    pub epoch: Epoch,
    /// The last message the client has (the next one it expects is `seq + 1`).
    pub seq: Seq,
}

/// The shard that owns `topic`'s numbering and history among `shards` shards: FNV-1a over the
/// name, reduced by multiply-shift (no modulo bias worth naming, no division). Stable for the
/// life of the process (the shard count does not change while it runs).
pub fn home_shard(topic: &str, shards: usize) -> usize {
    debug_assert!(shards > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in topic.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((u128::from(h) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shard_is_stable_and_spread() {
        assert_eq!(home_shard("btcusdt@trade", 1), 0);
        for shards in 1..=16 {
            for t in ["a", "b", "btcusdt@depth", "x.y.z"] {
                let h = home_shard(t, shards);
                assert!(h < shards);
                assert_eq!(h, home_shard(t, shards), "deterministic");
            }
        }
        // 10,000 topics over 8 shards: every shard gets a fair share (±15%).
        let mut counts = [0usize; 8];
        for i in 0..10_000 {
            counts[home_shard(&format!("sym{i}@trade"), 8)] += 1;
        }
        for c in counts {
            assert!((1062..=1438).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn max_seq_is_exact_in_f64() {
        assert_eq!(MAX_SEQ as f64 as u64, MAX_SEQ);
        assert_ne!((MAX_SEQ + 2) as f64 as u64, MAX_SEQ + 2);
    }
}
