//! permessage-deflate (RFC 7692) against the real binary: negotiation, compressed once per
//! message for the whole process, inflation of what clients send with the size limit enforced
//! while inflating (bombs), the RSV1 rules, per-topic rules. The compressed bytes are checked
//! with flate2 (zlib's algorithm) as the reference; browsers and Python `websockets` are in
//! `deflate_peers.rs`.
mod common;

use std::time::{Duration, Instant};

use common::zclient::{deflate, frames, header, inflate_window, ZClient, OFFER};
use common::*;
use flate2::{Compress, Compression, FlushCompress};
use tungstenite::Message;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A JSON trade event of about `len` bytes (digits vary, so it compresses like a feed).
fn event(i: usize, len: usize) -> String {
    let mut s = format!("{{\"e\":\"trade\",\"E\":17638{i:08},\"s\":\"BTCUSDT\",\"t\":{},\"p\":\"97{:03}.{:02}000000\",\"q\":\"0.00{:03}000\",\"levels\":[", 4_100_000_000u64 + i as u64 * 7, i * 37 % 1000, i % 100, i * 13 % 1000);
    let mut k = 0;
    while s.len() + 40 < len {
        s.push_str(&format!(
            "[\"97{:03}.{:02}\",\"0.{:05}\"],",
            (i + k) * 31 % 1000,
            k % 100,
            (i * k * 7919) % 100_000
        ));
        k += 1;
    }
    s.push_str("[]]}");
    s
}

fn compression(s: &serde_json::Value, shard: usize) -> serde_json::Value {
    s["shards"][shard]["compression"].clone()
}

#[test]
fn negotiation_follows_rfc7692() {
    let server = Server::start(&[]);
    let ext = |offer: Option<&str>| ZClient::connect(server.addr, "/ws/t", offer).extensions();
    assert_eq!(ext(Some(OFFER)).as_deref(), Some(ANSWER));
    assert_eq!(ext(Some("permessage-deflate")).as_deref(), Some(ANSWER));
    assert_eq!(
        ext(Some(
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9"
        ))
        .as_deref(),
        Some(&*format!("{ANSWER}; server_max_window_bits=10"))
    );
    // Declined offers are skipped, the next acceptable one taken; never accepted half-way.
    assert_eq!(
        ext(Some("x-webkit-deflate-frame, permessage-deflate; mux, permessage-deflate; server_no_context_takeover")).as_deref(),
        Some(ANSWER)
    );
    for bad in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=07",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=\"1",
        "deflate-frame",
    ] {
        assert_eq!(ext(Some(bad)), None, "{bad}");
    }
    assert_eq!(ext(None), None);
    // Offers spread over several header lines.
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let head = upgrade_raw_with(
        &mut tcp,
        "/ws/t",
        "Sec-WebSocket-Extensions: foo; a=\"x,y\"\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"12\"\r\n",
    );
    assert_eq!(
        header(&head, "sec-websocket-extensions"),
        Some(format!("{ANSWER}; server_max_window_bits=12"))
    );
    // Switched off: never negotiated.
    let off = Server::start(&["--compression", "off"]);
    assert_eq!(
        ZClient::connect(off.addr, "/ws/t", Some(OFFER)).extensions(),
        None
    );
}

#[test]
fn broadcast_is_compressed_once_per_message_for_the_whole_process() {
    let server = Server::start(&["--compression-min-bytes", "64"]);
    let admin = server.admin.unwrap();
    let mut z0 = ZClient::connect_on(server.addr, "/ws/t", Some(OFFER), 0);
    let mut z1 = ZClient::connect_on(server.addr, "/ws/t", Some(OFFER), 1);
    let mut zs = ZClient::connect_on(server.addr, "/stream?streams=t", Some(OFFER), 1);
    let window = "permessage-deflate; server_max_window_bits=9";
    let mut zw = ZClient::connect_on(server.addr, "/ws/t", Some(window), 1);
    let mut plain = server.ws_on("/ws/t", 1);
    sync(&mut plain);
    // Every shard knows the topic has compressing readers (the notices crossed the mesh).
    stats_until(admin, |s| {
        (0..2).all(|i| compression(s, i)["topics"] == 1)
            && compression(s, 0)["connections"].as_u64().unwrap()
                + compression(s, 1)["connections"].as_u64().unwrap()
                == 4
    });
    let mut publisher = server.ws_on("/pub/t", 0);
    let mut sent: Vec<Message> = (0..20)
        .map(|i| Message::text(event(i, 150 + i * 17)))
        .collect();
    sent.push(Message::text("short"));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    sent.push(Message::binary(noise.clone()));
    sent.push(Message::text(event(99, 2000))); // over zw's 512-byte window
    for m in &sent {
        publisher.send(m.clone()).unwrap();
    }
    let payload = |m: &Message| m.clone().into_data().to_vec();
    for (name, z) in [("z0", &mut z0), ("z1", &mut z1), ("zw", &mut zw)] {
        for (i, m) in sent.iter().enumerate() {
            let got = z.message();
            assert_eq!(got.payload, payload(m), "{name} message {i}");
            let want = match i {
                0..=19 => true,
                20 | 21 => false, // under the threshold; incompressible
                _ => name != "zw",
            };
            assert_eq!(got.compressed, want, "{name} message {i}");
            if got.compressed {
                assert!(got.wire_len < got.payload.len(), "{name} {i}");
            }
        }
    }
    for (i, m) in sent.iter().enumerate() {
        let got = zs.message();
        match m {
            Message::Text(t) => {
                // The wrapper embeds the payload as is (JSON or not, as for every client).
                let wrapped = format!("{{\"stream\":\"t\",\"data\":{t}}}");
                assert_eq!(String::from_utf8(got.payload).unwrap(), wrapped);
                assert_eq!(got.compressed, i != 20, "stream {i}");
            }
            _ => assert_eq!((got.payload, got.compressed), (noise.clone(), false)),
        }
    }
    for m in &sent {
        assert_eq!(&next(&mut plain), m);
    }
    // Compressed on shard 0 only: 21 text messages over the threshold, each in two variants
    // (plain, /stream), the noise tried once; shard 1 compressed nothing and delivered them
    // to z1 and zs (21 each) and zw (20: one is over its window).
    let s = stats_until(admin, |s| compression(s, 1)["compressed_deliveries"] == 62);
    let (c0, c1) = (compression(&s, 0), compression(&s, 1));
    assert_eq!(c0["compressed_messages"], 21 * 2);
    assert_eq!(c0["incompressible_messages"], 1);
    assert_eq!(c1["compressed_messages"], 0);
    assert_eq!(c0["compressed_deliveries"], 21, "z0 on shard 0");
    assert!(c1["bytes_saved"].as_u64().unwrap() > 0);
    let (before, after) = (
        c0["bytes_before"].as_u64().unwrap(),
        c0["bytes_after"].as_u64().unwrap(),
    );
    assert!(
        after * 3 < before * 2,
        "JSON compresses at least 1.5x: {before} -> {after}"
    );
    assert_eq!(s["totals"]["compression"]["connections"], 4);
    // /metrics has the same counters per shard.
    let (code, metrics) = admin_get(admin, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("shardcast_compressed_messages_total{shard=\"0\"} 42"),
        "{metrics}"
    );
    assert!(metrics.contains("shardcast_compression_seconds_total{shard=\"0\"} "));
    assert!(metrics.contains("shardcast_compressed_deliveries_total{shard=\"1\"} 62"));
}

fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    admin(addr, "GET", path)
}

#[test]
fn publishers_rooms_echo_and_control_messages_are_inflated() {
    let server = Server::start(&["--compression-min-bytes", "32"]);
    let admin_addr = server.admin.unwrap();
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    let mut publisher = ZClient::connect(server.addr, "/pub/t", Some(OFFER));
    assert_eq!(publisher.extensions().as_deref(), Some(ANSWER));
    let msgs: Vec<String> = (0..6).map(|i| event(i, 300 + i * 100)).collect();
    for (i, m) in msgs.iter().enumerate() {
        // One frame, fragmented, plain: all legal on one connection.
        match i % 3 {
            0 => publisher.send(true, m.as_bytes(), true, usize::MAX),
            1 => publisher.send(true, m.as_bytes(), true, 7),
            _ => publisher.send(true, m.as_bytes(), false, usize::MAX),
        }
    }
    publisher.send(false, &[7u8; 5000], true, 1000);
    for m in &msgs {
        assert_eq!(next_text(&mut sub), *m);
    }
    assert_eq!(next(&mut sub), Message::binary(vec![7u8; 5000]));
    // A room: what one member sends compressed, every member gets compressed.
    let mut a = ZClient::connect(server.addr, "/room/r", Some(OFFER));
    let mut b = ZClient::connect(server.addr, "/room/r", Some(OFFER));
    stats_until(admin_addr, |s| {
        (0..2).all(|i| compression(s, i)["topics"] == 1)
    });
    a.send(true, event(7, 400).as_bytes(), true, 64);
    for z in [&mut a, &mut b] {
        let got = z.message();
        assert!(got.compressed);
        assert_eq!(got.payload, event(7, 400).as_bytes());
    }
    // Echo: compressed in, compressed out; short replies plain.
    let mut echo = ZClient::connect(server.addr, "/echo", Some(OFFER));
    let big = event(1, 1000);
    echo.send(true, big.as_bytes(), true, 100);
    let got = echo.message();
    assert!(got.compressed && got.text);
    assert_eq!(got.payload, big.as_bytes());
    echo.send(false, b"tiny", true, usize::MAX);
    let got = echo.message();
    assert_eq!(
        (got.compressed, got.text, &got.payload[..]),
        (false, false, &b"tiny"[..])
    );
    echo.send(true, b"", true, usize::MAX);
    assert_eq!(echo.message().payload, b"");
    // A subscriber's control message, compressed.
    let mut zsub = ZClient::connect(server.addr, "/ws/t", Some(OFFER));
    zsub.send(
        true,
        br#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#,
        true,
        usize::MAX,
    );
    let reply: serde_json::Value = serde_json::from_slice(&zsub.message().payload).unwrap();
    assert_eq!(reply["result"], serde_json::json!(["t"]));
    let s = stats_until(admin_addr, |s| {
        s["totals"]["compression"]["inflated_messages"].as_u64() >= Some(4 + 1 + 1 + 3 + 1)
    });
    assert!(
        s["totals"]["compression"]["inflated_bytes_out"].as_u64()
            > s["totals"]["compression"]["inflated_bytes_in"].as_u64()
    );
}

#[test]
fn rsv1_where_it_may_not_be_is_1002_and_bad_data_1007() {
    let server = Server::start(&[]);
    let admin_addr = server.admin.unwrap();
    // Not negotiated.
    let mut z = ZClient::connect(server.addr, "/echo", None);
    z.send(true, b"hello hello hello", true, usize::MAX);
    assert_eq!(z.close_code(), 1002);
    // On a continuation frame.
    let mut z = ZClient::connect(server.addr, "/echo", Some(OFFER));
    let mut bytes = frames(true, b"ab", false, 1);
    bytes[2 + 4 + 1] |= 0x40; // the second frame's first byte: set RSV1
    z.send_raw(&bytes);
    assert_eq!(z.close_code(), 1002);
    // On a ping.
    let mut z = ZClient::connect(server.addr, "/echo", Some(OFFER));
    z.send_raw(&[0xC9, 0x80, 1, 2, 3, 4]);
    assert_eq!(z.close_code(), 1002);
    // Not deflate data.
    let mut z = ZClient::connect(server.addr, "/echo", Some(OFFER));
    z.send_raw(&frames(false, &[0xff; 16], true, usize::MAX));
    assert_eq!(z.close_code(), 1007);
    // Compressed text that is not UTF-8 once inflated.
    let mut z = ZClient::connect(server.addr, "/echo", Some(OFFER));
    z.send_raw(&frames(
        true,
        &deflate(&[b'a', 0xc3, 0x28]),
        true,
        usize::MAX,
    ));
    assert_eq!(z.close_code(), 1007);
    stats_until(admin_addr, |s| {
        s["totals"]["protocol_errors"]["1002"] == 3 && s["totals"]["protocol_errors"]["1007"] == 2
    });
}

/// A deflate stream of `chunks` MiB of zeros: each MiB compresses to about 1 KiB (deflate's
/// best ratio is about 1032:1, so this is as small as a bomb gets). Built by compressing two
/// MiB and repeating the second one's output, which only refers back to zeros.
fn zero_bomb(chunks: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = Compress::new(Compression::new(9), false);
    let part = |c: &mut Compress| {
        let mut out = Vec::with_capacity(8 << 10);
        let start = c.total_in();
        while c.total_in() - start < zeros.len() as u64 || !out.ends_with(&[0, 0, 0xff, 0xff]) {
            let done = (c.total_in() - start) as usize;
            c.compress_vec(&zeros[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            out.reserve(4096);
        }
        out
    };
    let first = part(&mut c);
    let next = part(&mut c);
    let mut bomb = first;
    for _ in 1..chunks {
        bomb.extend_from_slice(&next);
    }
    bomb.truncate(bomb.len() - 4);
    bomb
}

#[test]
fn deflate_bombs_are_1009_early_without_a_big_allocation() {
    // A 1 KiB bomb (1 MiB inflated) against a 64 KiB limit, from a publisher.
    let bomb = zero_bomb(1);
    assert!(bomb.len() <= 2048, "{} B", bomb.len());
    assert_eq!(common::zclient::inflate(&bomb, 2 << 20).len(), 1 << 20);
    let server = Server::start(&["--max-message-bytes", "65536"]);
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    let mut p = ZClient::connect(server.addr, "/pub/t", Some(OFFER));
    p.send_raw(&frames(false, &bomb, true, usize::MAX));
    assert_eq!(p.close_code(), 1009);
    // A subscriber's control message limit (4 KiB) holds the same way.
    let mut z = ZClient::connect(server.addr, "/ws/t", Some(OFFER));
    z.send_raw(&frames(true, &bomb, true, 300));
    assert_eq!(z.close_code(), 1009);
    // Nothing was published; the other clients go on.
    let (mut other, _) = server.ws("/pub/t");
    other.send(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut sub), "after");

    // A 1 GiB bomb (~1 MiB on the wire, so the limit is 2 MiB for it to get past the
    // decoder): 1009 after at most 2 MiB of output, fast, and the server's memory does not
    // move by anything near 1 GiB.
    let gib = zero_bomb(1024);
    assert!(gib.len() < 2 << 20, "{} B", gib.len());
    let server = Server::start(&["--max-message-bytes", "2097152"]);
    let admin_addr = server.admin.unwrap();
    let rss = || stats(admin_addr)["memory_usage"].as_u64().unwrap();
    let before = rss();
    let mut e = ZClient::connect(server.addr, "/echo", Some(OFFER));
    let start = Instant::now();
    e.send_raw(&frames(false, &gib, true, 64 << 10));
    assert_eq!(e.close_code(), 1009);
    let took = start.elapsed();
    let after = rss();
    assert!(
        after < before + (64 << 20),
        "RSS {before} -> {after} for a 1 GiB bomb"
    );
    assert!(took < Duration::from_secs(5), "1009 after {took:?}");
    eprintln!(
        "1 GiB bomb ({} B compressed): 1009 after {took:?}, RSS {before} -> {after}",
        gib.len()
    );
    stats_until(admin_addr, |s| s["totals"]["protocol_errors"]["1009"] == 1);
}

#[test]
fn topic_rules_and_thresholds_decide_what_is_compressed() {
    let server = Server::start(&[
        "--compression-topic",
        "raw.*=off",
        "--compression-min-bytes",
        "0",
        "--compression-level",
        "1",
    ]);
    let mut json = ZClient::connect(server.addr, "/ws/json", Some(OFFER));
    let mut raw = ZClient::connect(server.addr, "/ws/raw.video", Some(OFFER));
    for z in [&mut json, &mut raw] {
        z.send(
            true,
            br#"{"method":"LIST_SUBSCRIPTIONS","id":0}"#,
            false,
            usize::MAX,
        );
        z.message();
    }
    let body = event(3, 500);
    for t in ["json", "raw.video"] {
        assert_eq!(server.post(t, "application/json", body.as_bytes(), ""), 204);
    }
    let got = json.message();
    assert!(got.compressed);
    assert_eq!(got.payload, body.as_bytes());
    let got = raw.message();
    assert!(!got.compressed, "raw.* is off");
    assert_eq!(got.payload, body.as_bytes());
    // A client that did not negotiate never sees RSV1.
    let mut none = ZClient::connect(server.addr, "/ws/json", None);
    none.send(
        true,
        br#"{"method":"LIST_SUBSCRIPTIONS","id":0}"#,
        false,
        usize::MAX,
    );
    none.message();
    assert_eq!(
        server.post("json", "application/json", body.as_bytes(), ""),
        204
    );
    let got = none.message();
    assert!(!got.compressed);
    assert!(json.message().compressed);
}

/// Autobahn|Testsuite 13.1–13.7, in spirit: for each of its offer lists (`server_no_context_takeover`
/// and `server_max_window_bits` requested or not), compressed messages of 16 B – 4 KiB sent to
/// /echo come back intact; every compressed reply inflates within the window the client asked
/// for (a reply longer than the window comes back plain; one that does not shrink, too).
#[test]
fn autobahn_13_offers_round_trip_through_echo() {
    let server = Server::start(&["--compression-min-bytes", "16"]);
    let offers: [(&str, u8); 7] = [
        ("permessage-deflate", 15),
        ("permessage-deflate; server_no_context_takeover", 15),
        ("permessage-deflate; server_max_window_bits=8", 8),
        ("permessage-deflate; server_max_window_bits=15", 15),
        (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
            8,
        ),
        (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15",
            15,
        ),
        (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, \
             permessage-deflate; server_no_context_takeover, permessage-deflate",
            8,
        ),
    ];
    for (offer, bits) in offers {
        let mut z = ZClient::connect(server.addr, "/echo", Some(offer));
        let ext = z
            .extensions()
            .unwrap_or_else(|| panic!("{offer}: declined"));
        assert!(ext.starts_with(ANSWER), "{offer}: {ext}");
        for size in [16usize, 64, 256, 1024, 4096] {
            for i in 0..20 {
                let mut msg = event(i, size).into_bytes();
                msg.truncate(size);
                z.send(false, &msg, true, usize::MAX);
                let got = z.message();
                assert_eq!(got.payload, msg, "{offer}, {size} B");
                let window = 1usize << bits;
                if msg.len() > window {
                    assert!(!got.compressed, "{offer}, {size} B: over the window");
                } else if size >= 256 {
                    assert!(got.compressed, "{offer}, {size} B: JSON this long shrinks");
                }
                if got.compressed {
                    // Within the client's window (flate2 inflates with at least 9 bits).
                    assert_eq!(inflate_window(&got.wire, 1 << 20, bits.max(9)), msg);
                }
            }
        }
    }
}
