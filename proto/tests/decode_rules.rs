//! One test per RFC 6455 receive rule, each asserting the exact close code.

use bytes::BytesMut;
use shardcast_proto::frame::write_header;
use shardcast_proto::*;

mod common;
use common::{decode_all, Ev};

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn server(max: usize) -> Decoder {
    Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: max,
    })
}

fn frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_client_frame(&mut out, op, fin, payload, KEY);
    out.to_vec()
}

fn error_code(dec: &mut Decoder, bytes: &[u8]) -> u16 {
    match decode_all(dec, bytes).pop() {
        Some(Ev::Error(c)) => c,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn decoder_is_small() {
    assert!(
        std::mem::size_of::<Decoder>() <= 64,
        "{}",
        std::mem::size_of::<Decoder>()
    );
}

#[test]
fn rsv_bits_rejected_at_header() {
    for rsv in 1..8u8 {
        // Only the first two bytes: rejected before the payload arrives.
        let mut d = server(1 << 20);
        assert_eq!(error_code(&mut d, &[0x81 | (rsv << 4), 0x85]), 1002);
        assert!(d.is_closed());
    }
}

#[test]
fn reserved_opcodes() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(error_code(&mut server(100), &[0x80 | op, 0x80]), 1002);
    }
}

#[test]
fn control_frame_too_long_or_fragmented() {
    assert_eq!(
        error_code(&mut server(1000), &[0x89, 0x80 | 126, 0, 126]),
        1002
    );
    assert_eq!(
        error_code(&mut server(1000), &frame(OpCode::Ping, false, b"x")),
        1002
    );
    // 125 is fine.
    let p = [9u8; 125];
    assert_eq!(
        decode_all(&mut server(1000), &frame(OpCode::Ping, true, &p)),
        [Ev::Ping(p.to_vec())]
    );
}

#[test]
fn masking_rule_per_role() {
    assert_eq!(error_code(&mut server(100), b"\x81\x02hi"), 1002);
    let mut client = Decoder::new(DecoderConfig {
        role: Role::Client,
        max_message_size: 100,
    });
    assert_eq!(
        error_code(&mut client, &frame(OpCode::Text, true, b"hi")),
        1002
    );
    let mut client = Decoder::new(DecoderConfig {
        role: Role::Client,
        max_message_size: 100,
    });
    assert_eq!(
        decode_all(&mut client, b"\x81\x02hi"),
        [Ev::Text(b"hi".to_vec())]
    );
}

#[test]
fn length_encoding_rules() {
    let top = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(error_code(&mut server(usize::MAX), &top), 1002);
    assert_eq!(
        error_code(&mut server(usize::MAX), &[0x82, 0xFE, 0, 125]),
        1002
    );
    let mut long = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
    long.extend_from_slice(&KEY);
    assert_eq!(error_code(&mut server(usize::MAX), &long), 1002);
}

#[test]
fn continuation_without_message() {
    assert_eq!(
        error_code(&mut server(100), &frame(OpCode::Continuation, true, b"x")),
        1002
    );
}

#[test]
fn new_message_inside_fragmented_one() {
    for op in [OpCode::Text, OpCode::Binary] {
        let mut bytes = frame(OpCode::Text, false, b"a");
        bytes.extend(frame(op, true, b"b"));
        assert_eq!(error_code(&mut server(100), &bytes), 1002);
    }
}

#[test]
fn size_limit_from_header_alone() {
    // Exactly max is fine.
    let p = vec![1u8; 1000];
    assert_eq!(
        decode_all(&mut server(1000), &frame(OpCode::Binary, true, &p)),
        [Ev::Binary(p)]
    );
    // max + 1: only the header is given, the error comes before any payload.
    let mut hdr = Vec::new();
    write_header(&mut hdr, true, OpCode::Binary, Some(KEY), 1001);
    assert_eq!(error_code(&mut server(1000), &hdr), 1009);
    // Across fragments: 600 assembled + header declaring 401.
    let mut bytes = frame(OpCode::Text, false, &[b'a'; 600]);
    write_header(&mut bytes, true, OpCode::Continuation, Some(KEY), 401);
    assert_eq!(error_code(&mut server(1000), &bytes), 1009);
    let mut bytes = frame(OpCode::Text, false, &[b'a'; 600]);
    bytes.extend(frame(OpCode::Continuation, true, &[b'b'; 400]));
    let mut expect = vec![b'a'; 600];
    expect.extend([b'b'; 400]);
    assert_eq!(decode_all(&mut server(1000), &bytes), [Ev::Text(expect)]);
}

#[test]
fn invalid_utf8_text() {
    assert_eq!(
        error_code(&mut server(100), &frame(OpCode::Text, true, b"a\xffb")),
        1007
    );
    // Binary is not validated.
    assert_eq!(
        decode_all(&mut server(100), &frame(OpCode::Binary, true, b"\xff")),
        [Ev::Binary(vec![0xff])]
    );
}

#[test]
fn utf8_fails_fast_on_partial_frame() {
    let mut payload = b"ok \xed\xa0\x80".to_vec(); // surrogate
    payload.extend([b'x'; 100]);
    let bytes = frame(OpCode::Text, true, &payload);
    // First half only: the second half never arrived, yet the error is reported now.
    let mut half = bytes[..bytes.len() / 2].to_vec();
    let mut d = server(1000);
    assert_eq!(d.decode(&mut half).result.unwrap_err().code.0, 1007);
    // Same inside a continuation frame still in flight.
    let mut bytes = frame(OpCode::Text, false, b"abc");
    let cont = frame(OpCode::Continuation, true, &payload);
    bytes.extend_from_slice(&cont[..cont.len() / 2]);
    assert_eq!(error_code(&mut server(1000), &bytes), 1007);
}

#[test]
fn partial_frames_are_not_unmasked_twice() {
    let payload: Vec<u8> = "héllo wörld €😀".repeat(10).into_bytes();
    let bytes = frame(OpCode::Text, true, &payload);
    let mut d = server(1000);
    let mut buf = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.push(*b);
        let res = d.decode(&mut buf);
        if i + 1 < bytes.len() {
            assert_eq!((res.consumed, res.result), (0, Ok(None)));
            assert!(d.bytes_needed() > 0);
        } else {
            assert_eq!(res.consumed, bytes.len());
            let Ok(Some(Event::Message(m))) = res.result else {
                panic!()
            };
            assert_eq!(m.payload, Payload::Borrowed(&payload[..]));
        }
    }
    assert_eq!(d.bytes_needed(), 0);
}

#[test]
fn bytes_needed_reports_remaining() {
    let bytes = frame(OpCode::Binary, true, &[0u8; 300]);
    let mut d = server(1000);
    let mut part = bytes[..50].to_vec();
    assert_eq!(d.decode(&mut part).consumed, 0);
    assert_eq!(d.bytes_needed(), bytes.len() - 50);
    let mut part = bytes[..1].to_vec();
    let mut d = server(1000);
    d.decode(&mut part);
    assert_eq!(d.bytes_needed(), 1);
}

#[test]
fn utf8_split_across_fragments_is_valid() {
    let s = "€😀".as_bytes();
    let mut bytes = frame(OpCode::Text, false, &s[..1]);
    bytes.extend(frame(OpCode::Continuation, false, &s[1..5]));
    bytes.extend(frame(OpCode::Ping, true, b"p"));
    bytes.extend(frame(OpCode::Continuation, true, &s[5..]));
    assert_eq!(
        decode_all(&mut server(100), &bytes),
        [Ev::Ping(b"p".to_vec()), Ev::Text(s.to_vec())]
    );
}

#[test]
fn message_ending_mid_code_point() {
    assert_eq!(
        error_code(
            &mut server(100),
            &frame(OpCode::Text, true, &[b'a', 0xE2, 0x82])
        ),
        1007
    );
    let mut bytes = frame(OpCode::Text, false, b"a");
    bytes.extend(frame(OpCode::Continuation, true, &[0xF0, 0x9F]));
    assert_eq!(error_code(&mut server(100), &bytes), 1007);
}

#[test]
fn close_payload_rules() {
    assert_eq!(
        error_code(&mut server(100), &frame(OpCode::Close, true, b"\x03")),
        1002
    );
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let p = code.to_be_bytes();
        assert_eq!(
            error_code(&mut server(100), &frame(OpCode::Close, true, &p)),
            1002,
            "{code}"
        );
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        let p = code.to_be_bytes();
        assert_eq!(
            decode_all(&mut server(100), &frame(OpCode::Close, true, &p)),
            [Ev::Close(Some((code, String::new())))]
        );
    }
    assert_eq!(
        error_code(
            &mut server(100),
            &frame(OpCode::Close, true, b"\x03\xe8\xc0")
        ),
        1002
    );
    assert_eq!(
        decode_all(&mut server(100), &frame(OpCode::Close, true, b"")),
        [Ev::Close(None)]
    );
    assert_eq!(
        decode_all(
            &mut server(100),
            &frame(
                OpCode::Close,
                true,
                &[&[3u8, 0xe8][..], "bye €".as_bytes()].concat()
            )
        ),
        [Ev::Close(Some((1000, "bye €".to_string())))]
    );
}

#[test]
fn nothing_after_close() {
    let mut bytes = frame(OpCode::Close, true, b"");
    bytes.extend(frame(OpCode::Text, true, b"late"));
    let mut d = server(100);
    assert_eq!(decode_all(&mut d, &bytes), [Ev::Close(None)]);
    assert!(d.is_closed());
    let mut late = frame(OpCode::Text, true, b"late");
    let res = d.decode(&mut late);
    assert_eq!((res.consumed, res.result), (0, Ok(None)));
}

#[test]
fn ping_pong_and_interleaving() {
    let mut bytes = frame(OpCode::Binary, false, b"ab");
    bytes.extend(frame(OpCode::Ping, true, b"x"));
    bytes.extend(frame(OpCode::Continuation, false, b""));
    bytes.extend(frame(OpCode::Pong, true, b""));
    bytes.extend(frame(OpCode::Continuation, true, b"cd"));
    bytes.extend(frame(OpCode::Text, true, b"next"));
    let mut d = server(100);
    assert_eq!(
        decode_all(&mut d, &bytes),
        [
            Ev::Ping(b"x".to_vec()),
            Ev::Pong(vec![]),
            Ev::Binary(b"abcd".to_vec()),
            Ev::Text(b"next".to_vec())
        ]
    );
    assert!(!d.in_fragmented_message());
}

#[test]
fn empty_messages() {
    let mut bytes = frame(OpCode::Text, true, b"");
    bytes.extend(frame(OpCode::Binary, true, b""));
    bytes.extend(frame(OpCode::Text, false, b""));
    bytes.extend(frame(OpCode::Continuation, true, b""));
    assert_eq!(
        decode_all(&mut server(0), &bytes),
        [Ev::Text(vec![]), Ev::Binary(vec![]), Ev::Text(vec![])]
    );
}

#[test]
fn length_boundaries() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 65537] {
        let p: Vec<u8> = (0..len).map(|i| (i % 128) as u8).collect();
        assert_eq!(
            decode_all(&mut server(1 << 20), &frame(OpCode::Text, true, &p)),
            [Ev::Text(p.clone())],
            "{len}"
        );
        // Server frames decode in the client role.
        let mut client = Decoder::new(DecoderConfig {
            role: Role::Client,
            max_message_size: 1 << 20,
        });
        assert_eq!(
            decode_all(&mut client, &encode_frame(OpCode::Binary, &p)),
            [Ev::Binary(p)]
        );
    }
}

#[test]
fn single_frame_is_borrowed_fragmented_is_assembled() {
    let mut buf = frame(OpCode::Binary, true, b"zero copy");
    let res = server(100).decode(&mut buf);
    assert!(matches!(
        res.result,
        Ok(Some(Event::Message(Message {
            payload: Payload::Borrowed(b"zero copy"),
            ..
        })))
    ));
    let mut bytes = frame(OpCode::Binary, false, b"a");
    bytes.extend(frame(OpCode::Continuation, true, b"b"));
    let mut d = server(100);
    let r = d.decode(&mut bytes);
    assert_eq!((r.consumed, r.result), (7, Ok(None)));
    assert!(d.in_fragmented_message());
    assert!(d.reassembly_bytes() >= 1, "the parked fragment is visible");
    let r = d.decode(&mut bytes[7..]);
    assert!(matches!(
        r.result,
        Ok(Some(Event::Message(Message {
            payload: Payload::Assembled(_),
            ..
        })))
    ));
    assert_eq!(d.reassembly_bytes(), 0, "freed with the message");
}
