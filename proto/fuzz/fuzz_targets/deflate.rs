//! Fuzz permessage-deflate: offer negotiation on arbitrary header values, and the inflater on
//! arbitrary data.
//!
//! Input layout: byte 0 picks the output limit (0..=255 × 64 bytes) and the read split, the
//! rest is both a `Sec-WebSocket-Extensions` value (up to the first `\n`) and compressed data.
//! Properties: nothing panics; the inflater never produces more than the limit; feeding the
//! data in pieces gives the same outcome (bytes or error code) as feeding it whole; a response
//! is only ever built from an accepted offer and parses back as one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast_proto::deflate::{negotiate, Inflater};

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let header = input.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if let Some(agreed) = negotiate([header]) {
        let response = agreed.response();
        assert_eq!(negotiate([response.as_bytes()]), Some(agreed), "{response}");
    }

    let limit = usize::from(knob) * 64;
    let mut whole = Vec::new();
    let a = Inflater::new(false).inflate(input, limit, &mut whole);
    assert!(whole.len() <= limit + 1);
    let mut pieces = Vec::new();
    let mut inf = Inflater::new(false);
    let step = usize::from(knob % 17) + 1;
    let mut b = Ok(());
    for chunk in input.chunks(step) {
        b = inf.feed(chunk, limit, &mut pieces);
        if b.is_err() {
            break;
        }
    }
    if b.is_ok() {
        b = inf.finish(limit, &mut pieces);
    }
    assert_eq!(a.map_err(|e| e.code), b.map_err(|e| e.code));
    if a.is_ok() {
        assert_eq!(whole, pieces);
    }
});
