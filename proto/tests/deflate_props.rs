//! permessage-deflate against a reference implementation (flate2, i.e. zlib's algorithm):
//! - what our [`Deflater`] sends, flate2 inflates (fresh per message, as a client told
//!   `server_no_context_takeover` does), after our [`Decoder`] read it in the client role in
//!   arbitrary read chunks;
//! - what flate2 sends, with and without context takeover, fragmented into random frames (RSV1
//!   on the first only) and read in arbitrary chunks, our decoder + [`Inflater`] read back;
//! - the RSV1 rules of the decoder (1002 wherever RSV1 may not appear).

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use proptest::prelude::*;
use shardcast_proto::deflate::{Deflater, Inflater, TAIL};
use shardcast_proto::frame::{write_header_rsv, RSV1};
use shardcast_proto::mask::apply_mask;
use shardcast_proto::*;

mod common;
use common::{decode_all, decode_chunked, Ev};

/// Reference inflate of one message sent without context takeover.
fn reference_inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    loop {
        let status = d
            .decompress_vec(
                &input[d.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .expect("reference inflate");
        if status == Status::StreamEnd || d.total_in() as usize == input.len() {
            return out;
        }
        out.reserve(out.capacity() + 64);
    }
}

/// A reference sender: flate2 with a sync flush and the tail removed, keeping its window
/// between messages when `takeover`.
struct Sender {
    c: Compress,
    takeover: bool,
}

impl Sender {
    fn new(level: u32, takeover: bool) -> Sender {
        Sender {
            c: Compress::new(Compression::new(level), false),
            takeover,
        }
    }

    fn send(&mut self, msg: &[u8]) -> Vec<u8> {
        if !self.takeover {
            self.c.reset();
        }
        if msg.is_empty() {
            // zlib flushes nothing new after a flush: an empty message is the header byte of
            // an empty stored block (RFC 7692 §7.2.3.6).
            return vec![0x00];
        }
        let start = self.c.total_in();
        let mut out = Vec::with_capacity(msg.len() + 64);
        loop {
            let done = (self.c.total_in() - start) as usize;
            self.c
                .compress_vec(&msg[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (self.c.total_in() - start) as usize == msg.len() && out.ends_with(&TAIL) {
                break;
            }
            out.reserve(out.capacity() + 64);
        }
        out.truncate(out.len() - 4);
        out
    }
}

/// Append `payload` as masked client frames split at `cuts`, RSV1 on the first.
fn client_frames(out: &mut BytesMut, text: bool, payload: &[u8], cuts: &[usize], mask: [u8; 4]) {
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(payload.len());
    let n = bounds.len() - 1;
    for i in 0..n {
        let op = match (i, text) {
            (0, true) => OpCode::Text,
            (0, false) => OpCode::Binary,
            _ => OpCode::Continuation,
        };
        let part = &payload[bounds[i]..bounds[i + 1]];
        let rsv = if i == 0 { RSV1 } else { 0 };
        write_header_rsv(out, i + 1 == n, rsv, op, Some(mask), part.len() as u64);
        let start = out.len();
        out.extend_from_slice(part);
        apply_mask(&mut out[start..], mask, 0);
    }
}

fn server() -> Decoder {
    let mut d = Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: 1 << 20,
    });
    d.set_permessage_deflate(true);
    d
}

/// JSON-like text (compressible) or arbitrary bytes.
fn message() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let json = proptest::collection::vec((0u32..100_000, "[a-z]{1,8}", any::<bool>()), 0..60)
        .prop_map(|fields| {
            let mut s = String::from("{");
            for (i, (n, k, b)) in fields.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("\"{k}\":[\"{n}.{}\",{b}]", n % 97));
            }
            s.push('}');
            (true, s.into_bytes())
        });
    let text = ".{0,400}".prop_map(|s: String| (true, s.into_bytes()));
    let bin = proptest::collection::vec(any::<u8>(), 0..600).prop_map(|b| (false, b));
    prop_oneof![3 => json, 1 => text, 1 => bin]
}

fn cuts(len: usize, raw: Vec<usize>) -> Vec<usize> {
    let mut c: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
    c.sort_unstable();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn reference_inflates_what_we_send(
        msgs in proptest::collection::vec(message(), 1..8),
        level in 1u8..=12,
        sizes in proptest::collection::vec(1usize..300, 1..32),
    ) {
        let mut deflater = Deflater::new(level);
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (text, m) in &msgs {
            let op = if *text { OpCode::Text } else { OpCode::Binary };
            match deflater.encode_frame(op, m) {
                Some(f) => {
                    stream.extend_from_slice(&f);
                    expected.push((*text, true, m.clone()));
                }
                None => {
                    stream.extend_from_slice(&encode_frame(op, m));
                    expected.push((*text, false, m.clone()));
                }
            }
        }
        let mut client = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
        client.set_permessage_deflate(true);
        let events = decode_chunked(&mut client, &stream, &mut sizes.into_iter().cycle());
        prop_assert_eq!(events.len(), expected.len());
        for (ev, (text, compressed, m)) in events.into_iter().zip(expected) {
            match ev {
                Ev::Compressed(t, payload) => {
                    prop_assert!(compressed);
                    prop_assert_eq!(t, text);
                    prop_assert!(payload.len() < m.len());
                    prop_assert_eq!(reference_inflate(&payload), m);
                }
                Ev::Text(p) | Ev::Binary(p) => {
                    prop_assert!(!compressed);
                    prop_assert_eq!(p, m);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    #[test]
    fn we_inflate_what_the_reference_sends(
        msgs in proptest::collection::vec((message(), proptest::collection::vec(any::<usize>(), 0..4)), 1..8),
        takeover in any::<bool>(),
        level in 0u32..=9,
        sizes in proptest::collection::vec(1usize..300, 1..32),
        mask in any::<[u8; 4]>(),
    ) {
        let mut tx = Sender::new(level, takeover);
        let mut stream = BytesMut::new();
        for ((text, m), raw_cuts) in &msgs {
            let wire = tx.send(m);
            client_frames(&mut stream, *text, &wire, &cuts(wire.len(), raw_cuts.clone()), mask);
        }
        let events = decode_chunked(&mut server(), &stream, &mut sizes.into_iter().cycle());
        prop_assert_eq!(events.len(), msgs.len());
        let mut rx = Inflater::new(takeover);
        for (ev, ((text, m), _)) in events.into_iter().zip(&msgs) {
            let Ev::Compressed(t, payload) = ev else {
                return Err(TestCaseError::fail(format!("not compressed: {ev:?}")));
            };
            prop_assert_eq!(t, *text);
            let mut out = Vec::new();
            rx.inflate_message(t, &payload, 1 << 20, &mut out).unwrap();
            prop_assert_eq!(&out, m);
        }
    }

    #[test]
    fn inflate_limit_is_exact(len in 0usize..5000, slack in 0usize..3) {
        let m: Vec<u8> = (0..len).map(|i| b"abcab"[i % 5]).collect();
        let wire = Sender::new(6, false).send(&m);
        let mut rx = Inflater::new(false);
        let limit = len + slack;
        let mut out = Vec::new();
        prop_assert!(rx.inflate(&wire, limit, &mut out).is_ok());
        prop_assert_eq!(&out, &m);
        if len > 0 {
            let err = rx.inflate(&wire, len - 1, &mut Vec::new()).unwrap_err();
            prop_assert_eq!(err.code.0, 1009);
        }
    }
}

#[test]
fn rsv1_only_where_negotiated_and_on_first_frames() {
    let mask = [1, 2, 3, 4];
    let wire = Sender::new(6, false).send(b"hello hello hello");
    let mut one = BytesMut::new();
    client_frames(&mut one, true, &wire, &[], mask);
    // Not negotiated: 1002, as for any reserved bit.
    let mut plain = Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: 1 << 20,
    });
    assert_eq!(decode_all(&mut plain, &one), [Ev::Error(1002)]);
    // Negotiated: a compressed message.
    assert_eq!(
        decode_all(&mut server(), &one),
        [Ev::Compressed(true, wire.clone())]
    );
    // RSV1 on a continuation frame.
    let mut bad = BytesMut::new();
    encode_client_frame(&mut bad, OpCode::Text, false, b"a", mask);
    write_header_rsv(&mut bad, true, RSV1, OpCode::Continuation, Some(mask), 0);
    assert_eq!(decode_all(&mut server(), &bad), [Ev::Error(1002)]);
    // ... even when the message's first frame had it.
    let mut bad = BytesMut::new();
    write_header_rsv(&mut bad, false, RSV1, OpCode::Binary, Some(mask), 0);
    write_header_rsv(&mut bad, true, RSV1, OpCode::Continuation, Some(mask), 0);
    assert_eq!(decode_all(&mut server(), &bad), [Ev::Error(1002)]);
    // RSV1 on control frames.
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let mut bad = BytesMut::new();
        write_header_rsv(&mut bad, true, RSV1, op, Some(mask), 0);
        assert_eq!(decode_all(&mut server(), &bad), [Ev::Error(1002)], "{op:?}");
    }
    // RSV2 / RSV3 stay reserved.
    for rsv in [1u8, 2, 3, 5] {
        let mut bad = BytesMut::new();
        write_header_rsv(&mut bad, true, rsv, OpCode::Text, Some(mask), 0);
        assert_eq!(decode_all(&mut server(), &bad), [Ev::Error(1002)], "{rsv}");
    }
    // A control frame between the fragments of a compressed message is fine.
    let mut ok = BytesMut::new();
    client_frames(&mut ok, false, &wire, &[3], mask);
    let split = 2 + 4 + 3; // the first fragment: header, mask key, 3 bytes
    let mut with_ping = BytesMut::from(&ok[..split]);
    encode_client_frame(&mut with_ping, OpCode::Ping, true, b"p", mask);
    with_ping.extend_from_slice(&ok[split..]);
    assert_eq!(
        decode_all(&mut server(), &with_ping),
        [Ev::Ping(b"p".to_vec()), Ev::Compressed(false, wire.clone())]
    );
    // Compressed text is not UTF-8-checked by the decoder (the bytes are deflate data).
    let garbage = [0xff, 0xfe, 0xfd];
    let mut g = BytesMut::new();
    client_frames(&mut g, true, &garbage, &[], mask);
    assert_eq!(
        decode_all(&mut server(), &g),
        [Ev::Compressed(true, garbage.to_vec())]
    );
    // The size limit applies to the compressed bytes in the decoder.
    let mut small = Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: 4,
    });
    small.set_permessage_deflate(true);
    assert_eq!(decode_all(&mut small, &one), [Ev::Error(1009)]);
}
