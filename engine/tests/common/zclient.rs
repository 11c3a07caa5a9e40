//! A blocking raw WebSocket client that offers permessage-deflate, for the compression tests:
//! it sends what offer it is told, keeps the 101 head, reads frames with the proto decoder
//! (client role, RSV1 allowed) and inflates compressed ones with flate2 (zlib's algorithm, the
//! reference, fresh per message as `server_no_context_takeover` allows), and sends messages
//! compressed by flate2 (sync flush, tail removed), in one frame or several.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use shardcast_proto::frame::{write_header_rsv, OpCode, RSV1};
use shardcast_proto::mask::apply_mask;
use shardcast_proto::{Decoder, DecoderConfig, Event, MessageKind, Role};

use super::TIMEOUT;

/// The offer browsers and most libraries send.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// RSV1 was set (the message came compressed).
    pub compressed: bool,
    /// Text or binary.
    pub text: bool,
    /// The payload, inflated if it came compressed.
    pub payload: Vec<u8>,
    /// Payload bytes as they were on the wire.
    pub wire_len: usize,
    /// The payload as it was on the wire (compressed, if it came compressed).
    pub wire: Vec<u8>,
}

/// What a read ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A data message.
    Message(Received),
    /// A close frame with this code (0: none).
    Close(u16),
    /// The server closed the TCP connection.
    Eof,
}

pub struct ZClient {
    pub tcp: TcpStream,
    /// The 101 response head.
    pub head: String,
    /// The shard that accepted the connection.
    pub shard: usize,
    buf: Vec<u8>,
    dec: Decoder,
}

/// Deflate `msg` on its own as a permessage-deflate payload (flate2, sync flush, tail removed).
pub fn deflate(msg: &[u8]) -> Vec<u8> {
    if msg.is_empty() {
        return vec![0x00]; // an empty stored block without its tail (RFC 7692 §7.2.3.6)
    }
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(msg.len() + 64);
    loop {
        let done = c.total_in() as usize;
        c.compress_vec(&msg[done..], &mut out, FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == msg.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
        out.reserve(out.capacity() + 64);
    }
    out.truncate(out.len() - 4);
    out
}

/// Inflate one permessage-deflate payload (flate2, fresh state), at most `max` bytes.
pub fn inflate(payload: &[u8], max: usize) -> Vec<u8> {
    inflate_window(payload, max, 15)
}

/// [`inflate`] with a `bits`-bit window (9..=15): fails on a back-reference beyond it.
pub fn inflate_window(payload: &[u8], max: usize, bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    loop {
        let status = d
            .decompress_vec(
                &input[d.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .expect("valid deflate data");
        if status == Status::StreamEnd || d.total_in() as usize == input.len() {
            return out;
        }
        assert!(out.len() <= max, "inflates past {max}");
        out.reserve(out.capacity() + 64);
    }
}

impl ZClient {
    /// Upgrade `path` with `offer` as `Sec-WebSocket-Extensions` (none when `None`).
    pub fn connect(addr: SocketAddr, path: &str, offer: Option<&str>) -> ZClient {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let head = super::upgrade_raw_with(&mut tcp, path, &ext);
        let shard = header(&head, "x-shardcast-shard")
            .expect("shard header")
            .parse()
            .unwrap();
        let mut dec = Decoder::new(DecoderConfig {
            role: Role::Client,
            max_message_size: 1 << 30,
        });
        dec.set_permessage_deflate(true);
        ZClient {
            tcp,
            head,
            shard,
            buf: Vec::new(),
            dec,
        }
    }

    /// Connect until one lands on `shard`.
    pub fn connect_on(addr: SocketAddr, path: &str, offer: Option<&str>, shard: usize) -> ZClient {
        for _ in 0..500 {
            let c = ZClient::connect(addr, path, offer);
            if c.shard == shard {
                return c;
            }
        }
        panic!("never landed on shard {shard}");
    }

    /// The `Sec-WebSocket-Extensions` response, if any.
    pub fn extensions(&self) -> Option<String> {
        header(&self.head, "sec-websocket-extensions")
    }

    /// The next message or close (pings are skipped).
    pub fn read(&mut self) -> Got {
        self.read_some()
            .unwrap_or_else(|| panic!("nothing within {TIMEOUT:?}"))
    }

    /// [`read`](Self::read); `None` when the socket's read timeout passes first.
    fn read_some(&mut self) -> Option<Got> {
        loop {
            let d = self.dec.decode(&mut self.buf);
            let consumed = d.consumed;
            let out = match d.result.expect("the server's frames are valid") {
                Some(Event::Message(m)) => {
                    let wire = m.payload.as_bytes();
                    Some(Got::Message(Received {
                        compressed: m.compressed,
                        text: m.kind == MessageKind::Text,
                        payload: if m.compressed {
                            inflate(wire, 1 << 30)
                        } else {
                            wire.to_vec()
                        },
                        wire_len: wire.len(),
                        wire: wire.to_vec(),
                    }))
                }
                Some(Event::Close(c)) => Some(Got::Close(c.map_or(0, |(c, _)| c.0))),
                Some(Event::Ping(_) | Event::Pong(_)) | None => None,
            };
            self.buf.drain(..consumed);
            if out.is_some() {
                return out;
            }
            if consumed > 0 {
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.tcp.read(&mut chunk) {
                Ok(0) => return Some(Got::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(Got::Eof),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message if one arrives within `within` (a partial frame stays buffered).
    pub fn poll(&mut self, within: std::time::Duration) -> Option<Received> {
        self.tcp.set_read_timeout(Some(within)).unwrap();
        let got = self.read_some();
        self.tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        match got? {
            Got::Message(m) => Some(m),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next data message (panics on anything else).
    pub fn message(&mut self) -> Received {
        match self.read() {
            Got::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Read until the server's close frame; its code.
    pub fn close_code(&mut self) -> u16 {
        loop {
            match self.read() {
                Got::Message(_) => continue,
                Got::Close(c) => return c,
                Got::Eof => panic!("EOF without a close frame"),
            }
        }
    }

    /// Send raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    /// Send `payload` as one message, compressed (RSV1) or not, split into frames of at most
    /// `fragment` payload bytes.
    pub fn send(&mut self, text: bool, payload: &[u8], compressed: bool, fragment: usize) {
        let wire = if compressed {
            deflate(payload)
        } else {
            payload.to_vec()
        };
        self.send_raw(&frames(text, &wire, compressed, fragment));
    }
}

/// Masked client frames carrying `wire` (already compressed or not), RSV1 on the first when
/// `compressed`, at most `fragment` bytes each.
pub fn frames(text: bool, wire: &[u8], compressed: bool, fragment: usize) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = BytesMut::new();
    let pieces: Vec<&[u8]> = if wire.is_empty() {
        vec![&[]]
    } else {
        wire.chunks(fragment.max(1)).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let op = match (i, text) {
            (0, true) => OpCode::Text,
            (0, false) => OpCode::Binary,
            _ => OpCode::Continuation,
        };
        let rsv = if i == 0 && compressed { RSV1 } else { 0 };
        let fin = i + 1 == pieces.len();
        write_header_rsv(&mut out, fin, rsv, op, Some(mask), piece.len() as u64);
        let start = out.len();
        out.extend_from_slice(piece);
        apply_mask(&mut out[start..], mask, 0);
    }
    out.to_vec()
}

/// A header's value in a response head (name case-insensitive).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}
