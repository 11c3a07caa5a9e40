//! The inter-shard backlog is charged to the publishing shard's share of the ceiling, through
//! the real binary on both drivers.
//!
//! With `--ring-capacity 2` a consumer shard takes at most two items per flush of the
//! producer, so a WebSocket publisher that sends in batches outruns it and the publishing
//! shard's mesh backlog grows; an HTTP publisher alone could not (each request flushes). The
//! backlog must stop the WebSocket publisher (TCP back-pressure) and refuse HTTP publishes
//! with 503 + Retry-After, while every shard stays within its budget and nothing is lost.
//!
//! Phase 1 has the WebSocket publisher alone: once it is stopped nothing else flushes its
//! shard's mesh, so only the shard's drain task retrying the backlog can resume it. Phase 2
//! adds HTTP publishers.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Messages the WebSocket publisher sends.
const N: u32 = 4000;

/// Payload bytes per message.
const SIZE: usize = 256;

/// Frames per write of the WebSocket publisher: each write arrives as one read batch, and the
/// shard flushes the mesh once per read batch.
const BATCH: u32 = 100;

/// A raw `/pub/t` WebSocket publisher that landed on `shard`.
fn raw_publisher_on(addr: SocketAddr, shard: usize) -> TcpStream {
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let head = upgrade_raw(&mut tcp, "/pub/t");
        if head.contains(&format!("X-Shardcast-Shard: {shard}\r\n")) {
            return tcp;
        }
    }
    panic!("never landed on shard {shard}");
}

/// Masked binary frames carrying sequence numbers `from..to`.
fn frames(from: u32, to: u32) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    for i in from..to {
        let mut m = [0u8; SIZE];
        m[..4].copy_from_slice(&i.to_be_bytes());
        shardcast_proto::encode_client_frame(
            &mut out,
            shardcast_proto::OpCode::Binary,
            true,
            &m,
            [9, 8, 7, 6],
        );
    }
    out.to_vec()
}

/// Per-shard checks on one /stats sample; returns the largest `mesh_bytes`.
fn check_budgets(s: &Value) -> u64 {
    let mut most = 0;
    for sh in s["shards"].as_array().unwrap() {
        // retained_bytes is what the shard is charged: its queues plus its mesh backlog.
        let retained = sh["retained_bytes"].as_u64().unwrap();
        let mesh = sh["mesh_bytes"].as_u64().unwrap();
        let budget = sh["queue_ceiling_bytes"].as_u64().unwrap();
        assert_eq!(budget, 1_677_721);
        assert!(
            retained <= budget,
            "shard {}: {retained} > {budget}",
            sh["shard"]
        );
        most = most.max(mesh);
    }
    most
}

/// Wait until the subscriber has `target` messages; fail with the server's view if it makes
/// no progress for 5 s.
fn wait_for(received: &AtomicU32, target: u32, admin_addr: SocketAddr, driver: &str) {
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let now = received.load(SeqCst);
        if now >= target {
            return;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{driver}: stuck at {now} of {target}: {:#}",
            stats(admin_addr)["shards"]
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn mesh_backlog_stops_ws_publishers_refuses_http_and_stays_within_budget() {
    for driver in ["auto", "epoll"] {
        // 64 MiB at 5% over 2 shards: 1,677,721 B per shard, a mesh share of 419,430 B
        // (about 1,100 of these messages).
        let server = Server::start(&[
            "--driver",
            driver,
            "--shards",
            "2",
            "--ring-capacity",
            "2",
            "--memory-limit",
            "64MiB",
        ]);
        let admin_addr = server.admin.unwrap();
        let mut sub = server.ws_on("/ws/t", 1);
        sync(&mut sub);
        let mut publisher = raw_publisher_on(server.addr, 0);
        // A publisher stopped for good would block its writes forever: fail instead.
        publisher.set_write_timeout(Some(TIMEOUT)).unwrap();
        let done = AtomicBool::new(false);
        let (ok, refused) = (AtomicU64::new(0), AtomicU64::new(0));
        let received = AtomicU32::new(0);
        let (got, most_mesh, samples) = thread::scope(|s| {
            // Stops the helper threads however this closure ends (a failed assertion too), so
            // the scope can join them.
            let _stop = Stop(&done);
            let reader = s.spawn(|| {
                (0..N)
                    .map(|_| {
                        let m = next(&mut sub).into_data();
                        received.fetch_add(1, SeqCst);
                        u32::from_be_bytes(m[..4].try_into().unwrap())
                    })
                    .collect::<Vec<u32>>()
            });
            let watcher = s.spawn(|| {
                let (mut most, mut samples) = (0, 0);
                while !done.load(SeqCst) {
                    most = most.max(check_budgets(&stats(admin_addr)));
                    samples += 1;
                    // The gauges change once per 100 ms tick: no need to hammer the admin thread.
                    thread::sleep(Duration::from_millis(10));
                }
                (most, samples)
            });
            for from in (0..N / 2).step_by(BATCH as usize) {
                publisher
                    .write_all(&frames(from, from + BATCH))
                    .expect("publisher stopped for good");
            }
            wait_for(&received, N / 2, admin_addr, driver);
            let phase1 = stats(admin_addr);
            assert!(
                phase1["totals"]["mesh_stalls_total"].as_u64().unwrap() >= 1,
                "{driver}: phase 1 never stopped the publisher"
            );
            for _ in 0..3 {
                s.spawn(|| {
                    let req = format!(
                        "POST /publish/h HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n{}",
                        "x".repeat(SIZE)
                    );
                    while !done.load(SeqCst) {
                        let r = server.http(req.as_bytes());
                        match status(&r) {
                            204 => ok.fetch_add(1, SeqCst),
                            503 => {
                                assert!(r.contains("Retry-After: 1\r\n"), "{r}");
                                assert!(r.contains("mesh backlog"), "{r}");
                                refused.fetch_add(1, SeqCst)
                            }
                            _ => panic!("{r}"),
                        };
                    }
                });
            }
            for from in (N / 2..N).step_by(BATCH as usize) {
                publisher
                    .write_all(&frames(from, from + BATCH))
                    .expect("publisher stopped for good");
            }
            wait_for(&received, N, admin_addr, driver);
            let got = reader.join().unwrap();
            done.store(true, SeqCst);
            let (most, samples) = watcher.join().unwrap();
            (got, most, samples)
        });
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "{driver}: in order, no loss"
        );
        assert!(samples > 0);
        assert!(most_mesh > 0, "{driver}: no mesh backlog ever seen");
        let refused = refused.load(SeqCst);
        assert!(refused > 0, "{driver}: no 503 (ok {})", ok.load(SeqCst));
        // Every refusal the clients saw is counted, and nothing else was refused.
        let s = stats(admin_addr);
        check_budgets(&s);
        let t = &s["totals"];
        assert_eq!(t["refused"]["mesh_backlog"], refused, "{driver}: {t:#}");
        assert!(
            t["mesh_stalls_total"].as_u64().unwrap() >= 1,
            "{driver}: {t:#}"
        );
        assert_eq!(t["evictions"]["ceiling"], 0, "{driver}: {t:#}");
        let (code, metrics) = admin(admin_addr, "GET", "/metrics");
        assert_eq!(code, 200);
        for line in [
            "shardcast_mesh_bytes{shard=\"0\"} ",
            "shardcast_mesh_stalls_total{shard=\"0\"} ",
            "shardcast_connections_refused_total{shard=\"0\",reason=\"mesh_backlog\"} ",
        ] {
            assert!(metrics.contains(line), "{line}");
        }
        // The publisher was stopped, never closed: its connection is still open and idle.
        publisher
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let r = publisher.read(&mut [0u8; 1]);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "{driver}: {r:?}"
        );
    }
}
