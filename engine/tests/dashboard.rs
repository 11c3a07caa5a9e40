//! /metrics through an independent Prometheus parser, /dashboard over HTTP, and the dashboard
//! rendered by a real headless Chromium.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};
use tungstenite::Message;

/// Sum of every sample of `metric` across shards (counters and gauges).
fn total(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a scalar: {s:?}"),
        })
        .sum()
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (head, body) = admin_response(addr, "GET", "/metrics");
    assert_eq!(status(&head), 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition")
}

#[test]
fn metrics_parse_and_match_scripted_traffic() {
    const N: usize = 5;
    const M: usize = 7;
    let server = Server::start(&[]);
    let addr = server.admin.unwrap();
    let _clients = fan_out(&server, N, M, 0);
    // Counters are eventually consistent across shards: poll until they settle.
    let end = deadline();
    let s = loop {
        let s = scrape(addr);
        if total(&s, "shardcast_messages_queued_total") == (N * M) as f64 {
            break s;
        }
        assert!(Instant::now() < end, "messages_out never reached N×M");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(total(&s, "shardcast_connections_active"), (N + 1) as f64);
    // N sync requests plus M publishes came in.
    assert_eq!(
        total(&s, "shardcast_messages_received_total"),
        (N + M) as f64
    );
    assert!(total(&s, "shardcast_connections_accepted_total") >= (N + 1) as f64);
    assert_eq!(
        s.docs
            .get("shardcast_messages_queued_total")
            .map(String::as_str),
        Some("Frames queued to clients.")
    );
    let handshake: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "shardcast_handshake_latency_seconds")
        .collect();
    assert_eq!(handshake.len(), 2, "one histogram per shard");
    let handshakes: f64 = handshake
        .iter()
        .map(|h| {
            let Value::Histogram(b) = &h.value else {
                panic!("not a histogram: {h:?}")
            };
            assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "cumulative");
            assert_eq!(b.last().unwrap().less_than, f64::INFINITY);
            b.last().unwrap().count
        })
        .sum();
    assert_eq!(
        handshakes,
        total(&s, "shardcast_handshake_latency_seconds_count")
    );
    // One broadcast latency sample per delivery (histograms lag by up to one 100 ms tick).
    let end = deadline();
    let s = loop {
        let s = scrape(addr);
        if total(&s, "shardcast_broadcast_latency_seconds_count") >= (N * M) as f64 {
            break s;
        }
        assert!(Instant::now() < end, "broadcast latency never reached N×M");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        total(&s, "shardcast_broadcast_latency_seconds_count"),
        (N * M) as f64
    );
    // Every histogram family has the same fixed bounds on every shard (what makes
    // `sum by (le)` across shards and hosts valid), ending in +Inf = _count.
    for (metric, bounds) in [
        ("shardcast_broadcast_latency_seconds", 23),
        ("shardcast_handshake_latency_seconds", 19),
        ("shardcast_ring_transit_latency_seconds", 17),
        ("shardcast_eviction_stall_seconds", 14),
        ("shardcast_queue_depth_messages", 15),
        ("shardcast_queue_depth_bytes", 15),
    ] {
        let mut les: Vec<Vec<f64>> = Vec::new();
        let mut counts = 0.0;
        for x in s.samples.iter().filter(|x| x.metric == metric) {
            let Value::Histogram(b) = &x.value else {
                panic!("not a histogram: {x:?}")
            };
            les.push(b.iter().map(|c| c.less_than).collect());
            counts += b.last().unwrap().count;
        }
        assert_eq!(les.len(), 2, "{metric}: one per shard");
        assert_eq!(les[0], les[1], "{metric}: same bounds on every shard");
        assert_eq!(les[0].len(), bounds, "{metric}");
        assert_eq!(counts, total(&s, &format!("{metric}_count")), "{metric}");
    }
    let delivered: f64 = s
        .samples
        .iter()
        .filter(|x| x.metric == "shardcast_broadcast_latency_seconds")
        .map(|x| match &x.value {
            Value::Histogram(b) => b.last().unwrap().count,
            _ => unreachable!(),
        })
        .sum();
    assert_eq!(delivered, (N * M) as f64);
}

#[test]
fn dashboard_is_served_as_html() {
    let server = Server::start(&[]);
    let (head, body) = admin_response(server.admin.unwrap(), "GET", "/dashboard");
    assert_eq!(status(&head), 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("id=\"connections\""));
    let server_post = {
        let mut tcp = TcpStream::connect(server.admin.unwrap()).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        tcp.write_all(b"POST /dashboard HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(status(&server_post), 405);
}

/// Run headless Chromium on `url` with `extra` args, killed after 60 s; returns stdout.
fn run_chromium(bin: &Path, url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "shardcast-chromium-{}-{}",
        std::process::id(),
        extra.len()
    ));
    let (_, out) = run_bounded(
        headless_chromium(bin, &profile)
            .arg("--virtual-time-budget=5000")
            .args(extra)
            .arg(url)
            .stderr(Stdio::null()),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&profile);
    out
}

#[test]
fn dashboard_renders_live_numbers_in_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!! SKIPPED dashboard_renders_live_numbers_in_chromium: no chromium at \
             /usr/bin/chromium (scripts/test.sh installs it with apt-get when run as root) !!!\n"
        );
        return;
    };
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    let (subs, mut publisher) = fan_out(&server, 3, 20, 1);
    let url = format!("http://{admin}/dashboard");
    let dom = run_chromium(&bin, &url, &["--dump-dom"]);
    assert!(
        dom.contains("id=\"connections\">4<"),
        "3 subscribers + 1 publisher not shown:\n{dom}"
    );
    assert!(dom.contains("id=\"shard-1\""), "per-shard rows rendered");
    assert!(
        dom.contains("chart-ring_transit-p99"),
        "latency charts built"
    );
    for q in ["p50", "p99", "p999"] {
        assert!(
            dom.contains(&format!("chart-broadcast-{q}")),
            "broadcast {q} chart"
        );
    }
    // 3 subscribers × 20 messages were written: the headline card shows a latency, not "–".
    let card = dom
        .split("id=\"broadcast-p99\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no broadcast card:\n{dom}"));
    assert!(
        card.ends_with(" µs") || card.ends_with(" ms") || card.ends_with(" s"),
        "broadcast p99 card shows {card:?}"
    );
    assert!(dom.contains("id=\"depth-p99\">0<"), "queue depth card");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    // Keep traffic flowing while the screenshot is taken, so the rate charts have data.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                publisher.send(Message::text(format!("x{i}"))).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    run_chromium(
        &bin,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    drop(subs);
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot {} was not written",
        shot.display()
    );
}
