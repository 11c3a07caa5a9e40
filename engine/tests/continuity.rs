//! Continuity end to end (docs/CONTINUITY.md): `seq=1` numbering across shards, resume after a
//! disconnect with nothing lost and nothing duplicated, the `resync` notice when history no
//! longer covers a position, plain subscribers unchanged. Both drivers (the second pass of the
//! suite sets SHARDCAST_URING_REFUSE=1).
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tungstenite::Message;

fn publish(server: &Server, topic: &str, i: u64) {
    assert_eq!(
        server.post(topic, "application/json", i.to_string().as_bytes(), ""),
        204
    );
}

#[test]
fn every_shard_sees_the_same_gap_free_numbers_and_plain_bytes_do_not_change() {
    let server = Server::start(&[]);
    let mut seqs = [
        server.ws_on("/ws/t?seq=1", 0),
        server.ws_on("/ws/t?seq=1", 1),
    ];
    let mut epochs = Vec::new();
    for s in &mut seqs {
        let (epoch, at, resync) = notice(s, "t");
        assert_eq!((at, resync), (0, None), "a fresh topic starts at 0");
        epochs.push(epoch);
    }
    assert_eq!(epochs[0], epochs[1], "one numbering per topic on a host");
    assert_eq!(epochs[0].len(), 16);
    let mut plain = server.ws("/ws/t").0;
    let mut stream = server.ws("/stream?streams=t").0;
    sync(&mut plain);
    sync(&mut stream);
    // Publishers on both shards, interleaved: one total order on the topic's home shard.
    let mut pubs = [server.ws_on("/pub/t", 0), server.ws_on("/pub/t", 1)];
    const N: u64 = 200;
    for i in 0..N {
        pubs[(i % 2) as usize]
            .send(Message::text(format!("{{\"i\":{i}}}")))
            .unwrap();
    }
    let mut seen: Vec<BTreeMap<u64, Value>> = Vec::new();
    for s in &mut seqs {
        let mut m = BTreeMap::new();
        for want in 1..=N {
            let (seq, d) = data(s, "t");
            assert_eq!(seq, want, "gap-free and strictly increasing");
            m.insert(seq, d);
        }
        seen.push(m);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same number for the same message on every shard"
    );
    // Each publisher's own order survives inside the total order.
    for p in 0..2u64 {
        let order: Vec<u64> = seen[0]
            .values()
            .map(|d| d["i"].as_u64().unwrap())
            .filter(|i| i % 2 == p)
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
    // Plain subscribers: byte-identical to a server without continuity.
    let mut texts = Vec::new();
    for _ in 0..N {
        texts.push(next_text(&mut plain));
        let w: Value = serde_json::from_str(&next_text(&mut stream)).unwrap();
        assert_eq!(w.as_object().unwrap().len(), 2, "{w}: stream and data only");
    }
    assert!(texts
        .iter()
        .all(|t| t.starts_with("{\"i\":") && !t.contains("seq")));
}

#[test]
fn binary_messages_carry_the_documented_prefix() {
    let server = Server::start(&[]);
    let (mut s, _) = server.ws("/stream?streams=ab&seq=1");
    notice(&mut s, "ab");
    assert_eq!(
        server.post("ab", "application/octet-stream", &[0xff, 0], ""),
        204
    );
    let want = [1u8, 0, 0, 0, 0, 0, 0, 0, 1, 2, b'a', b'b', 0xff, 0];
    assert_eq!(next(&mut s), Message::binary(want.to_vec()));
}

/// Read every data message of `topic` until `last` arrives; returns the numbers seen.
fn read_until(ws: &mut Ws, topic: &str, last: u64) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let (seq, d) = data(ws, topic);
        assert_eq!(
            d.as_u64(),
            Some(seq),
            "message {seq} carries its own payload"
        );
        out.push(seq);
        if seq >= last {
            return out;
        }
    }
}

#[test]
fn resume_after_a_disconnect_loses_nothing_and_duplicates_nothing() {
    let server = Server::start(&["--topic-history", "r=messages=10000,bytes=8MiB"]);
    const TOTAL: u64 = 3000;
    // The publisher runs throughout: the client is cut off and resumes mid-stream, on the
    // other shard, while messages keep coming.
    let (mut s, shard) = server.ws("/ws/r?seq=1");
    let (epoch, start, _) = notice(&mut s, "r");
    assert_eq!(start, 0);
    let addr = server.addr;
    let publisher = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let (mut p, _) = tungstenite::client(format!("ws://{addr}/pub/r"), tcp).unwrap();
        // Payload = its own number (the topic is new, so message i gets number i).
        for i in 1..=TOTAL {
            p.send(Message::text(i.to_string())).unwrap();
            if i.is_multiple_of(500) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        p.flush().unwrap();
        p
    });
    let mut have: Vec<u64> = Vec::new();
    for _ in 0..400 {
        have.push(data(&mut s, "r").0);
    }
    drop(s); // cut off (no close handshake)
    let last = *have.last().unwrap();
    let path = format!("/ws/r?seq=1&since=r:{last}&epoch={epoch}");
    let mut s = server.ws_on(&path, 1 - shard);
    let (e, at, resync) = notice(&mut s, "r");
    assert_eq!((e.as_str(), at, resync), (epoch.as_str(), last, None));
    have.extend(read_until(&mut s, "r", TOTAL));
    let _p = publisher.join().unwrap();
    let want: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(have, want, "every message exactly once, in order");
    // The counters show the asks and every message numbered (gauges are copied on each
    // shard's tick). How much was replayed rather than delivered live depends on how far the
    // publisher had got when the client resumed.
    let st = stats_until(server.admin.unwrap(), |v| {
        let c = &v["totals"]["continuity"];
        c["asks"].as_u64() >= Some(2) && c["stamped"].as_u64() >= Some(TOTAL)
    });
    let c = &st["totals"]["continuity"];
    assert!(c["history_bytes"].as_u64() > Some(0), "{c}");
}

#[test]
fn history_too_short_gets_a_trimmed_resync_naming_where_it_continues() {
    let server = Server::start(&["--topic-history", "g=messages=10"]);
    let (mut s, _) = server.ws("/ws/g?seq=1");
    let (epoch, _, _) = notice(&mut s, "g");
    for i in 1..=5 {
        publish(&server, "g", i);
    }
    assert_eq!(read_until(&mut s, "g", 5), vec![1, 2, 3, 4, 5]);
    drop(s);
    for i in 6..=55 {
        publish(&server, "g", i);
    }
    let (mut s, _) = server.ws(&format!("/ws/g?seq=1&since=g:5&epoch={epoch}"));
    let (e, at, resync) = notice(&mut s, "g");
    assert_eq!(e, epoch);
    assert_eq!(
        (at, resync.as_deref()),
        (45, Some("trimmed")),
        "the ring keeps 46..=55"
    );
    assert_eq!(read_until(&mut s, "g", 55), (46..=55).collect::<Vec<_>>());
    publish(&server, "g", 56);
    assert_eq!(data(&mut s, "g").0, 56, "then live");
    // A position of another numbering (a restart) is an `epoch` resync from the head side.
    let (mut s, _) = server.ws("/ws/g?seq=1&since=g:5&epoch=00000000000000ff");
    let (_, at, resync) = notice(&mut s, "g");
    assert_eq!((at, resync.as_deref()), (46, Some("epoch")));
    assert_eq!(read_until(&mut s, "g", 56), (47..=56).collect::<Vec<_>>());
    // A position ahead of the head.
    let (mut s, _) = server.ws(&format!("/ws/g?seq=1&since=g:999&epoch={epoch}"));
    assert_eq!(notice(&mut s, "g").2.as_deref(), Some("ahead"));
}

#[test]
fn subscribe_messages_resume_too_and_parameters_are_checked() {
    let server = Server::start(&[]);
    let (mut s, _) = server.ws("/stream?streams=a&seq=1");
    let (epoch, _, _) = notice(&mut s, "a");
    for i in 1..=3 {
        publish(&server, "b", i);
    }
    s.send(Message::text(format!(
        r#"{{"method":"SUBSCRIBE","params":["b"],"since":{{"b":1}},"epoch":"{epoch}","id":7}}"#
    )))
    .unwrap();
    // The reply comes before the notice and replay, or after them when this shard is the
    // topic's home (it answers within the request); they are in order either way.
    let (mut replied, mut stream) = (false, Vec::new());
    while !replied || stream.len() < 3 {
        let v: Value = serde_json::from_str(&next_text(&mut s)).unwrap();
        if v.get("id").is_some() {
            assert_eq!(v, serde_json::json!({"result": null, "id": 7}));
            replied = true;
        } else {
            stream.push(v);
        }
    }
    assert_eq!(
        stream,
        [
            serde_json::json!({"stream": "b", "epoch": epoch, "seq": 1}),
            serde_json::json!({"stream": "b", "seq": 2, "data": 2}),
            serde_json::json!({"stream": "b", "seq": 3, "data": 3}),
        ]
    );
    // `since` on a plain connection is a control error, and subscribes nothing.
    let (mut p, _) = server.ws("/stream?streams=a");
    let r = control(
        &mut p,
        r#"{"method":"SUBSCRIBE","params":["c"],"since":"c:1","epoch":"00000000000000ff","id":1}"#,
    );
    assert_eq!(r["error"]["code"], 2, "{r}"); // Binance's "Invalid request"
                                              // In URLs: 400s.
    for path in [
        "/ws/a?since=a:1",
        "/ws/a?seq=2",
        "/ws/a?seq=1&since=zz:1&epoch=00000000000000ff",
        "/ws/a?seq=1&since=a:x&epoch=00000000000000ff",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(status(&server.http(req.as_bytes())), 400, "{path}");
    }
}

#[test]
fn a_sequenced_client_evicted_mid_stream_resumes_without_loss() {
    // A small high-water mark: the client that stops reading is evicted (1013), then resumes.
    evicted_then_resumed(&[]);
}

#[test]
fn a_conflating_topic_evicts_a_sequenced_client_instead_of_dropping_messages() {
    // `conflate` would discard queued messages: a sequenced client is evicted and resumes.
    evicted_then_resumed(&["--topic-policy", "e=conflate"]);
}

fn evicted_then_resumed(extra: &[&str]) {
    // A mark this small must hold one max-size message plus the kernel's send buffer
    // (`Config::check_limits`): 8 KiB messages, 16 KiB send buffers (8 KiB + 159 + 40 KiB).
    let mut args = vec![
        "--max-message-bytes",
        "8192",
        "--send-buffer-bytes",
        "16KiB",
        "--high-water-bytes",
        "64KiB",
        "--topic-history",
        "e=messages=20000,bytes=16MiB",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let addr = server.addr;
    let (mut slow, epoch) = slow_sequenced(addr, "/ws/e?seq=1", "e");
    let payload = "x".repeat(1000);
    let (mut p, _) = server.ws("/pub/e");
    let mut n = 0u64;
    let evicted = |v: &Value| v["totals"]["evictions"]["high_water"].as_u64() > Some(0);
    while n < 10_000 {
        n += 1;
        p.send(Message::text(format!("\"{n}{payload}\""))).unwrap();
        if n.is_multiple_of(200) && evicted(&stats(server.admin.unwrap())) {
            break;
        }
    }
    assert!(evicted(&stats_until(server.admin.unwrap(), evicted)));
    // Every message sent is numbered (in history) before the client resumes: otherwise the
    // rest of the publisher's backlog would reach the resumed client live, at full speed, and
    // a reader slowed by a loaded machine would be (rightly) evicted again.
    stats_until(server.admin.unwrap(), |v| {
        v["totals"]["continuity"]["stamped"].as_u64() >= Some(n)
    });
    // Read what reached it before the 1013.
    let last = read_until_evicted(&mut slow);
    let (mut s, _) = server.ws(&format!("/ws/e?seq=1&since=e:{last}&epoch={epoch}"));
    assert_eq!(notice(&mut s, "e"), (epoch, last, None));
    p.send(Message::text(format!("\"{}end\"", n + 1))).unwrap();
    let mut want = last + 1;
    loop {
        let m = next(&mut s);
        let Message::Text(t) = m else {
            panic!(
                "{m:?} at {want}: {}",
                stats(server.admin.unwrap())["totals"]
            );
        };
        let seq = serde_json::from_str::<Value>(&t).unwrap()["seq"]
            .as_u64()
            .unwrap();
        assert_eq!(seq, want);
        if seq == n + 1 {
            break;
        }
        want += 1;
    }
}
