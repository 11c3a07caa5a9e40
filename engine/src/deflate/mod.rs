//! permessage-deflate in the engine: compressed once per message for the whole process.
//!
//! Contract (the protocol work is in `shardcast_proto::deflate`; this module only decides
//! when, and keeps the per-shard state; the shard core calls it from a few commented lines in
//! `conn/upgrade.rs`, `shard/input.rs`, `shard/fanout.rs` and `shard/mesh.rs`):
//! - **Negotiation** ([`negotiate`]): with `--compression on` (the default) a client's offer is
//!   answered with `server_no_context_takeover; client_no_context_takeover` (see
//!   `shardcast_proto::deflate::negotiate` for why). The result lives in the connection's slot
//!   as one byte ([`Negotiated`], `Conn::deflate`, in what was padding); no compressor or
//!   inflater is ever kept per connection, so an idle connection that negotiated compression
//!   costs what one that did not costs.
//! - **Broadcast** ([`ShardDeflate::compress`]): the publishing participant (a shard, or the
//!   NATS bridge for messages from other hosts) builds the compressed variants of the message
//!   it has just encoded, once, before delivering it locally and sending it to the other
//!   shards, which never recompress. A variant is built only when the message is at least
//!   `compression_min_bytes`, its topic is not disabled by a `compression_topic` rule, some
//!   connection in the process that negotiated compression reads that variant of that topic
//!   ([`interest`]), and compression actually shrinks it.
//! - **Delivery** ([`pick`]): a connection that negotiated compression gets the compressed
//!   variant when there is one and the message fits the window it asked for; else the plain
//!   frame (allowed for any message, RFC 7692 §6).
//! - **Inbound** ([`ShardDeflate::inflate`]): a compressed message (publisher, room, echo, or
//!   a subscriber's control message) is inflated by the shard's one inflater into the shard's
//!   one output buffer, with the connection's size limit enforced while inflating (1009 as
//!   soon as it is exceeded) and reset after every message: per connection, inflation keeps
//!   nothing between messages (the compressed bytes of a fragmented message wait in the
//!   decoder's reassembly buffer, like any fragmented message). The output buffer is given
//!   back ([`ShardDeflate::recycle`]) and trimmed to 64 KiB after a larger message, so a shard
//!   holds at most one `max_message_bytes` of it, and only while a large message is handled.
//! - **Memory per shard**: one libdeflate compressor (allocated at the first compression; 200 KiB
//!   at level 1, ~650 KiB at 2–9, 8.6 MiB at 10–12), one zlib-rs inflater (~40 KiB with its
//!   window, allocated at the first compressed message received), the buffers above, the
//!   interest table.

pub mod interest;
pub mod settings;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcast_proto::deflate::{self, Agreed, Deflater, Inflater};
use shardcast_proto::frame::header_len;
use shardcast_proto::{MessageKind, OpCode, ProtocolError};

use crate::obs::compression::CompressionStats;
use interest::{Interest, Variant, Want};
use settings::Settings;

/// The compressed variants of one message, shared (one allocation) by every copy of its
/// envelope on every shard.
#[derive(Debug)]
pub struct Deflated {
    /// The compressed plain frame, if built (and smaller).
    pub frame: Option<Bytes>,
    /// The compressed `/stream` wrapper, if built (and smaller).
    pub stream_frame: Option<Bytes>,
    /// Uncompressed payload length of `frame`'s message (for the window check).
    pub frame_len: usize,
    /// Uncompressed payload length of `stream_frame`'s message.
    pub stream_len: usize,
}

impl Deflated {
    /// Bytes held (charged to the mesh like the plain frames).
    pub fn bytes(&self) -> usize {
        self.frame.as_ref().map_or(0, Bytes::len) + self.stream_frame.as_ref().map_or(0, Bytes::len)
    }
}

/// What one connection agreed, in one byte of its slot: 0 when it did not negotiate
/// permessage-deflate, else the `server_max_window_bits` (8–15) our messages must fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated(u8);

impl Negotiated {
    /// The compact form of the handshake's result.
    pub fn of(agreed: Option<Agreed>) -> Negotiated {
        Negotiated(agreed.map_or(0, |a| a.server_max_window_bits.clamp(8, 15)))
    }

    /// permessage-deflate is on for this connection.
    pub fn is_on(self) -> bool {
        self.0 != 0
    }

    /// Largest uncompressed message this connection may receive compressed (0: none).
    pub fn max_compressed_len(self) -> usize {
        match self.0 {
            0 => 0,
            bits => Agreed {
                server_max_window_bits: bits,
                echo_server_window: false,
            }
            .max_compressed_len(),
        }
    }
}

/// Answer the client's `Sec-WebSocket-Extensions` lines when compression is `enabled`: the
/// agreed parameters (send [`Agreed::response`] in the 101) or `None` (off, or no acceptable
/// offer).
pub fn negotiate<'a>(enabled: bool, lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    if !enabled {
        return None;
    }
    deflate::negotiate(lines)
}

/// The compressed frame a connection that agreed `n` reads, if the message has one it may
/// take: its `/stream` wrapper (`stream`) or its plain frame, within the connection's window.
/// `None`: the plain variant.
pub fn pick(d: Option<&Deflated>, stream: bool, n: Negotiated) -> Option<&Bytes> {
    let d = d.filter(|_| n.is_on())?;
    let (frame, len) = if stream {
        (&d.stream_frame, d.stream_len)
    } else {
        (&d.frame, d.frame_len)
    };
    frame.as_ref().filter(|_| len <= n.max_compressed_len())
}

/// One participant's compression state; see the module docs.
pub struct ShardDeflate {
    settings: Settings,
    interest: Interest,
    /// Created at the first compression (libdeflate allocates its large state then).
    deflater: Option<Deflater>,
    /// Allocated at the first compressed message received.
    inflater: Option<Box<Inflater>>,
    /// The inflate output buffer, lent out by [`inflate`](Self::inflate).
    inflated: Vec<u8>,
}

/// Inflate output capacity kept between messages.
const KEEP_INFLATED: usize = 64 << 10;

impl ShardDeflate {
    /// State for one participant.
    pub fn new(settings: Settings) -> ShardDeflate {
        ShardDeflate {
            settings,
            interest: Interest::default(),
            deflater: None,
            inflater: None,
            inflated: Vec::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A connection that negotiated compression subscribed to (`on`) or left `topic`. Returns
    /// the notice for the other participants when this shard's interest changed.
    pub fn subscription(
        &mut self,
        topic: &Arc<str>,
        stream_mode: bool,
        on: bool,
    ) -> Option<Variant> {
        if !self.settings.topic_enabled(topic) {
            return None;
        }
        let v = Variant::of(stream_mode);
        self.interest.local(topic, v, on).then_some(v)
    }

    /// Another shard's interest in `topic` changed.
    pub fn remote(&mut self, topic: &Arc<str>, variant: Variant, on: bool) {
        self.interest.remote(topic, variant, on);
    }

    /// Topics some compressing connection reads, here or elsewhere (the `topics` gauge).
    pub fn topics(&self) -> usize {
        self.interest.len()
    }

    /// The variants worth building for a message of `kind` with a `len`-byte payload.
    fn want(&self, topic: &str, kind: MessageKind, len: usize) -> Want {
        if !self.settings.enabled || len < self.settings.min_bytes {
            return Want::default();
        }
        self.interest.want(topic, kind)
    }

    /// The compressed variants wanted for a just-encoded message (its plain `frame` and, for
    /// text, its `/stream` wrapper), built before it is delivered or sent to other shards;
    /// counted in `stats`. `None`: nobody wants one, or none shrank.
    pub fn compress(
        &mut self,
        topic: &str,
        kind: MessageKind,
        frame: &Bytes,
        stream_frame: Option<&Bytes>,
        stats: &CompressionStats,
    ) -> Option<Arc<Deflated>> {
        let payload_len = frame.len() - payload_start(frame);
        let want = self.want(topic, kind, payload_len);
        if want.none() {
            return None;
        }
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let level = self.settings.level;
        let deflater = self.deflater.get_or_insert_with(|| Deflater::new(level));
        let mut one = |frame: &Bytes| {
            let payload = &frame[payload_start(frame)..];
            let start = Instant::now();
            let out = deflater.encode_frame(opcode, payload);
            let after = out.as_ref().map(|f| f.len() - payload_start(f));
            stats.compressed(payload.len(), after, start.elapsed());
            (out, payload.len())
        };
        let (frame, frame_len) = if want.frame { one(frame) } else { (None, 0) };
        let (stream_frame, stream_len) = match (stream_frame, want.stream_frame) {
            (Some(w), true) => one(w),
            _ => (None, 0),
        };
        (frame.is_some() || stream_frame.is_some()).then(|| {
            Arc::new(Deflated {
                frame,
                stream_frame,
                frame_len,
                stream_len,
            })
        })
    }

    /// Compress a frame of one connection's own (an echo reply) when it is worth it; `None`:
    /// send it plain. Per message and connection (echo is not a broadcast).
    pub fn encode_own(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        n: Negotiated,
        stats: &CompressionStats,
    ) -> Option<Bytes> {
        if !self.settings.enabled
            || !n.is_on()
            || payload.len() < self.settings.min_bytes
            || payload.len() > n.max_compressed_len()
        {
            return None;
        }
        let level = self.settings.level;
        let deflater = self.deflater.get_or_insert_with(|| Deflater::new(level));
        let start = Instant::now();
        let out = deflater.encode_frame(opcode, payload);
        let after = out.as_ref().map(|f| f.len() - payload_start(f));
        stats.compressed(payload.len(), after, start.elapsed());
        if out.is_some() {
            stats.delivered(1, 0);
        }
        out
    }

    /// Inflate a received compressed message into the shard's output buffer, at most `limit`
    /// bytes (1009 beyond; 1007 for corrupt data or invalid UTF-8 in text). The buffer is lent
    /// out: give it back with [`recycle`](Self::recycle) once the message is handled.
    pub fn inflate(
        &mut self,
        kind: MessageKind,
        compressed: &[u8],
        limit: usize,
        stats: &CompressionStats,
    ) -> Result<Vec<u8>, ProtocolError> {
        let mut out = std::mem::take(&mut self.inflated);
        out.clear();
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Inflater::new(false)));
        match inflater.inflate_message(kind == MessageKind::Text, compressed, limit, &mut out) {
            Ok(()) => {
                stats.inflated(compressed.len(), out.len());
                Ok(out)
            }
            Err(e) => {
                self.recycle(out);
                Err(e)
            }
        }
    }

    /// Take back the buffer [`inflate`](Self::inflate) lent out, trimmed to 64 KiB.
    pub fn recycle(&mut self, mut out: Vec<u8>) {
        out.clear();
        if out.capacity() > KEEP_INFLATED {
            out.shrink_to(KEEP_INFLATED);
        }
        self.inflated = out;
    }
}

/// Where a server frame's payload starts.
fn payload_start(frame: &Bytes) -> usize {
    // A server frame's length field is minimal, so its size decides the header length.
    let len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    debug_assert_eq!(len, header_len((frame.len() - len) as u64, false));
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: usize) -> Settings {
        Settings {
            enabled: true,
            min_bytes: min,
            level: 6,
            rules: vec!["raw.*=off".parse().unwrap()],
        }
    }

    fn inflate(frame: &Bytes) -> Vec<u8> {
        let mut out = Vec::new();
        Inflater::new(false)
            .inflate(&frame[payload_start(frame)..], usize::MAX, &mut out)
            .unwrap();
        out
    }

    /// The plain frame and `/stream` wrapper of a text message, as `Envelope::encode` makes them.
    fn encode(topic: &str, payload: &[u8]) -> (Bytes, Bytes) {
        let wrapped = [
            &b"{\"stream\":\""[..],
            topic.as_bytes(),
            b"\",\"data\":",
            payload,
            b"}",
        ]
        .concat();
        (
            shardcast_proto::encode_frame(OpCode::Text, payload),
            shardcast_proto::encode_frame(OpCode::Text, &wrapped),
        )
    }

    #[test]
    fn negotiated_fits_in_a_byte_and_keeps_the_window() {
        assert_eq!(std::mem::size_of::<Negotiated>(), 1);
        let none = Negotiated::of(None);
        assert!(!none.is_on());
        assert_eq!(none.max_compressed_len(), 0);
        let full = Negotiated::of(Some(Agreed {
            server_max_window_bits: 15,
            echo_server_window: true,
        }));
        assert!(full.is_on());
        assert_eq!(full.max_compressed_len(), usize::MAX);
        let small = Negotiated::of(Some(Agreed {
            server_max_window_bits: 9,
            echo_server_window: true,
        }));
        assert_eq!(small.max_compressed_len(), 512);
        assert!(negotiate(false, [&b"permessage-deflate"[..]]).is_none());
        assert!(negotiate(true, [&b"permessage-deflate"[..]]).is_some());
    }

    #[test]
    fn variants_built_only_when_wanted_and_picked_by_connection() {
        let mut d = ShardDeflate::new(settings(10));
        let stats = CompressionStats::default();
        let t: Arc<str> = Arc::from("t");
        let payload = br#"{"p":"97000.10","q":"0.001","p2":"97000.10","q2":"0.001"}"#;
        let (frame, wrapped) = encode("t", payload);
        let text = MessageKind::Text;
        // Nobody wants compression: nothing built.
        assert!(d
            .compress(&t, text, &frame, Some(&wrapped), &stats)
            .is_none());
        // A /ws reader that negotiated: only the plain variant.
        assert_eq!(d.subscription(&t, false, true), Some(Variant::Plain));
        let z = d
            .compress(&t, text, &frame, Some(&wrapped), &stats)
            .unwrap();
        assert!(z.stream_frame.is_none());
        assert_eq!(inflate(z.frame.as_ref().unwrap()), payload);
        assert_eq!(z.frame_len, payload.len());
        let full = Negotiated::of(Some(Agreed {
            server_max_window_bits: 15,
            echo_server_window: false,
        }));
        assert_eq!(pick(Some(&z), false, full), z.frame.as_ref());
        assert_eq!(pick(Some(&z), false, Negotiated::default()), None);
        assert_eq!(
            pick(Some(&z), true, full),
            None,
            "no compressed wrapper built"
        );
        // A window smaller than the message: plain; one it fits: compressed.
        let tiny = Negotiated(8);
        let big = vec![b'a'; 300];
        let (bf, _) = encode("t", &big);
        let zb = d
            .compress(&t, MessageKind::Binary, &bf, None, &stats)
            .unwrap();
        assert_eq!(pick(Some(&zb), false, tiny), None, "300 B > 256");
        assert!(
            pick(Some(&z), false, tiny).is_some(),
            "{} B fits 256",
            payload.len()
        );
        // Under the threshold, or a disabled topic: nothing.
        let mut high = ShardDeflate::new(settings(1000));
        high.subscription(&t, false, true);
        assert!(high
            .compress(&t, text, &frame, Some(&wrapped), &stats)
            .is_none());
        let raw: Arc<str> = Arc::from("raw.x");
        assert_eq!(d.subscription(&raw, false, true), None);
        // A remote /stream reader: the wrapper too.
        d.remote(&t, Variant::Stream, true);
        let z = d
            .compress(&t, text, &frame, Some(&wrapped), &stats)
            .unwrap();
        let w = inflate(z.stream_frame.as_ref().unwrap());
        assert_eq!(
            w,
            [&b"{\"stream\":\"t\",\"data\":"[..], payload, b"}"].concat()
        );
        assert_eq!(pick(Some(&z), true, full), z.stream_frame.as_ref());
        let s = stats.snapshot();
        assert_eq!(s.compressed_messages, 4);
        assert!(s.bytes_after < s.bytes_before);
    }

    #[test]
    fn inflate_limits_and_trims() {
        let mut d = ShardDeflate::new(settings(0));
        let stats = CompressionStats::default();
        let big = vec![b'x'; 200_000];
        let frame = Deflater::new(1).encode_frame(OpCode::Binary, &big).unwrap();
        let payload = &frame[payload_start(&frame)..];
        let out = d
            .inflate(MessageKind::Binary, payload, 200_000, &stats)
            .unwrap();
        assert_eq!(&out[..], &big[..]);
        d.recycle(out);
        assert!(d.inflated.capacity() <= KEEP_INFLATED);
        let err = d
            .inflate(MessageKind::Binary, payload, 199_999, &stats)
            .err()
            .unwrap();
        assert_eq!(err.code.0, 1009);
        assert!(d.inflated.capacity() <= KEEP_INFLATED);
        assert_eq!(stats.snapshot().inflated_messages, 1);
    }
}
