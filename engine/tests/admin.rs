//! The admin listener through the real binary, on both drivers.
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use hdrhistogram::serialization::interval_log::IntervalLogIterator;
use tungstenite::Message;

/// The drivers to run each test on (auto is io_uring where available).
const DRIVERS: [&str; 2] = ["auto", "epoll"];

fn start(driver: &str) -> (Server, SocketAddr) {
    let server = Server::start(&["--driver", driver]);
    let admin = server.admin.expect("admin listener is on");
    (server, admin)
}

#[test]
fn health_ok_and_errors() {
    for driver in DRIVERS {
        let (_server, addr) = start(driver);
        assert_eq!(admin(addr, "GET", "/health"), (200, "ok\n".to_owned()));
        assert_eq!(admin(addr, "GET", "/nope").0, 404);
        assert_eq!(admin(addr, "POST", "/stats").0, 405);
        assert_eq!(admin(addr, "DELETE", "/nope").0, 404);
        assert_eq!(admin(addr, "GET", "/histograms?shard=0&kind=x").0, 400);
        assert_eq!(admin(addr, "GET", "/histograms?kind=handshake").0, 400);
        assert_eq!(
            admin(addr, "GET", "/histograms?shard=9&kind=handshake").0,
            404
        );
        // Garbage is answered by the shared parser with 400, and a huge head with 431.
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        tcp.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = tcp.read_to_string(&mut out);
        assert_eq!(status(&out), 400, "{out}");
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let big = format!("GET /stats HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8000));
        let _ = tcp.write_all(big.as_bytes());
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        assert_eq!(status(&String::from_utf8_lossy(&out)), 431);
    }
}

#[test]
fn admin_can_be_turned_off() {
    let server = Server::start(&["--admin-listen", "off"]);
    assert_eq!(server.admin, None);
    let (mut ws, _) = server.ws("/echo");
    ws.send(Message::text("still serving")).unwrap();
    assert_eq!(next_text(&mut ws), "still serving");
}

#[test]
fn stats_counts_connections_and_messages() {
    for driver in DRIVERS {
        let (server, addr) = start(driver);
        let mut subs = vec![server.ws_on("/ws/t", 0), server.ws_on("/ws/t", 1)];
        for s in &mut subs {
            sync(s);
        }
        let mut publisher = server.ws_on("/pub/t", 0);
        let s = stats_until(addr, |s| s["totals"]["active_connections"] == 3);
        let shards = s["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 2, "one entry per shard");
        for (i, sh) in shards.iter().enumerate() {
            assert_eq!(sh["shard"], i);
            let expect = if driver == "epoll" {
                "epoll"
            } else {
                sh["driver"].as_str().unwrap()
            };
            assert_eq!(sh["driver"], expect);
            assert!(["io_uring", "epoll"].contains(&expect));
            assert!(sh["refused"]["max_connections"].is_u64());
            assert!(sh["protocol_errors"]["1002"].is_u64());
            assert!(sh["latency_us"]["handshake"]["p99"].is_u64());
        }
        assert!(
            s["memory_usage"].as_u64().unwrap() > 1 << 20,
            "RSS in bytes"
        );
        assert!(s["uptime_seconds"].as_f64().unwrap() > 0.0);
        for i in 0..5 {
            publisher.send(Message::text(format!("m{i}"))).unwrap();
        }
        for s in &mut subs {
            for i in 0..5 {
                assert_eq!(next_text(s), format!("m{i}"));
            }
        }
        // 2 sync requests + 5 publishes in; 5 messages × 2 subscribers out.
        let s = stats_until(addr, |s| {
            s["totals"]["messages_in"] == 7 && s["totals"]["messages_out"] == 10
        });
        let per_shard: u64 = s["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sh| sh["messages_out"].as_u64().unwrap())
            .sum();
        assert_eq!(per_shard, 10, "totals are the sum of the shards");
        // Shard 1 drained the publishes from shard 0's ring; histograms lag at most one tick.
        let s = stats_until(addr, |s| {
            s["shards"][1]["latency_us"]["ring_transit"]["count"]
                .as_u64()
                .unwrap()
                >= 5
        });
        assert!(s["totals"]["accepted"].as_u64().unwrap() >= 3);
        drop(subs.pop());
        stats_until(addr, |s| s["totals"]["active_connections"] == 2);
    }
}

/// Every sample is `name{labels} value`, every family has HELP and TYPE, counters end in _total.
fn check_exposition(text: &str) -> HashMap<String, String> {
    let mut types = HashMap::new();
    let mut helps = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(helps.contains(name), "TYPE before HELP or no HELP: {line}");
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let valid_name = |n: &str| {
        !n.is_empty()
            && (n.starts_with("shardcast_") || n.starts_with("process_"))
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut samples = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close");
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(valid_name(name), "{line}");
        let family = [
            name,
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
            name.trim_end_matches("_bucket"),
        ]
        .into_iter()
        .find(|f| types.contains_key(*f))
        .unwrap_or_else(|| panic!("no TYPE for {line}"));
        if family != name {
            assert_eq!(types[family], "histogram", "{line}");
        }
        samples += 1;
    }
    assert!(samples > 20);
    types
}

#[test]
fn metrics_are_well_formed() {
    for driver in DRIVERS {
        let (server, addr) = start(driver);
        let (mut ws, _) = server.ws("/echo");
        ws.send(Message::text("x")).unwrap();
        next_text(&mut ws);
        stats_until(addr, |s| s["totals"]["messages_in"] == 1);
        let (code, text) = admin(addr, "GET", "/metrics");
        assert_eq!(code, 200);
        let types = check_exposition(&text);
        assert_eq!(types["shardcast_handshake_latency_seconds"], "histogram");
        assert_eq!(types["process_cpu_seconds_total"], "counter");
        assert!(text.contains("shardcast_connections_active{shard=\"0\"}"));
        assert!(text
            .contains("shardcast_connections_refused_total{shard=\"1\",reason=\"not_found\"} 0"));
        assert!(text.contains("shardcast_protocol_errors_total{shard=\"0\",code=\"1002\"} 0"));
        assert!(text.contains(
            "shardcast_ring_transit_latency_seconds_bucket{shard=\"1\",le=\"0.000001\"}"
        ));
        let received: u64 = text
            .lines()
            .filter(|l| l.starts_with("shardcast_messages_received_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(received, 1);
    }
}

#[test]
fn histograms_are_hdr_v2_logs() {
    for driver in DRIVERS {
        let (server, addr) = start(driver);
        for _ in 0..6 {
            drop(server.ws("/echo"));
        }
        // At least one shard recorded handshakes; wait for its tick to publish them.
        let s = stats_until(addr, |s| latency_count(s, "handshake") == 6);
        let mut total = 0;
        for shard in 0..2 {
            let expect = s["shards"][shard]["latency_us"]["handshake"]["count"]
                .as_u64()
                .unwrap();
            let hist = histogram(addr, shard, "handshake");
            assert_eq!(hist.len(), expect);
            total += hist.len();
        }
        assert_eq!(total, 6);
        let (code, body) = admin(addr, "GET", "/histograms?shard=1&kind=ring_transit");
        assert_eq!(code, 200);
        assert!(IntervalLogIterator::new(body.as_bytes()).all(|e| e.is_ok()));
    }
}

/// The seed names: `slow_client_count`, `buffer_fill_ratio` and the churn rate in /stats (per
/// shard and in totals), with their /metrics counterparts.
#[test]
fn stats_and_metrics_carry_churn_fill_and_slow_clients() {
    let (server, addr) = start("auto");
    let kept: Vec<_> = (0..3).map(|_| server.ws("/ws/t").0).collect();
    for _ in 0..4 {
        drop(server.ws("/ws/t"));
    }
    // 7 accepted, 4 closed: the next churn sample (once a second per shard) sees them.
    let s = stats_until(addr, |s| {
        let t = &s["totals"];
        t["connections_closed"] == 4
            && t["active_connections"] == 3
            && t["connection_churn_per_second"].as_f64() > Some(0.0)
    });
    let t = &s["totals"];
    assert_eq!(t["slow_client_count"], 0);
    assert_eq!(t["slow_client_count"], t["slow_clients"]);
    let fill = t["buffer_fill_ratio"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&fill), "{fill}");
    let mut churn = 0.0;
    for sh in s["shards"].as_array().unwrap() {
        assert!(sh["buffer_fill_ratio"].as_f64().is_some(), "{sh}");
        churn += sh["connection_churn_per_second"].as_f64().unwrap();
        assert_eq!(
            sh["connections_closed"].as_u64().unwrap(),
            sh["accepted"].as_u64().unwrap() - sh["active_connections"].as_u64().unwrap()
        );
    }
    // serde_json's float parsing may be off by an ulp: compare, do not match bits.
    let total = t["connection_churn_per_second"].as_f64().unwrap();
    assert!((churn - total).abs() <= total * 1e-9, "{churn} vs {total}");
    let (_, text) = admin(addr, "GET", "/metrics");
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(sum("shardcast_connections_closed_total"), 4.0);
    assert!(sum("shardcast_connection_churn_per_second") > 0.0);
    assert!(text.contains("shardcast_buffer_fill_ratio{shard=\"1\"} "));
    assert!(text.contains("shardcast_slow_clients{shard=\"0\"} 0\n"));
    drop(kept);
}
