//! What a sequenced connection (`seq=1`) receives, encoded once per message as one frame.
//!
//! - A **text** message of topic `T` numbered `N`: a text frame
//!   `{"stream":"T","seq":N,"data":PAYLOAD}` (the payload embedded as published, as the
//!   combined stream's `{"stream":…,"data":…}` does).
//! - A **binary** message: a binary frame made of a prefix and the payload unchanged:
//!
//!   | offset | size | field |
//!   |---|---|---|
//!   | 0 | 1 | format version, `0x01` |
//!   | 1 | 8 | `seq`, unsigned, big-endian |
//!   | 9 | 1 | `L`, the topic's length in bytes (1..=128) |
//!   | 10 | L | the topic, ASCII |
//!   | 10 + L | rest | the published payload |
//!
//! - A **notice** (always a text frame, whatever the topic's messages are):
//!   `{"stream":"T","epoch":"E","seq":N}`, plus `,"resync":"REASON"` when messages the client
//!   asked for are not coming. It sets the client's position: the next message of `T` is
//!   numbered `N + 1`. A notice is the only message with an `"epoch"` key; a data message is
//!   the only one with `"data"`.
//!
//! Topic names need no JSON escaping (their alphabet is `[A-Za-z0-9._:@-]`).

use bytes::Bytes;
use shardcast_proto::{encode_frame_parts, MessageKind, OpCode};

use super::resume::Notice;
use super::Seq;

/// The binary prefix's format version.
pub const BINARY_VERSION: u8 = 1;

/// Bytes the binary prefix adds before the payload, for a topic of `topic_len` bytes.
pub const fn binary_overhead(topic_len: usize) -> usize {
    10 + topic_len
}

/// Decimal digits of `n` in a stack buffer; returns the used tail.
fn digits(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The frame a sequenced connection receives for message `seq` of `topic`.
pub fn data_frame(kind: MessageKind, topic: &str, seq: Seq, payload: &[u8]) -> Bytes {
    debug_assert!(crate::flow::topic::validate(topic).is_ok());
    match kind {
        MessageKind::Text => {
            let mut buf = [0u8; 20];
            encode_frame_parts(
                OpCode::Text,
                &[
                    b"{\"stream\":\"",
                    topic.as_bytes(),
                    b"\",\"seq\":",
                    digits(seq, &mut buf),
                    b",\"data\":",
                    payload,
                    b"}",
                ],
            )
        }
        MessageKind::Binary => encode_frame_parts(
            OpCode::Binary,
            &[
                &[BINARY_VERSION],
                &seq.to_be_bytes(),
                &[topic.len() as u8],
                topic.as_bytes(),
                payload,
            ],
        ),
    }
}

/// The text frame of a notice about `topic`.
pub fn notice_frame(topic: &str, notice: &Notice) -> Bytes {
    debug_assert!(crate::flow::topic::validate(topic).is_ok());
    let mut buf = [0u8; 20];
    let epoch = notice.epoch.hex();
    let (resync_key, reason, close): (&[u8], &[u8], &[u8]) = match notice.resync {
        Some(r) => (b",\"resync\":\"", r.name().as_bytes(), b"\"}"),
        None => (b"", b"", b"}"),
    };
    encode_frame_parts(
        OpCode::Text,
        &[
            b"{\"stream\":\"",
            topic.as_bytes(),
            b"\",\"epoch\":\"",
            &epoch,
            b"\",\"seq\":",
            digits(notice.seq, &mut buf),
            resync_key,
            reason,
            close,
        ],
    )
}

/// A sequenced binary message, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryMessage<'a> {
    /// Its number.
    pub seq: Seq,
    /// Its topic.
    pub topic: &'a str,
    /// The published payload.
    pub payload: &'a [u8],
}

/// Why bytes are not a sequenced binary message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPrefix {
    /// Shorter than its prefix says.
    Short,
    /// Another format version.
    Version(u8),
    /// The topic is empty, too long, or not a topic name.
    Topic,
}

/// Parse a sequenced binary message (a client's view; the engine only encodes).
pub fn parse_binary(msg: &[u8]) -> Result<BinaryMessage<'_>, BadPrefix> {
    let (&version, rest) = msg.split_first().ok_or(BadPrefix::Short)?;
    if version != BINARY_VERSION {
        return Err(BadPrefix::Version(version));
    }
    let seq = u64::from_be_bytes(
        rest.get(..8)
            .ok_or(BadPrefix::Short)?
            .try_into()
            .unwrap_or_default(),
    );
    let len = *rest.get(8).ok_or(BadPrefix::Short)? as usize;
    let topic = rest.get(9..9 + len).ok_or(BadPrefix::Short)?;
    let topic = std::str::from_utf8(topic).map_err(|_| BadPrefix::Topic)?;
    crate::flow::topic::validate(topic).map_err(|_| BadPrefix::Topic)?;
    Ok(BinaryMessage {
        seq,
        topic,
        payload: &rest[9 + len..],
    })
}

/// A plain frame the server encoded (one unfragmented, unmasked data frame) split into its
/// message kind and its payload (a slice of the frame: history and replays share it, no copy).
pub fn split_frame(frame: &Bytes) -> Option<(MessageKind, Bytes)> {
    use shardcast_proto::frame::{parse_header, Role};
    let h = parse_header(frame, Role::Client).ok()??;
    let kind = match h.opcode {
        OpCode::Text => MessageKind::Text,
        OpCode::Binary => MessageKind::Binary,
        _ => return None,
    };
    Some((kind, frame.slice(h.header_len..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::resume::Reason;
    use crate::continuity::{Epoch, MAX_SEQ};
    use serde_json::{json, Value};
    use shardcast_proto::frame::{parse_header, Role};

    /// The payload of a single unmasked frame, and its opcode.
    fn unframe(f: &Bytes) -> (OpCode, Vec<u8>) {
        let h = parse_header(f, Role::Client).unwrap().unwrap();
        (h.opcode, f[h.header_len..].to_vec())
    }

    #[test]
    fn text_wrapper_with_seq() {
        let f = data_frame(MessageKind::Text, "btcusdt@trade", 17, br#"{"p":"1.5"}"#);
        let (op, body) = unframe(&f);
        assert_eq!(op, OpCode::Text);
        assert_eq!(
            body,
            br#"{"stream":"btcusdt@trade","seq":17,"data":{"p":"1.5"}}"#
        );
        for seq in [0, 1, 9, 10, 99, 1000, MAX_SEQ, u64::MAX] {
            let (_, body) = unframe(&data_frame(MessageKind::Text, "a", seq, b"1"));
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["seq"].as_u64(), Some(seq));
            assert_eq!(v["data"], json!(1));
        }
        // A large payload gets the 16-bit and 64-bit length forms; the wrapper is intact.
        for n in [200, 70_000] {
            let p = format!("\"{}\"", "x".repeat(n));
            let (_, body) = unframe(&data_frame(MessageKind::Text, "a", 5, p.as_bytes()));
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"].as_str().unwrap().len(), n);
        }
    }

    #[test]
    fn binary_prefix_byte_by_byte() {
        let f = data_frame(
            MessageKind::Binary,
            "ab",
            0x0102_0304_0506_0708,
            &[0xff, 0x00],
        );
        let (op, body) = unframe(&f);
        assert_eq!(op, OpCode::Binary);
        assert_eq!(
            body,
            [1, 1, 2, 3, 4, 5, 6, 7, 8, 2, b'a', b'b', 0xff, 0x00],
            "version, seq BE, topic length, topic, payload"
        );
        assert_eq!(body.len(), binary_overhead(2) + 2);
        let m = parse_binary(&body).unwrap();
        assert_eq!(
            (m.seq, m.topic, m.payload),
            (0x0102_0304_0506_0708, "ab", &[0xff, 0][..])
        );
        let long = "t".repeat(128);
        let (_, body) = unframe(&data_frame(MessageKind::Binary, &long, 9, b""));
        let m = parse_binary(&body).unwrap();
        assert_eq!((m.seq, m.topic.len(), m.payload.len()), (9, 128, 0));
    }

    #[test]
    fn binary_parse_errors() {
        assert_eq!(parse_binary(&[]), Err(BadPrefix::Short));
        assert_eq!(parse_binary(&[2, 0, 0]), Err(BadPrefix::Version(2)));
        assert_eq!(parse_binary(&[1, 0, 0, 0]), Err(BadPrefix::Short));
        assert_eq!(
            parse_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 3, b'a']),
            Err(BadPrefix::Short)
        );
        assert_eq!(
            parse_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(BadPrefix::Topic)
        );
        assert_eq!(
            parse_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 1, b'/']),
            Err(BadPrefix::Topic)
        );
        assert_eq!(
            parse_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xc3]),
            Err(BadPrefix::Topic)
        );
    }

    #[test]
    fn notices() {
        let e = Epoch::from_u64(0x3f9c_2a17_b4e6_d801);
        let n = Notice {
            epoch: e,
            seq: 1041,
            resync: None,
        };
        let (op, body) = unframe(&notice_frame("a", &n));
        assert_eq!(op, OpCode::Text);
        assert_eq!(
            body,
            br#"{"stream":"a","epoch":"3f9c2a17b4e6d801","seq":1041}"#
        );
        for r in [Reason::Epoch, Reason::Ahead, Reason::Trimmed, Reason::Lost] {
            let n = Notice {
                epoch: e,
                seq: 0,
                resync: Some(r),
            };
            let (_, body) = unframe(&notice_frame("x.y", &n));
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v,
                json!({"stream": "x.y", "epoch": "3f9c2a17b4e6d801", "seq": 0, "resync": r.name()})
            );
        }
    }

    #[test]
    fn split_frame_gives_kind_and_payload_slice() {
        use shardcast_proto::encode_frame;
        let f = encode_frame(OpCode::Text, b"{\"p\":1}");
        let (k, p) = split_frame(&f).unwrap();
        assert_eq!((k, &p[..]), (MessageKind::Text, &b"{\"p\":1}"[..]));
        let big = vec![7u8; 70_000];
        let f = encode_frame(OpCode::Binary, &big);
        let (k, p) = split_frame(&f).unwrap();
        assert_eq!((k, p.len()), (MessageKind::Binary, 70_000));
        assert!(split_frame(&encode_frame(OpCode::Ping, b"")).is_none());
    }
}
