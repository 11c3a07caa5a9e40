//! The whole input path of a shard, with no I/O: the shard core (sans-IO, time as an input)
//! driven by a script of driver events decoded from the fuzzer's bytes — connections accepted,
//! arbitrary bytes received (HTTP requests, upgrades, frames, control messages, publishes),
//! sends completing whole or in part, kernel samples, peers hanging up, time passing, and
//! broadcasts. Checks: no panic, and once every connection is gone the shard holds nothing
//! (queued bytes back to the shard's kept frames, inbound and kernel bytes to zero).

#![no_main]

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use shardcast::config::{Config, Overrides};
use shardcast::obs::stats::ShardStats;
use shardcast::runtime::driver::{Admit, ConnId, Gather, Handler, IoRequest};
use shardcast::shard::Core;
use shardcast_proto::MessageKind;

/// Small limits so the script reaches them: marks, message sizes, rates, history, deadlines.
fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let args = [
                "shardcast",
                "--shards",
                "1",
                "--max-message-bytes",
                "4096",
                "--max-control-message-bytes",
                "1024",
                "--send-buffer-bytes",
                "4096",
                "--high-water-bytes",
                "16KiB",
                "--max-header-bytes",
                "2048",
                "--topic-history",
                "*=messages=8,bytes=4KiB",
                "--topic-policy",
                "c*=conflate",
                "--topic-policy",
                "d*=drop-oldest,keep=2",
                "--topic-policy",
                "p*=pause,high_water_bytes=1000000",
                "--max-topics-per-connection",
                "8",
                "--ip-connect-limit",
                "0",
                "--subscriber-rate",
                "50",
            ];
            Arc::new(Overrides::try_parse_from(args).unwrap().resolve().unwrap())
        })
        .clone()
}

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// Do every requested socket operation and every transmit; `part` in 0..=255 is the share of
/// each gather a send completes (255: whole).
fn flush(core: &mut Core, conns: &mut Vec<ConnId>, part: u8) {
    for _ in 0..64 {
        let mut progressed = false;
        while let Some(req) = core.poll_io() {
            progressed = true;
            if let IoRequest::Close(id, _) = req {
                conns.retain(|c| *c != id);
                core.handle_closed(id);
            }
        }
        while let Some(id) = core.poll_transmit() {
            progressed = true;
            let mut iov = Vec::new();
            core.gather(id, &mut Gather::new(&mut iov));
            let n: usize = iov.iter().map(|v| v.iov_len).sum();
            let done = if part == 255 {
                n
            } else {
                (n * part as usize / 255).max(1).min(n)
            };
            core.handle_sent(id, Ok(done));
        }
        if !progressed {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let config = config();
    let stats: Arc<[ShardStats]> = (0..1).map(|_| ShardStats::default()).collect();
    let link = shardcast::mesh::mesh(1, 64).pop().unwrap();
    let mut core = Core::new(0, config, stats, link, Arc::new(AtomicUsize::new(0)), t0);
    core.handle_time(t0);
    let mut now = t0;
    let mut conns: Vec<ConnId> = Vec::new();
    let mut s = Script(data);
    let pick = |s: &mut Script, conns: &[ConnId]| {
        let i = s.byte()? as usize;
        (!conns.is_empty()).then(|| conns[i % conns.len()])
    };
    while let Some(op) = s.byte() {
        match op % 8 {
            0 if conns.len() < 6 => {
                let port = 40_000 + u16::from(op);
                if let Admit::Accept(id) = core.handle_accepted(([127, 0, 0, 1], port).into()) {
                    conns.push(id);
                }
            }
            1 | 2 => {
                let Some(id) = pick(&mut s, &conns) else {
                    continue;
                };
                let len = s.byte().unwrap_or(0) as usize * if op % 8 == 2 { 16 } else { 1 };
                let mut bytes = s.bytes(len);
                core.handle_received(id, &mut bytes);
            }
            3 => {
                let ms = u64::from(s.byte().unwrap_or(0)) * 97;
                now += Duration::from_millis(ms);
                core.handle_time(now);
            }
            4 => flush(&mut core, &mut conns, s.byte().unwrap_or(255)),
            5 => {
                let Some(id) = pick(&mut s, &conns) else {
                    continue;
                };
                core.handle_read_closed(id, op & 0x80 != 0);
            }
            6 => {
                let topic: Arc<str> =
                    Arc::from(["t", "c1", "d1", "p1", "a"][(op as usize >> 3 & 7) % 5]);
                let len = s.byte().unwrap_or(0) as usize * 8;
                let payload = s.bytes(len);
                let kind = if op & 0x40 != 0 {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                core.publish(&topic, kind, &payload);
            }
            7 => {
                let Some(id) = pick(&mut s, &conns) else {
                    continue;
                };
                let kb = s.byte().unwrap_or(0) as usize;
                core.kernel_held(id, kb * 256);
            }
            _ => {}
        }
    }
    // Every peer hangs up; time passes beyond every deadline (handshake, close flush, linger,
    // pong): the shard must end with nothing held.
    for id in conns.clone() {
        core.handle_read_closed(id, true);
    }
    for _ in 0..8 {
        flush(&mut core, &mut conns, 255);
        now += Duration::from_secs(60);
        core.handle_time(now);
    }
    flush(&mut core, &mut conns, 255);
    if core.active() == 0 {
        let l = core.ledger();
        let floor = core.kept_frame_bytes();
        assert_eq!(l.retained(), floor, "queued bytes left with no connection");
        assert_eq!(l.inbound(), 0, "inbound bytes left with no connection");
        assert_eq!(l.kernel(), 0, "kernel bytes left with no connection");
    }
});
