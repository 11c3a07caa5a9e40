//! Fuzz the frame decoder.
//!
//! Input layout: byte 0 picks the role (bit 0) and the read-chunk size (bits 1..7, 0 = bytewise),
//! byte 1 the max message size (bits 0..6: 0..=127, small so the 1009 path is reached) and
//! whether permessage-deflate was negotiated (bit 7: RSV1 allowed on first frames), the rest is
//! what the peer sends. Properties: nothing panics; decoding in chunks gives the same events as
//! decoding everything at once; events are consistent (control payloads ≤ 125, text is UTF-8
//! unless compressed, compressed only when negotiated, messages within the size limit, nothing
//! after Close or an error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast_proto::{Decoder, DecoderConfig, Event, MessageKind, Role};

/// Owned, comparable form of one decode outcome.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Msg(MessageKind, bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Err(u16),
}

fn check(ev: &Event<'_>, max: usize, deflate: bool) -> Out {
    match ev {
        Event::Message(m) => {
            let p = m.payload.as_bytes();
            assert!(p.len() <= max, "message over the limit");
            assert!(deflate || !m.compressed, "compressed without negotiation");
            if m.kind == MessageKind::Text && !m.compressed {
                assert!(std::str::from_utf8(p).is_ok(), "text not UTF-8");
            }
            Out::Msg(m.kind, m.compressed, p.to_vec())
        }
        Event::Ping(p) => {
            assert!(p.len() <= 125);
            Out::Ping(p.to_vec())
        }
        Event::Pong(p) => {
            assert!(p.len() <= 125);
            Out::Pong(p.to_vec())
        }
        Event::Close(c) => {
            if let Some((code, reason)) = c {
                assert!(code.is_valid_on_wire());
                assert!(reason.len() <= 123);
            }
            Out::Close(c.map(|(c, r)| (c.0, r.to_string())))
        }
    }
}

/// Feeds `input` in reads of `chunk` bytes (0 = everything at once), draining consumed bytes.
fn run(cfg: DecoderConfig, deflate: bool, input: &[u8], chunk: usize) -> Vec<Out> {
    let mut dec = Decoder::new(cfg);
    dec.set_permessage_deflate(deflate);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        loop {
            let len = buf.len();
            let d = dec.decode(&mut buf);
            let consumed = d.consumed;
            assert!(consumed <= len);
            match d.result {
                Err(e) => {
                    assert!(dec.is_closed());
                    out.push(Out::Err(e.code.0));
                    return out;
                }
                Ok(Some(ev)) => {
                    assert!(consumed > 0);
                    let closes = matches!(ev, Event::Close(_));
                    out.push(check(&ev, cfg.max_message_size, deflate));
                    if closes {
                        assert!(dec.is_closed());
                        let mut rest = buf[consumed..].to_vec();
                        rest.extend_from_slice(&input[pos..]);
                        let after = dec.decode(&mut rest);
                        assert_eq!((after.consumed, after.result), (0, Ok(None)));
                        return out;
                    }
                }
                Ok(None) if consumed == 0 => break,
                Ok(None) => {}
            }
            buf.drain(..consumed);
        }
        if pos == input.len() {
            return out;
        }
        let n = if chunk == 0 {
            input.len() - pos
        } else {
            chunk.min(input.len() - pos)
        };
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, max, input @ ..] = data else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let cfg = DecoderConfig {
        role,
        max_message_size: usize::from(max & 0x7f),
    };
    let deflate = max & 0x80 != 0;
    let whole = run(cfg, deflate, input, 0);
    let chunked = run(cfg, deflate, input, usize::from(mode >> 1).max(1));
    assert_eq!(whole, chunked);
});
