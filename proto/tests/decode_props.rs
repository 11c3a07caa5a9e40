//! Property tests: encode → decode round trips under random fragmentation, interleaved control
//! frames and arbitrary read boundaries; arbitrary input never panics.

use bytes::BytesMut;
use proptest::prelude::*;
use shardcast_proto::*;

mod common;
use common::{decode_all, decode_chunked, Ev};

/// One message to send: text or binary payload, split into fragments at the given cut points,
/// with a ping inserted after the fragments flagged in `pings`.
#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<usize>,
    pings: Vec<bool>,
    mask: [u8; 4],
}

fn msg() -> impl Strategy<Value = Msg> {
    let text = ".{0,300}".prop_map(|s: String| (true, s.into_bytes()));
    let bin = proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b));
    (
        prop_oneof![text, bin],
        proptest::collection::vec(any::<usize>(), 0..4),
        proptest::collection::vec(any::<bool>(), 0..5),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), cuts, pings, mask)| {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (payload.len() + 1)).collect();
            cuts.sort_unstable();
            Msg {
                text,
                payload,
                cuts,
                pings,
                mask,
            }
        })
}

/// Encodes the messages as masked client frames; returns the stream and the expected events.
fn encode(msgs: &[Msg]) -> (Vec<u8>, Vec<Ev>) {
    let mut out = BytesMut::new();
    let mut expected = Vec::new();
    for m in msgs {
        let mut bounds = vec![0];
        bounds.extend(&m.cuts);
        bounds.push(m.payload.len());
        let n = bounds.len() - 1;
        for i in 0..n {
            let op = match (i, m.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let part = &m.payload[bounds[i]..bounds[i + 1]];
            encode_client_frame(&mut out, op, i + 1 == n, part, m.mask);
            // Pings only between fragments of the same message (or after it).
            if m.pings.get(i).copied().unwrap_or(false) {
                let p = [i as u8; 3];
                encode_client_frame(&mut out, OpCode::Ping, true, &p, m.mask);
                if i + 1 < n {
                    expected.push(Ev::Ping(p.to_vec()));
                } else {
                    // After the final fragment: the message comes first.
                    expected.push(ev_of(m));
                    expected.push(Ev::Ping(p.to_vec()));
                    continue;
                }
            }
            if i + 1 == n {
                expected.push(ev_of(m));
            }
        }
    }
    (out.to_vec(), expected)
}

fn ev_of(m: &Msg) -> Ev {
    if m.text {
        Ev::Text(m.payload.clone())
    } else {
        Ev::Binary(m.payload.clone())
    }
}

fn server() -> Decoder {
    Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: 1 << 20,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_any_fragmentation(msgs in proptest::collection::vec(msg(), 1..6)) {
        let (stream, expected) = encode(&msgs);
        let one_shot = decode_all(&mut server(), &stream);
        prop_assert_eq!(&one_shot, &expected);
        let bytewise = decode_chunked(&mut server(), &stream, &mut std::iter::repeat(1));
        prop_assert_eq!(&bytewise, &expected);
    }

    #[test]
    fn read_boundaries_do_not_matter(
        msgs in proptest::collection::vec(msg(), 1..6),
        sizes in proptest::collection::vec(1usize..200, 1..64),
    ) {
        let (stream, expected) = encode(&msgs);
        let chunked = decode_chunked(&mut server(), &stream, &mut sizes.into_iter().cycle());
        prop_assert_eq!(chunked, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_agrees(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        sizes in proptest::collection::vec(1usize..40, 1..16),
        client in any::<bool>(),
        max in 0usize..300,
    ) {
        let role = if client { Role::Client } else { Role::Server };
        let cfg = DecoderConfig { role, max_message_size: max };
        let one_shot = decode_all(&mut Decoder::new(cfg), &bytes);
        let chunked = decode_chunked(&mut Decoder::new(cfg), &bytes, &mut sizes.into_iter().cycle());
        // Read boundaries must not change the outcome, errors included (fail-fast UTF-8 checks
        // partial frames, so a one-shot decode sees the same failure at the same point).
        prop_assert_eq!(chunked, one_shot);
    }

    #[test]
    fn corrupted_valid_streams_never_panic(
        msgs in proptest::collection::vec(msg(), 1..4),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let (mut stream, _) = encode(&msgs);
        for (at, x) in flips {
            let i = at % stream.len();
            stream[i] ^= x;
        }
        let a = decode_all(&mut server(), &stream);
        let b = decode_chunked(&mut server(), &stream, &mut std::iter::repeat(1));
        prop_assert_eq!(a, b);
    }
}
