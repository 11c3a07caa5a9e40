//! permessage-deflate in the engine: compressed once per message for the whole process.
//!
//! Contract (the protocol work is in `shardcast_proto::deflate`; this module only decides
//! when, and keeps the per-shard state):
//! - **Negotiation** ([`ShardDeflate::negotiate`]): with `--compression on` (the default) a
//!   client's offer is answered with `server_no_context_takeover; client_no_context_takeover`
//!   (see `shardcast_proto::deflate::negotiate` for why). The result lives in the connection
//!   (`Conn::deflate`, 3 bytes); no compressor or inflater is ever kept per connection.
//! - **Broadcast** ([`ShardDeflate::compress`]): the publishing participant (a shard, or the
//!   NATS bridge for messages from other hosts) adds compressed variants to the envelope it
//!   has just encoded, once, before delivering it locally and sending it to the other shards,
//!   which never recompress. A variant is built only when the message is at least
//!   `compression_min_bytes`, its topic is not disabled by a `compression_topic` rule, some
//!   connection in the process that negotiated compression reads that variant of that topic
//!   ([`interest`]), and compression actually shrinks it.
//! - **Delivery** ([`variant`]): a connection that negotiated compression gets the compressed
//!   variant when there is one and the message fits the window it asked for; else the plain
//!   frame (allowed for any message, RFC 7692 §6).
//! - **Inbound** ([`ShardDeflate::inflate`]): a compressed message (publisher, room, echo, or
//!   a subscriber's control message) is inflated by the shard's one inflater into the shard's
//!   one output buffer, with the connection's size limit enforced while inflating (1009 as
//!   soon as it is exceeded) and reset after every message: per connection, inflation keeps
//!   nothing between messages. The output buffer is given back down to 64 KiB after a larger
//!   message, so a shard holds at most one `max_message_bytes` of it, and only while a large
//!   message is being handled.
//! - **Memory per shard**: one libdeflate compressor (allocated at the first compression; 200 KiB
//!   at level 1, ~650 KiB at 2–9, 8.6 MiB at 10–12), one zlib-rs inflater (~40 KiB with its
//!   window, allocated at the first compressed message received), the buffers above.

pub mod interest;
pub mod settings;
pub mod stats;

use std::cell::{RefCell, RefMut};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcast_proto::deflate::{self, Agreed, Deflater, Inflater};
use shardcast_proto::frame::header_len;
use shardcast_proto::{MessageKind, OpCode, ProtocolError};

use crate::mesh::Envelope;
use interest::{Interest, Variant, Want};
use settings::Settings;
use stats::CompressionStats;

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

/// Index of the variant a connection reads (`0` plain, `1` `/stream`, `2` compressed plain,
/// `3` compressed `/stream`) and its frame: what [`Hub::deliver`](crate::hub::Hub::deliver)
/// queues.
pub fn variant(env: &Envelope, stream_mode: bool, agreed: Option<Agreed>) -> (usize, &Bytes) {
    let stream = stream_mode && env.stream_frame.is_some();
    if let (Some(agreed), Some(d)) = (agreed, env.deflated.as_deref()) {
        let (frame, len) = if stream {
            (&d.stream_frame, d.stream_len)
        } else {
            (&d.frame, d.frame_len)
        };
        if let Some(f) = frame
            .as_ref()
            .filter(|_| len <= agreed.max_compressed_len())
        {
            return (2 + usize::from(stream), f);
        }
    }
    match (stream, &env.stream_frame) {
        (true, Some(w)) => (1, w),
        _ => (0, &env.frame),
    }
}

/// One participant's compression state; see the module docs.
pub struct ShardDeflate {
    settings: Settings,
    interest: RefCell<Interest>,
    deflater: RefCell<Option<Deflater>>,
    inflater: RefCell<Option<Inflater>>,
    inflated: RefCell<Vec<u8>>,
}

/// Inflate output capacity kept between messages.
const KEEP_INFLATED: usize = 64 << 10;

impl ShardDeflate {
    /// State for one participant.
    pub fn new(settings: Settings) -> ShardDeflate {
        ShardDeflate {
            settings,
            interest: RefCell::default(),
            deflater: RefCell::new(None),
            inflater: RefCell::new(None),
            inflated: RefCell::new(Vec::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Answer the client's `Sec-WebSocket-Extensions` lines: the agreed parameters (send
    /// [`Agreed::response`] in the 101) or `None` (compression off, or no acceptable offer).
    pub fn negotiate<'a>(&self, lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
        if !self.settings.enabled {
            return None;
        }
        deflate::negotiate(lines)
    }

    /// A connection that negotiated compression subscribed to (`on`) or left `topic`. Returns
    /// the notice for the other participants when this shard's interest changed.
    pub fn subscription(&self, topic: &Arc<str>, stream_mode: bool, on: bool) -> Option<Variant> {
        if !self.settings.topic_enabled(topic) {
            return None;
        }
        let v = Variant::of(stream_mode);
        self.interest.borrow_mut().local(topic, v, on).then_some(v)
    }

    /// Another shard's interest in `topic` changed.
    pub fn remote(&self, topic: &Arc<str>, variant: Variant, on: bool) {
        self.interest.borrow_mut().remote(topic, variant, on);
    }

    /// Topics some compressing connection reads, here or elsewhere (the `topics` gauge).
    pub fn topics(&self) -> usize {
        self.interest.borrow().len()
    }

    /// The variants worth building for a message of `kind` with a `len`-byte payload.
    fn want(&self, topic: &str, kind: MessageKind, len: usize) -> Want {
        if !self.settings.enabled || len < self.settings.min_bytes {
            return Want::default();
        }
        self.interest.borrow().want(topic, kind)
    }

    /// Add the wanted compressed variants to a just-encoded envelope (before it is delivered
    /// or sent to other shards); counted in `stats`.
    pub fn compress(
        &self,
        env: &mut Envelope,
        kind: MessageKind,
        payload_len: usize,
        stats: &CompressionStats,
    ) {
        let want = self.want(&env.topic, kind, payload_len);
        if want.none() {
            return;
        }
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let mut deflater = self.deflater.borrow_mut();
        let deflater = deflater.get_or_insert_with(|| Deflater::new(self.settings.level));
        let mut one = |frame: &Bytes| {
            let payload = &frame[payload_start(frame)..];
            let start = Instant::now();
            let out = deflater.encode_frame(opcode, payload);
            let after = out.as_ref().map(|f| f.len() - payload_start(f));
            stats.compressed(payload.len(), after, start.elapsed());
            (out, payload.len())
        };
        let (frame, frame_len) = if want.frame {
            one(&env.frame)
        } else {
            (None, 0)
        };
        let (stream_frame, stream_len) = match (&env.stream_frame, want.stream_frame) {
            (Some(w), true) => one(w),
            _ => (None, 0),
        };
        if frame.is_some() || stream_frame.is_some() {
            env.deflated = Some(Arc::new(Deflated {
                frame,
                stream_frame,
                frame_len,
                stream_len,
            }));
        }
    }

    /// Compress a frame of one connection's own (an echo reply) when it is worth it; `None`:
    /// send it plain. Per message and connection (echo is not a broadcast).
    pub fn encode_own(
        &self,
        opcode: OpCode,
        payload: &[u8],
        agreed: Agreed,
        stats: &CompressionStats,
    ) -> Option<Bytes> {
        if !self.settings.enabled
            || payload.len() < self.settings.min_bytes
            || payload.len() > agreed.max_compressed_len()
        {
            return None;
        }
        let mut deflater = self.deflater.borrow_mut();
        let deflater = deflater.get_or_insert_with(|| Deflater::new(self.settings.level));
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
    /// bytes (1009 beyond; 1007 for corrupt data or invalid UTF-8 in text). The buffer is
    /// borrowed until the returned guard is dropped.
    pub fn inflate(
        &self,
        kind: MessageKind,
        compressed: &[u8],
        limit: usize,
        stats: &CompressionStats,
    ) -> Result<Inflated<'_>, ProtocolError> {
        let mut out = self.inflated.borrow_mut();
        out.clear();
        let mut inflater = self.inflater.borrow_mut();
        let inflater = inflater.get_or_insert_with(|| Inflater::new(false));
        let r = inflater.inflate_message(kind == MessageKind::Text, compressed, limit, &mut out);
        let guard = Inflated { out };
        r?;
        stats.inflated(compressed.len(), guard.out.len());
        Ok(guard)
    }
}

/// A borrowed inflated message; the shard's buffer is trimmed when it is dropped.
pub struct Inflated<'a> {
    out: RefMut<'a, Vec<u8>>,
}

impl std::ops::Deref for Inflated<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.out
    }
}

impl Drop for Inflated<'_> {
    fn drop(&mut self) {
        self.out.clear();
        if self.out.capacity() > KEEP_INFLATED {
            self.out.shrink_to(KEEP_INFLATED);
        }
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

    #[test]
    fn variants_built_only_when_wanted_and_picked_by_connection() {
        let d = ShardDeflate::new(settings(10));
        let stats = CompressionStats::default();
        let t: Arc<str> = Arc::from("t");
        let payload = br#"{"p":"97000.10","q":"0.001","p2":"97000.10","q2":"0.001"}"#;
        let encode = || Envelope::encode(t.clone(), MessageKind::Text, payload);
        // Nobody wants compression: nothing built.
        let mut env = encode();
        d.compress(&mut env, MessageKind::Text, payload.len(), &stats);
        assert!(env.deflated.is_none());
        // A /ws reader that negotiated: only the plain variant.
        assert_eq!(d.subscription(&t, false, true), Some(Variant::Plain));
        let mut env = encode();
        d.compress(&mut env, MessageKind::Text, payload.len(), &stats);
        let z = env.deflated.clone().unwrap();
        assert!(z.stream_frame.is_none());
        assert_eq!(inflate(z.frame.as_ref().unwrap()), payload);
        assert_eq!(z.frame_len, payload.len());
        let full = Agreed {
            server_max_window_bits: 15,
            echo_server_window: false,
        };
        assert_eq!(variant(&env, false, Some(full)).0, 2);
        assert_eq!(variant(&env, false, None).0, 0);
        assert_eq!(
            variant(&env, true, Some(full)).0,
            1,
            "no compressed wrapper built"
        );
        // A window smaller than the message: plain.
        let small = Agreed {
            server_max_window_bits: 8,
            echo_server_window: true,
        };
        assert_eq!(
            variant(&env, false, Some(small)).0,
            2,
            "{} B fits 256",
            payload.len()
        );
        // Under the threshold, or a disabled topic: nothing.
        let mut env = encode();
        ShardDeflate::new(settings(1000)).compress(
            &mut env,
            MessageKind::Text,
            payload.len(),
            &stats,
        );
        assert!(env.deflated.is_none());
        let raw: Arc<str> = Arc::from("raw.x");
        assert_eq!(d.subscription(&raw, false, true), None);
        // A remote /stream reader: the wrapper too.
        d.remote(&t, Variant::Stream, true);
        let mut env = encode();
        d.compress(&mut env, MessageKind::Text, payload.len(), &stats);
        let z = env.deflated.clone().unwrap();
        let w = inflate(z.stream_frame.as_ref().unwrap());
        assert_eq!(
            w,
            [&b"{\"stream\":\"t\",\"data\":"[..], payload, b"}"].concat()
        );
        assert_eq!(variant(&env, true, Some(full)).0, 3);
        let s = stats.snapshot();
        assert_eq!(s.compressed_messages, 3);
        assert!(s.bytes_after < s.bytes_before);
    }

    #[test]
    fn inflate_limits_and_trims() {
        let d = ShardDeflate::new(settings(0));
        let stats = CompressionStats::default();
        let big = vec![b'x'; 200_000];
        let frame = Deflater::new(1).encode_frame(OpCode::Binary, &big).unwrap();
        let payload = &frame[payload_start(&frame)..];
        {
            let out = d
                .inflate(MessageKind::Binary, payload, 200_000, &stats)
                .unwrap();
            assert_eq!(&out[..], &big[..]);
        }
        assert!(d.inflated.borrow().capacity() <= KEEP_INFLATED);
        let err = d
            .inflate(MessageKind::Binary, payload, 199_999, &stats)
            .err()
            .unwrap();
        assert_eq!(err.code.0, 1009);
        assert!(d.inflated.borrow().capacity() <= KEEP_INFLATED);
        assert_eq!(stats.snapshot().inflated_messages, 1);
    }
}
