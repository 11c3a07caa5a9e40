//! permessage-deflate counters of one shard (or of the NATS bridge, for what it compresses;
//! the decisions are in `crate::deflate`): one writer, Relaxed atomics, a plain-number
//! snapshot for /stats (`compression`) and /metrics.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::obs::counter::{add, get};

/// Counters; see [`Snapshot`] for their meaning.
#[derive(Debug, Default)]
pub struct CompressionStats {
    /// Open connections that negotiated permessage-deflate (a gauge).
    pub connections: AtomicU64,
    /// Topics for which this participant builds compressed variants: some compressing
    /// connection reads them, here or on another shard (a gauge).
    pub topics: AtomicU64,
    compressed: AtomicU64,
    incompressible: AtomicU64,
    bytes_before: AtomicU64,
    bytes_after: AtomicU64,
    compress_ns: AtomicU64,
    deliveries: AtomicU64,
    bytes_saved: AtomicU64,
    inflated: AtomicU64,
    inflated_bytes_in: AtomicU64,
    inflated_bytes_out: AtomicU64,
}

impl CompressionStats {
    /// One payload of `before` bytes compressed to `after` (`None`: it did not shrink and
    /// the plain frame is used) in `took`.
    pub fn compressed(&self, before: usize, after: Option<usize>, took: Duration) {
        add(&self.compress_ns, took.as_nanos() as u64);
        match after {
            Some(after) => {
                add(&self.compressed, 1);
                add(&self.bytes_before, before as u64);
                add(&self.bytes_after, after as u64);
            }
            None => add(&self.incompressible, 1),
        }
    }

    /// `n` connections were queued a compressed frame `saved` bytes shorter than the plain one.
    pub fn delivered(&self, n: u64, saved: usize) {
        if n > 0 {
            add(&self.deliveries, n);
            add(&self.bytes_saved, n * saved as u64);
        }
    }

    /// One received message inflated from `before` to `after` bytes.
    pub fn inflated(&self, before: usize, after: usize) {
        add(&self.inflated, 1);
        add(&self.inflated_bytes_in, before as u64);
        add(&self.inflated_bytes_out, after as u64);
    }

    /// Copy every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: get(&self.connections),
            topics: get(&self.topics),
            compressed_messages: get(&self.compressed),
            incompressible_messages: get(&self.incompressible),
            bytes_before: get(&self.bytes_before),
            bytes_after: get(&self.bytes_after),
            compress_ns: get(&self.compress_ns),
            compressed_deliveries: get(&self.deliveries),
            bytes_saved: get(&self.bytes_saved),
            inflated_messages: get(&self.inflated),
            inflated_bytes_in: get(&self.inflated_bytes_in),
            inflated_bytes_out: get(&self.inflated_bytes_out),
        }
    }
}

/// A point-in-time copy, serialized as the `compression` object of /stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Open connections that negotiated permessage-deflate.
    pub connections: u64,
    /// Topics some compressing connection of the process reads, as this participant knows.
    pub topics: u64,
    /// Payloads compressed (once per message and wire variant, for every connection of every
    /// shard).
    pub compressed_messages: u64,
    /// Compressions that did not shrink the payload (the plain frame was used instead).
    pub incompressible_messages: u64,
    /// Payload bytes of the compressed messages before compression.
    pub bytes_before: u64,
    /// The same payloads compressed.
    pub bytes_after: u64,
    /// Time spent compressing, ns.
    pub compress_ns: u64,
    /// Compressed frames queued to connections (one per delivery).
    pub compressed_deliveries: u64,
    /// Bytes those deliveries saved against the plain frames.
    pub bytes_saved: u64,
    /// Compressed messages received from clients and inflated.
    pub inflated_messages: u64,
    /// Their compressed payload bytes.
    pub inflated_bytes_in: u64,
    /// Their inflated bytes.
    pub inflated_bytes_out: u64,
}
