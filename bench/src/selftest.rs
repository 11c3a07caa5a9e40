//! The generator is an instrument, so it is tested against a server whose misbehaviour is known
//! exactly: a std-thread server that forwards each published message to its subscribers
//! according to a plan (drop one, send one twice, swap two, close with 1013), with its own frame
//! parser rather than proto's, so a decoding bug on one side cannot hide one on the other.

use crate::common::CommonArgs;
use crate::fanout::{self, FanoutArgs};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What subscriber `sub` (in connection order) receives when message `seq` is published: the
/// sequence numbers to send, and whether to close with 1013 afterwards.
type Plan = fn(sub: usize, seq: u64) -> (Vec<u64>, bool);

/// Reads one masked client frame; returns its unmasked payload, or `None` at end of stream.
fn read_client_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut mask).ok()?;
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).ok()?;
    p.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b ^= mask[i % 4]);
    Some(p)
}

/// Reads the upgrade request, answers 101, and returns the request path.
fn accept_upgrade(s: &mut TcpStream) -> Option<String> {
    let mut req = Vec::new();
    let mut b = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        req.push(b[0]);
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let path = text.split_whitespace().nth(1)?.to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))?
        .trim()
        .to_string();
    let accept = shardcast_proto::handshake::accept_key(key.as_bytes());
    let accept = std::str::from_utf8(&accept).ok()?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).ok()?;
    Some(path)
}

/// Starts the planned server; returns its URL.
fn planned_server(plan: Plan) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    let subs: Arc<Mutex<Vec<Option<TcpStream>>>> = Arc::default();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let subs = subs.clone();
            std::thread::spawn(move || {
                let Some(path) = accept_upgrade(&mut s) else {
                    return;
                };
                if path.starts_with("/ws/") {
                    subs.lock().unwrap().push(Some(s));
                    return;
                }
                // The publisher: forward each message's stamp by the plan.
                while let Some(p) = read_client_frame(&mut s) {
                    let seq = u64::from_le_bytes(p[8..16].try_into().unwrap()) & 0xFFFF_FFFF;
                    let mut subs = subs.lock().unwrap();
                    for (i, slot) in subs.iter_mut().enumerate() {
                        let Some(sub) = slot else { continue };
                        let (send, close) = plan(i, seq);
                        for n in send {
                            let mut q = p.clone();
                            q[8..16].copy_from_slice(&n.to_le_bytes());
                            let _ = sub.write_all(&crate::scan::frame(2, &q));
                        }
                        if close {
                            let _ = sub.write_all(&[0x88, 0x02, 0x03, 0xF5]);
                            *slot = None;
                        }
                    }
                }
            });
        }
    });
    url
}

fn run_fanout(url: String, subscribers: usize, topic: &str) -> serde_json::Value {
    let args = FanoutArgs {
        common: CommonArgs {
            url,
            ca: None,
            resume: false,
            cpus: Some("0".into()),
            source_addrs: 1,
            server_pid: None,
            json: None,
            connect_concurrency: 8,
            topic: topic.into(),
            timeout: 20.0,
        },
        subscribers,
        size: 64,
        rate: Some(100.0),
        window: 64,
        messages: 30,
        duration: 5.0,
        settle_ms: 100,
        percentiles: None,
        publish_url: None,
        seq: false,
    };
    fanout::measure(args).unwrap().result
}

#[test]
fn exact_delivery_counts() {
    let url = planned_server(|_, n| (vec![n], false));
    let r = run_fanout(url, 4, "exact");
    assert_eq!(r["messages_sent"].as_u64(), Some(30));
    assert_eq!(r["deliveries"].as_u64(), Some(120));
    assert_eq!(r["expected_deliveries"].as_u64(), Some(120));
    for k in ["lost", "duplicated", "reordered", "subscribers_ended_early"] {
        assert_eq!(r[k].as_u64(), Some(0), "{k}");
    }
}

#[test]
fn planted_gap_duplicate_reorder_and_close_1013() {
    let url = planned_server(|sub, n| match (sub, n) {
        (0, 5) => (vec![], false),     // gap: 5 never sent
        (1, 3) => (vec![3, 3], false), // duplicate
        (2, 7) => (vec![], false),     // reorder: 7 held back ...
        (2, 8) => (vec![8, 7], false), // ... and sent after 8
        (3, 10) => (vec![10], true),   // close 1013 after 10
        _ => (vec![n], false),
    });
    let r = run_fanout(url, 4, "planted");
    assert_eq!(r["messages_sent"].as_u64(), Some(30));
    // Sub 0 misses 1, sub 1 gets 1 extra, sub 3 stops after 11 of 30.
    assert_eq!(r["deliveries"].as_u64(), Some(29 + 31 + 30 + 11));
    assert_eq!(r["lost"].as_u64(), Some(1 + 19));
    assert_eq!(r["duplicated"].as_u64(), Some(1));
    assert_eq!(r["reordered"].as_u64(), Some(1));
    assert_eq!(r["subscribers_with_loss"].as_u64(), Some(2));
    assert_eq!(r["subscribers_ended_early"].as_u64(), Some(1));
    let why = r["first_end_reason"].as_str().unwrap();
    assert!(why.contains("1013"), "{why}");
}
