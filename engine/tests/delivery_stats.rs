//! What /stats, /histograms and /metrics say about deliveries, through the real binary on both
//! drivers: broadcast latency (one sample per delivery), the per-connection queue depth
//! distribution (sampled once per second) and how long evicted connections had stalled.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

/// The drivers to run each test on (auto is io_uring where available).
const DRIVERS: [&str; 2] = ["auto", "epoll"];

fn sum_shards(s: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    s["shards"].as_array().unwrap().iter().map(f).sum()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

#[test]
fn broadcast_latency_has_one_sample_per_delivery() {
    const N: usize = 6;
    const M: usize = 10;
    for driver in DRIVERS {
        let server = Server::start(&["--driver", driver]);
        let addr = server.admin.unwrap();
        // Shard 0 publishes: shard 0's subscribers get local deliveries, shard 1's go through
        // the ring, so both paths carry the publish time.
        let _clients = fan_out(&server, N, M, 0);
        let count = |s: &Value| sum_shards(s, |sh| u(&sh["latency_us"]["broadcast"]["count"]));
        let s = stats_until(addr, |s| count(s) >= (N * M) as u64);
        assert_eq!(
            count(&s),
            (N * M) as u64,
            "{driver}: one sample per delivery"
        );
        let t = &s["totals"];
        let (p50, p99, p999) = (
            u(&t["broadcast_latency_p50_us"]),
            u(&t["broadcast_latency_p99_us"]),
            u(&t["broadcast_latency_p999_us"]),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= p999, "{driver}: {t:#}");
        let mut logged = 0;
        for shard in 0..2 {
            let sh = &s["shards"][shard];
            assert_eq!(
                u(&sh["latency_us"]["broadcast"]["count"]),
                (N / 2 * M) as u64,
                "{driver}: shard {shard} delivered to its {} subscribers",
                N / 2
            );
            assert!(u(&sh["broadcast_latency_p50_us"]) <= u(&sh["broadcast_latency_p999_us"]));
            let h = histogram(addr, shard, "broadcast");
            assert_eq!(h.len(), (N / 2 * M) as u64, "{driver}");
            logged += h.len();
        }
        assert_eq!(logged, (N * M) as u64);
        // Replies to the subscribers' sync requests were written too, but are not broadcasts.
        assert_eq!(u(&t["messages_out"]), (N * M) as u64);
    }
}

#[test]
fn queue_depth_percentiles_single_out_the_never_reading_subscriber() {
    const FAST: usize = 50;
    // The fast subscribers, the slow one and two publishers.
    const ALL: u64 = FAST as u64 + 3;
    for driver in DRIVERS {
        // No eviction: this test wants the slow queue to stay and grow.
        let server = Server::start(&["--driver", driver, "--high-water-bytes", "256MiB"]);
        let addr = server.admin.unwrap();
        let (_slow, slow_shard) = raw_subscriber(server.addr, "/ws/bulk");
        let mut fast: Vec<Ws> = (0..FAST).map(|_| server.ws("/ws/tick").0).collect();
        for f in &mut fast {
            sync(f);
        }
        let mut ticker = server.ws("/pub/tick").0;
        for i in 0..5 {
            ticker.send(Message::text(format!("t{i}"))).unwrap();
        }
        for f in &mut fast {
            for i in 0..5 {
                assert_eq!(next_text(f), format!("t{i}"));
            }
        }
        // Bulk to the slow subscriber only, until the depth samples (one a second per shard)
        // see its queue and cover every connection: the kernel's buffers for it take a few MiB
        // first (its send buffer grows).
        let mut bulk = server.ws("/pub/bulk").0;
        let chunk = vec![7u8; 64 * 1024];
        let end = deadline();
        let mut sent = 0;
        let s = loop {
            let s = stats(addr);
            let t = &s["totals"];
            if u(&t["p99_queue_depth"]) > 0 && u(&t["queue_depth_connections"]) == ALL {
                break s;
            }
            assert!(
                sent < 1024 && Instant::now() < end,
                "{driver}: no queue ever sampled: {s:#}"
            );
            for _ in 0..16 {
                bulk.send(Message::binary(chunk.clone())).unwrap();
            }
            sent += 16;
            std::thread::sleep(Duration::from_millis(50));
        };
        // 1 of 53 queues (1.9%) is non-empty, so the 99th percentile sees it and the 95th does
        // not (per shard that depends on how many connections each got, so only totals).
        let t = &s["totals"];
        assert_eq!(
            u(&t["p95_queue_depth"]),
            0,
            "{driver}: fast queues are empty"
        );
        assert_eq!(u(&t["p95_queue_depth_bytes"]), 0, "{driver}");
        assert!(
            u(&t["p99_queue_depth_bytes"]) >= 64 * 1024,
            "{driver}: {t:#}"
        );
        assert!(u(&t["max_queue_depth"]) >= u(&t["p99_queue_depth"]));
        let slow = &s["shards"][slow_shard];
        let other = &s["shards"][1 - slow_shard];
        assert!(u(&slow["p99_queue_depth"]) > 0, "{driver}: {slow:#}");
        assert_eq!(
            (
                u(&other["p99_queue_depth"]),
                u(&other["max_queue_depth_bytes"])
            ),
            (0, 0),
            "{driver}: only fast clients and publishers there"
        );
        assert_eq!(s["totals"]["evictions"]["high_water"], 0);
    }
}

#[test]
fn each_eviction_records_its_stall() {
    for driver in DRIVERS {
        let started = Instant::now();
        let server = Server::start(&["--driver", driver]);
        let addr = server.admin.unwrap();
        let (_slow, shard) = raw_subscriber(server.addr, "/ws/t");
        // 16 KiB messages, paced, until the 1 MiB default high-water mark evicts it.
        let mut p = server.ws("/pub/t").0;
        let msg = vec![1u8; 16 * 1024];
        let end = deadline();
        let evicted = |s: &Value| u(&s["totals"]["evictions"]["high_water"]) > 0;
        let mut sent = 0;
        while !evicted(&stats(addr)) {
            assert!(sent < 4096 && Instant::now() < end, "never evicted");
            for _ in 0..32 {
                p.send(Message::binary(msg.clone())).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            sent += 32;
        }
        let stalls =
            |s: &Value| sum_shards(s, |sh| u(&sh["latency_us"]["eviction_stall"]["count"]));
        let s = stats_until(addr, |s| stalls(s) >= 1);
        assert_eq!(u(&s["totals"]["evictions"]["high_water"]), 1, "{driver}");
        assert_eq!(stalls(&s), 1, "{driver}: one sample per eviction");
        let t = &s["totals"];
        let (p50, p99, max) = (
            u(&t["eviction_stall_p50_ms"]),
            u(&t["eviction_stall_p99_ms"]),
            u(&t["eviction_stall_max_ms"]),
        );
        assert!(p50 <= p99 && p99 <= max, "{driver}: {t:#}");
        assert!(
            u128::from(max) <= started.elapsed().as_millis(),
            "{driver}: stalled longer than the test ran: {t:#}"
        );
        assert_eq!(s["shards"][shard]["eviction_stall_max_ms"], max);
        assert_eq!(histogram(addr, shard, "eviction_stall").len(), 1);
        assert_eq!(histogram(addr, 1 - shard, "eviction_stall").len(), 0);
    }
}

#[test]
fn recording_off_leaves_every_distribution_empty() {
    for driver in DRIVERS {
        let server = Server::start(&["--driver", driver, "--latency-recording", "off"]);
        let addr = server.admin.unwrap();
        let _clients = fan_out(&server, 4, 5, 0);
        stats_until(addr, |s| u(&s["totals"]["messages_out"]) == 20);
        // Long enough for several ticks and a whole depth sampling period, had they recorded.
        std::thread::sleep(Duration::from_millis(1300));
        let s = stats(addr);
        for kind in ["handshake", "ring_transit", "broadcast", "eviction_stall"] {
            let n = sum_shards(&s, |sh| u(&sh["latency_us"][kind]["count"]));
            assert_eq!(n, 0, "{driver}: {kind} recorded with recording off");
        }
        let t = &s["totals"];
        assert_eq!(u(&t["queue_depth_connections"]), 0, "{driver}: {t:#}");
        assert_eq!(u(&t["broadcast_latency_p99_us"]), 0);
    }
}
