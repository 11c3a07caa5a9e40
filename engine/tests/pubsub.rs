//! Publish/subscribe through the real binary with two shards.
mod common;

use std::collections::HashMap;

use common::*;
use tungstenite::Message;

#[test]
fn ws_publish_reaches_subscribers_on_both_shards() {
    let server = Server::start(&[]);
    let mut subs = [server.ws_on("/ws/t", 0), server.ws_on("/ws/t", 1)];
    for s in &mut subs {
        sync(s);
    }
    let mut pubs = [server.ws_on("/pub/t", 0), server.ws_on("/pub/t", 1)];
    pubs[0].send(Message::text("from0")).unwrap();
    pubs[1].send(Message::binary(vec![1u8, 2, 3])).unwrap();
    for s in &mut subs {
        let mut got = vec![next(s), next(s)];
        got.sort_by_key(|m| m.is_text());
        assert_eq!(
            got,
            vec![Message::binary(vec![1u8, 2, 3]), Message::text("from0")]
        );
    }
}

#[test]
fn stream_wraps_text_and_passes_binary() {
    let server = Server::start(&[]);
    let mut s = server.ws_on("/stream?streams=a/b", 1);
    sync(&mut s);
    assert_eq!(server.post("a", "application/json", br#"{"x":1}"#, ""), 204);
    assert_eq!(next_text(&mut s), r#"{"stream":"a","data":{"x":1}}"#);
    assert_eq!(
        server.post("b", "application/octet-stream", &[0, 255], ""),
        204
    );
    assert_eq!(next(&mut s), Message::binary(vec![0u8, 255]));
    assert_eq!(server.post("b", "text/plain", b"42", ""), 204);
    assert_eq!(next_text(&mut s), r#"{"stream":"b","data":42}"#);
}

#[test]
fn room_members_publish_to_each_other() {
    let server = Server::start(&[]);
    let mut a = server.ws_on("/room/r", 0);
    let mut b = server.ws_on("/room/r", 1);
    // A room connection publishes every message, so sync through a plain subscriber instead.
    let mut watcher = server.ws("/ws/r").0;
    sync(&mut watcher);
    a.send(Message::text("hello")).unwrap();
    assert_eq!(next_text(&mut watcher), "hello");
    assert_eq!(next_text(&mut b), "hello");
    assert_eq!(next_text(&mut a), "hello", "the sender is a member too");
    b.send(Message::text("hi")).unwrap();
    assert_eq!(next_text(&mut a), "hi");
}

#[test]
fn http_publish_statuses() {
    let server = Server::start(&["--max-message-bytes", "16"]);
    let (mut s, _) = server.ws("/ws/h");
    sync(&mut s);
    assert_eq!(server.post("h", "text/plain", b"ok", ""), 204);
    assert_eq!(next_text(&mut s), "ok");
    assert_eq!(server.post("h", "text/plain", &[b'x'; 17], ""), 413);
    assert_eq!(server.post("h", "text/plain", &[0xff, 0xfe], ""), 400);
    assert_eq!(server.post("bad/topic", "text/plain", b"x", ""), 400);
    let r = server.http(b"POST /publish/h HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&r), 400, "{r}");
    let r = server.http(b"GET /publish/h HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&r), 405, "{r}");
    assert_eq!(
        server.post("h", "application/octet-stream", b"bin", ""),
        204
    );
    assert_eq!(next(&mut s), Message::binary(b"bin".to_vec()));
}

#[test]
fn echo_text_binary_ping_close() {
    let server = Server::start(&[]);
    let (mut e, _) = server.ws("/echo");
    e.send(Message::text("hi")).unwrap();
    assert_eq!(next(&mut e), Message::text("hi"));
    e.send(Message::binary(vec![9u8; 70_000])).unwrap();
    assert_eq!(next(&mut e), Message::binary(vec![9u8; 70_000]));
    e.send(Message::Ping(b"p".to_vec().into())).unwrap();
    match e.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        m => panic!("expected pong, got {m:?}"),
    }
    e.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "".into(),
    }))
    .unwrap();
    match e.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001, "close code echoed"),
        m => panic!("expected close, got {m:?}"),
    }
}

#[test]
fn protocol_error_closes_with_its_code() {
    let server = Server::start(&["--max-control-message-bytes", "64"]);
    let (mut s, _) = server.ws("/ws/x");
    s.send(Message::text("y".repeat(100))).unwrap();
    match next(&mut s) {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        m => panic!("expected close 1009, got {m:?}"),
    }
}

/// Several concurrent publishers × thousands of messages: every subscriber sees each
/// publisher's messages in order, exactly once.
#[test]
fn per_publisher_order_and_no_duplicates() {
    order_and_no_duplicates(&[]);
}

/// The same with tiny inter-shard rings, so envelopes go through the overflow queues.
#[test]
fn per_publisher_order_survives_ring_overflow() {
    order_and_no_duplicates(&["--ring-capacity", "2"]);
}

fn order_and_no_duplicates(args: &[&str]) {
    const PUBLISHERS: usize = 4;
    const MESSAGES: usize = 3000;
    let server = Server::start(args);
    let mut subs = vec![
        server.ws_on("/ws/o", 0),
        server.ws_on("/ws/o", 1),
        server.ws("/stream?streams=o").0,
    ];
    for s in &mut subs {
        sync(s);
    }
    // Publishers alternate between the shards, so both local and cross-shard paths carry load.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut ws = server.ws_on("/pub/o", p % 2);
            std::thread::spawn(move || {
                for i in 0..MESSAGES {
                    ws.send(Message::text(format!("\"{p}:{i}\""))).unwrap();
                }
                ws
            })
        })
        .collect();
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(k, mut s)| {
            std::thread::spawn(move || {
                let mut next_seq: HashMap<usize, usize> = HashMap::new();
                for _ in 0..PUBLISHERS * MESSAGES {
                    let mut text = next_text(&mut s);
                    if k == 2 {
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["stream"], "o");
                        text = v["data"].to_string();
                    }
                    let (p, i) = text.trim_matches('"').split_once(':').unwrap();
                    let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
                    let want = next_seq.entry(p).or_insert(0);
                    assert_eq!(i, *want, "publisher {p}: out of order or duplicate");
                    *want += 1;
                }
                next_seq
            })
        })
        .collect();
    let _pubs: Vec<_> = publishers.into_iter().map(|h| h.join().unwrap()).collect();
    for r in readers {
        let counts = r.join().unwrap();
        assert_eq!(counts.len(), PUBLISHERS);
        assert!(counts.values().all(|&n| n == MESSAGES));
    }
}
