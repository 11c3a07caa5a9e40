//! Frame codec benchmarks against tungstenite on identical inputs.
//!
//! decode: masked client text messages → parse + unmask + UTF-8 validate, steady state (one
//! decoder / one tungstenite socket reading a stream of identical messages). `shardcast`
//! decodes in place; `shardcast+copy` first copies each message into its read buffer, as
//! tungstenite copies from its stream. encode: one final unmasked server
//! frame into a fresh buffer. fanout_encode: one broadcast prepared for `FANOUT` connections;
//! shardcast encodes once and hands each connection a `Bytes` clone (a refcount increment), as
//! the engine does, while a tungstenite server writes one frame per connection, so it encodes
//! `FANOUT` times. unmask: 64 KiB in place, word-at-a-time vs scalar.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardcast_proto::mask::{apply_mask, apply_mask_scalar};
use shardcast_proto::{
    encode_client_frame, encode_frame, Decoder, DecoderConfig, Event, OpCode, Role,
};
use std::hint::black_box;
use std::io::{Cursor, Read, Write};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{Data, OpCode as TOpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::Role as TRole;
use tungstenite::{Message as TMessage, WebSocket};

const SIZES: [(usize, &str); 5] = [
    (16, "16B"),
    (125, "125B"),
    (1024, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
];
/// Connections one broadcast is prepared for in `fanout_encode`.
const FANOUT: usize = 1000;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Mixed ASCII and multi-byte text, so validation cannot take an all-ASCII shortcut everywhere.
fn text(len: usize) -> Vec<u8> {
    let unit = "shardcast broadcast héllo wörld € 😀 ".as_bytes();
    let mut out = Vec::with_capacity(len + unit.len());
    while out.len() < len {
        out.extend_from_slice(unit);
    }
    // Cut at a char boundary at or below `len`, then pad with ASCII to exactly `len`.
    let mut end = len;
    while std::str::from_utf8(&out[..end]).is_err() {
        end -= 1;
    }
    out.truncate(end);
    out.resize(len, b'x');
    out
}

/// A read+write in-memory stream for tungstenite.
struct Mem(Cursor<Vec<u8>>);

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn decoder() -> Decoder {
    Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: 16 << 20,
    })
}

fn decode_one(dec: &mut Decoder, buf: &mut [u8]) -> usize {
    let d = dec.decode(buf);
    match d.result {
        Ok(Some(Event::Message(m))) => m.payload.as_bytes().len(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Messages per timed batch: enough to amortize per-batch setup, bounded in memory.
fn batch_len(wire_len: usize) -> u64 {
    ((8 << 20) / wire_len).clamp(1, 1024) as u64
}

/// Runs `iters` messages in batches; `setup` (untimed) builds a batch's state from the batch
/// size, `run` (timed) decodes that many messages from it.
fn batched<S>(
    iters: u64,
    wire_len: usize,
    mut setup: impl FnMut(usize) -> S,
    mut run: impl FnMut(&mut S, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(batch_len(wire_len));
        let mut state = setup(n as usize);
        let start = Instant::now();
        run(&mut state, n as usize);
        total += start.elapsed();
        left -= n;
    }
    total
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (size, name) in SIZES {
        let mut wire = BytesMut::new();
        encode_client_frame(&mut wire, OpCode::Text, true, &text(size), KEY);
        let wire = wire.to_vec();
        let stream = wire.repeat(batch_len(wire.len()) as usize);
        let len = wire.len();
        g.throughput(Throughput::Bytes(size as u64));

        // Steady state for everyone: one decoder/socket reading a stream of messages.
        g.bench_function(BenchmarkId::new("shardcast", name), |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    len,
                    |n| stream[..n * len].to_vec(),
                    |buf, n| {
                        let mut dec = decoder();
                        for i in 0..n {
                            black_box(decode_one(&mut dec, &mut buf[i * len..(i + 1) * len]));
                        }
                    },
                )
            })
        });
        // Also copies every message into the read buffer, as tungstenite copies from its stream.
        let mut buf = vec![0u8; len];
        g.bench_function(BenchmarkId::new("shardcast+copy", name), |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    len,
                    |n| stream[..n * len].to_vec(),
                    |src, n| {
                        let mut dec = decoder();
                        for i in 0..n {
                            buf.copy_from_slice(&src[i * len..(i + 1) * len]);
                            black_box(decode_one(&mut dec, &mut buf));
                        }
                    },
                )
            })
        });
        g.bench_function(BenchmarkId::new("tungstenite", name), |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    len,
                    |n| {
                        let input = Mem(Cursor::new(stream[..n * len].to_vec()));
                        WebSocket::from_raw_socket(input, TRole::Server, None)
                    },
                    |ws, n| {
                        for _ in 0..n {
                            match ws.read().unwrap() {
                                TMessage::Text(t) => black_box(t.len()),
                                other => panic!("unexpected {other:?}"),
                            };
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (size, name) in SIZES {
        let payload = Bytes::from(text(size));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("shardcast", name), |b| {
            b.iter(|| black_box(encode_frame(OpCode::Text, black_box(&payload))))
        });
        g.bench_function(BenchmarkId::new("tungstenite", name), |b| {
            b.iter(|| {
                let frame = Frame::message(payload.clone(), TOpCode::Data(Data::Text), true);
                let mut out = Vec::with_capacity(frame.len());
                frame.format(&mut out).unwrap();
                black_box(out)
            })
        });
    }
    g.finish();
}

fn bench_fanout_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_encode");
    for (size, name) in [(64, "64B"), (1024, "1KiB")] {
        let payload = Bytes::from(text(size));
        // Per broadcast: throughput in elements is then connections served per second.
        g.throughput(Throughput::Elements(FANOUT as u64));
        g.bench_function(BenchmarkId::new("shardcast", name), |b| {
            b.iter(|| {
                let frame = encode_frame(OpCode::Text, black_box(&payload));
                let mut outs: Vec<Bytes> = Vec::with_capacity(FANOUT);
                for _ in 0..FANOUT {
                    outs.push(frame.clone());
                }
                black_box(outs)
            })
        });
        g.bench_function(BenchmarkId::new("tungstenite", name), |b| {
            b.iter(|| {
                let mut outs: Vec<Vec<u8>> = Vec::with_capacity(FANOUT);
                for _ in 0..FANOUT {
                    let frame = Frame::message(
                        black_box(&payload).clone(),
                        TOpCode::Data(Data::Text),
                        true,
                    );
                    let mut out = Vec::with_capacity(frame.len());
                    frame.format(&mut out).unwrap();
                    outs.push(out);
                }
                black_box(outs)
            })
        });
    }
    g.finish();
}

fn bench_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    let mut buf = text(64 << 10);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("fast/64KiB", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
    });
    g.bench_function("scalar/64KiB", |b| {
        b.iter(|| apply_mask_scalar(black_box(&mut buf), KEY, 1))
    });
    g.finish();
}

fn bench_utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let buf = text(64 << 10);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("validator/64KiB", |b| {
        b.iter(|| {
            let mut v = shardcast_proto::utf8::Utf8Validator::new();
            v.feed(black_box(&buf)).unwrap();
            v.finish().unwrap();
        })
    });
    g.bench_function("std/64KiB", |b| {
        b.iter(|| std::str::from_utf8(black_box(&buf)).unwrap().len())
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_encode,
    bench_fanout_encode,
    bench_unmask,
    bench_utf8
);
criterion_main!(benches);
