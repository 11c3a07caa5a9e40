//! permessage-deflate: the compressor candidates for compress-once broadcast, measured on
//! realistic JSON market data (bench/src/marketdata.rs: trade, book ticker, 24 h ticker and
//! depth-update events of 100 B – 4 KB), each message compressed on its own (no context
//! takeover), as the engine does once per published message.
//!
//! Candidates: `libdeflate` (C, one-shot, via the `libdeflater` crate; its output ends in a
//! final block, so one `0x00` byte is appended, RFC 7692 §7.2.3.4), `zlib-rs` (pure Rust zlib,
//! through `flate2`, sync flush, the `00 00 ff ff` tail removed) and `miniz_oxide` (pure Rust,
//! flate2's default backend, sync flush), each at the levels worth considering. `proto` is the
//! shipped encoder ([`shardcast_proto::deflate::Deflater`]) on the same input, whole frame.
//!
//! Three modes:
//! - `cargo bench -p shardcast-proto --bench deflate`: criterion, ns per message per corpus;
//! - `DEFLATE_TABLE=1 cargo bench -p shardcast-proto --bench deflate`: prints the ratio table
//!   (compressed / raw bytes per corpus and candidate) and a quick min-of-rounds ns/message,
//!   then exits;
//! - `DEFLATE_ONLY=zlib-rs:1` (any `candidate:level`, or `proto`): compresses the mixed corpus
//!   once and exits, for `valgrind --tool=callgrind` instruction counts (repeatable on a noisy
//!   machine).

#[path = "../../bench/src/marketdata.rs"]
// Its unit tests belong to shardcast-bench (they are not compiled here).
#[allow(dead_code, unused_imports)]
mod marketdata;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use marketdata::{corpus, Feed, Kind};
use miniz_oxide::deflate::core::{compress as mz_compress, CompressorOxide, TDEFLFlush};
use miniz_oxide::DataFormat;
use shardcast_proto::deflate::Deflater;
use shardcast_proto::OpCode;
use std::hint::black_box;
use std::time::Instant;

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// One compressor, reused across messages (as one per shard is).
enum Cand {
    Libdeflate(libdeflater::Compressor),
    ZlibRs(Compress),
    Miniz(Box<CompressorOxide>),
    Proto(Deflater),
}

impl Cand {
    fn new(name: &str, level: u32) -> Cand {
        match name {
            "libdeflate" => Cand::Libdeflate(libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap(),
            )),
            "zlib-rs" => Cand::ZlibRs(Compress::new_with_window_bits(
                Compression::new(level),
                false,
                15,
            )),
            "miniz" => {
                let mut c = CompressorOxide::default();
                c.set_format_and_level(DataFormat::Raw, level as u8);
                Cand::Miniz(Box::new(c))
            }
            "proto" => Cand::Proto(Deflater::new(level as u8)),
            _ => panic!("unknown candidate {name}"),
        }
    }

    /// Compress `msg` on its own into `out` (cleared first): a permessage-deflate payload.
    fn compress(&mut self, msg: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Cand::Libdeflate(c) => {
                out.resize(c.deflate_compress_bound(msg.len()) + 1, 0);
                let n = c.deflate_compress(msg, out).unwrap();
                out.truncate(n);
                out.push(0);
            }
            Cand::ZlibRs(c) => {
                c.reset();
                out.reserve(msg.len() + 64);
                loop {
                    c.compress_vec(msg, out, FlushCompress::Sync).unwrap();
                    if c.total_in() as usize == msg.len() && out.ends_with(&TAIL) {
                        break;
                    }
                    out.reserve(out.capacity());
                }
                out.truncate(out.len() - 4);
            }
            Cand::Miniz(c) => {
                c.reset();
                out.resize(msg.len() + msg.len() / 8 + 64, 0);
                let (_, consumed, n) = mz_compress(c, msg, out, TDEFLFlush::Sync);
                assert_eq!(consumed, msg.len());
                out.truncate(n - 4);
            }
            Cand::Proto(d) => {
                if let Some(f) = d.encode_frame(OpCode::Text, msg) {
                    out.extend_from_slice(&f);
                }
            }
        }
    }
}

/// Inflate one permessage-deflate payload (the reference check that every candidate's output
/// is valid).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(payload.len() * 8 + 64);
    loop {
        let before = d.total_in();
        let status = d
            .decompress_vec(
                &input[d.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .unwrap();
        // A final block (libdeflate) ends the stream before the appended tail.
        if d.total_in() as usize == input.len() || status == flate2::Status::StreamEnd {
            return out;
        }
        if d.total_in() == before {
            out.reserve(out.capacity());
        }
    }
}

const CANDIDATES: [(&str, u32); 9] = [
    ("libdeflate", 1),
    ("libdeflate", 3),
    ("libdeflate", 6),
    ("zlib-rs", 1),
    ("zlib-rs", 3),
    ("zlib-rs", 6),
    ("miniz", 1),
    ("miniz", 3),
    ("miniz", 6),
];

fn corpora() -> Vec<(&'static str, Vec<String>)> {
    let mut mixed = Feed::new(42);
    vec![
        ("trade", corpus(Kind::Trade, 512, 1)),
        ("bookTicker", corpus(Kind::BookTicker, 512, 2)),
        ("ticker", corpus(Kind::Ticker, 512, 3)),
        ("depth5", corpus(Kind::Depth(5), 512, 4)),
        ("depth20", corpus(Kind::Depth(20), 256, 5)),
        ("depth55", corpus(Kind::Depth(55), 128, 6)),
        ("mixed", (0..512).map(|_| mixed.mixed()).collect()),
    ]
}

/// Ratio and a quick min-of-7-rounds time per message for every candidate and corpus.
fn table() {
    let corpora = corpora();
    print!("| candidate |");
    for (name, c) in &corpora {
        let avg = c.iter().map(String::len).sum::<usize>() / c.len();
        print!(" {name} ({avg} B) |");
    }
    println!();
    println!("|---|{}", "---|".repeat(corpora.len()));
    let mut out = Vec::new();
    for (cand, level) in CANDIDATES {
        let mut c = Cand::new(cand, level);
        print!("| {cand} -{level} |");
        for (_, msgs) in &corpora {
            let (mut raw, mut packed) = (0usize, 0usize);
            for m in msgs {
                c.compress(m.as_bytes(), &mut out);
                assert_eq!(inflate(&out), m.as_bytes(), "{cand} -{level}");
                raw += m.len();
                packed += out.len();
            }
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                for m in msgs {
                    c.compress(black_box(m.as_bytes()), &mut out);
                }
                best = best.min(t.elapsed().as_nanos() as f64 / msgs.len() as f64);
            }
            print!(" {:.3} / {:.0} ns |", packed as f64 / raw as f64, best);
        }
        println!();
    }
}

fn bench(c: &mut Criterion) {
    if std::env::var_os("DEFLATE_TABLE").is_some() {
        table();
        std::process::exit(0);
    }
    if let Some(only) = std::env::var_os("DEFLATE_ONLY") {
        let only = only.into_string().unwrap();
        let (name, level) = only.split_once(':').unwrap_or((&only, "1"));
        let mut cand = Cand::new(name, level.parse().unwrap());
        let mut feed = Feed::new(42);
        let msgs: Vec<String> = (0..1000).map(|_| feed.mixed()).collect();
        let mut out = Vec::new();
        let (mut raw, mut total) = (0, 0);
        for m in &msgs {
            cand.compress(m.as_bytes(), &mut out);
            raw += m.len();
            total += out.len();
        }
        println!("{only}: 1000 mixed messages, {raw} bytes, {total} compressed");
        std::process::exit(0);
    }
    let mut out = Vec::new();
    for (corpus_name, msgs) in corpora() {
        let mut g = c.benchmark_group(format!("compress/{corpus_name}"));
        g.throughput(Throughput::Elements(msgs.len() as u64));
        for (cand, level) in CANDIDATES.iter().copied().chain([("proto", 6)]) {
            let mut comp = Cand::new(cand, level);
            g.bench_function(BenchmarkId::new(cand, level), |b| {
                b.iter(|| {
                    for m in &msgs {
                        comp.compress(black_box(m.as_bytes()), &mut out);
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
