//! The access glue in the core (issue 14), on a virtual clock: per-address limits at accept,
//! the token check at upgrade, grants for in-band SUBSCRIBE, token expiry in the sweep, the
//! inbound rate limit in the input path, the access box kept out of idle slots, and the
//! `serverShutdown` notice.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use shardcast_proto::{encode_close, CloseCode, OpCode};

use super::tests::{client_frame, closing, connect, cores, flush, frames, take, upgrade_request};
use super::Core;
use crate::access::token::tests::sign;
use crate::access::token::unix_now;
use crate::obs::stats::{self, Refusal};
use crate::runtime::driver::{Admit, ConnId, Handler, IoRequest};

const SECRET: &str = "core-secret";

fn core_at(args: &[&str], t0: Instant) -> Core {
    cores(1, args, t0).pop().unwrap()
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn token(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, &claims, SECRET.as_bytes())
}

/// An upgrade of `path` presenting `token` (if any); the response head.
fn upgrade_with(core: &mut Core, path: &str, token: Option<&str>) -> (ConnId, String) {
    let mut req = upgrade_request(path);
    if let Some(t) = token {
        req.truncate(req.len() - 2);
        req.extend_from_slice(format!("Authorization: Bearer {t}\r\n\r\n").as_bytes());
    }
    let id = connect(core, "127.0.0.1:40000", &req);
    (id, String::from_utf8_lossy(&take(core, id)).into_owned())
}

#[test]
fn inbound_rate_limit_closes_1008_counts_and_boxes_only_while_needed() {
    let t0 = Instant::now();
    let mut c = core_at(&["--subscriber-rate", "5", "--subscriber-burst", "3"], t0);
    let (id, head) = upgrade_with(&mut c, "/ws/t", None);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        c.conn(id).unwrap().access.is_none(),
        "idle: no access state"
    );
    // A burst of 3 pings is answered; the 4th frame is one too many.
    for _ in 0..3 {
        c.handle_received(id, &mut client_frame(OpCode::Ping, b""));
    }
    assert!(
        c.conn(id).unwrap().access.is_some(),
        "a bucket that is not full"
    );
    // Three pings while nothing was sent: one pong (RFC 6455 §5.5.3, coalesced by the queue).
    assert_eq!(frames(&c, id).len(), 1, "one pong for three unsent pings");
    // 200 ms later one more frame fits (5/s), then none.
    c.handle_time(at(t0, 200));
    c.handle_received(id, &mut client_frame(OpCode::Pong, b""));
    assert!(!closing(&c, id));
    c.handle_received(id, &mut client_frame(OpCode::Pong, b""));
    assert!(closing(&c, id));
    assert_eq!(
        frames(&c, id).last().unwrap()[..],
        encode_close(CloseCode::POLICY, "too many requests")[..]
    );
    assert_eq!(stats::get(&c.stats().access.rate_limited), 1);

    // A subscriber that only answers pings: its box goes at the next sweep after its bucket
    // is full again.
    let (quiet, _) = upgrade_with(&mut c, "/ws/t", None);
    c.handle_received(quiet, &mut client_frame(OpCode::Pong, b""));
    assert!(c.conn(quiet).unwrap().access.is_some());
    c.handle_time(at(t0, 1500));
    assert!(!closing(&c, quiet));
    assert!(
        c.conn(quiet).unwrap().access.is_none(),
        "dropped by the sweep"
    );

    // Publishers have their own limit.
    let mut c = core_at(&["--publisher-rate", "2", "--publisher-burst", "2"], t0);
    let (p, _) = upgrade_with(&mut c, "/pub/t", None);
    for _ in 0..2 {
        c.handle_received(p, &mut client_frame(OpCode::Text, b"x"));
    }
    assert!(!closing(&c, p));
    c.handle_received(p, &mut client_frame(OpCode::Text, b"x"));
    assert!(closing(&c, p));
}

#[test]
fn tokens_grants_and_expiry_on_a_virtual_clock() {
    let t0 = Instant::now();
    let mut c = core_at(&["--jwt-secret", SECRET], t0);
    // No token: nothing is public once a JWT key is configured, loopback is not trusted.
    let (_, head) = upgrade_with(&mut c, "/ws/md.a", None);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    let s = c.stats();
    assert_eq!(s.snapshot().refused[Refusal::ALL.len() - 1], 0);
    assert_eq!(s.access.snapshot().refused.iter().sum::<u64>(), 1);
    let exp = unix_now() + 10;
    let t = token(json!({"exp": exp, "subscribe": ["md.*"], "publish": []}));
    let (_, head) = upgrade_with(&mut c, "/ws/other", Some(&t));
    assert!(head.starts_with("HTTP/1.1 403"), "not granted: {head}");
    let (id, head) = upgrade_with(&mut c, "/ws/md.a", Some(&t));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let conn = c.conn(id).unwrap();
    assert!(conn.access.as_ref().is_some_and(|a| a.grants.is_some()));
    // In-band SUBSCRIBE: granted topics only; a refusal changes nothing and is counted.
    let sub = |topic: &str| {
        client_frame(
            OpCode::Text,
            format!(r#"{{"method":"SUBSCRIBE","params":["{topic}"],"id":1}}"#).as_bytes(),
        )
    };
    c.handle_received(id, &mut sub("md.b"));
    assert_eq!(&take(&mut c, id)[2..], br#"{"result":null,"id":1}"#);
    c.handle_time(at(t0, 300));
    c.handle_received(id, &mut sub("secret"));
    let reply = String::from_utf8_lossy(&take(&mut c, id)[2..]).into_owned();
    assert!(reply.contains(r#""code":6"#), "{reply}");
    assert_eq!(stats::get(&c.stats().access.subscribe_denied), 1);
    // The box holds the grants: the sweep keeps it. Well before `exp`: still open.
    c.handle_time(at(t0, 5000));
    assert!(c.conn(id).unwrap().access.is_some());
    assert!(!closing(&c, id));
    // Past `exp` (at most 10 s away), the next sweep closes it 1008. Stepped in sweep periods,
    // so the close frame is looked at before `close_flush_timeout_ms` resets the unread peer.
    let mut ms = 5000;
    while !closing(&c, id) && ms < 12_100 {
        ms += 100;
        c.handle_time(at(t0, ms));
    }
    assert!(closing(&c, id));
    assert_eq!(
        frames(&c, id).last().unwrap()[..],
        encode_close(CloseCode::POLICY, "token expired")[..]
    );
    assert_eq!(stats::get(&c.stats().access.token_expired), 1);
}

#[test]
fn per_address_limits_answer_429_at_accept_and_release_at_close() {
    let mut c = core_at(
        &[
            "--ip-connect-limit",
            "3",
            "--ip-max-connections",
            "1",
            "--ip-limit-loopback",
            "on",
        ],
        Instant::now(),
    );
    let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let Admit::Accept(first) = c.handle_accepted(peer) else {
        panic!("refused")
    };
    assert!(c.conn(first).unwrap().access.is_some(), "holds a ticket");
    let Admit::Refuse(r) = c.handle_accepted(peer) else {
        panic!("one open connection per address")
    };
    assert!(r.starts_with(b"HTTP/1.1 429"), "{r:?}");
    assert_eq!(c.active(), 1, "refused attempts get no slot");
    // Closing the first releases its ticket.
    c.end(first, crate::runtime::driver::CloseMode::Graceful);
    while let Some(req) = c.poll_io() {
        if let IoRequest::Close(id, _) = req {
            c.handle_closed(id);
        }
    }
    assert!(matches!(c.handle_accepted(peer), Admit::Accept(_)));
    // Attempts count refused ones too: the 4th in the window is refused, with Retry-After.
    let Admit::Refuse(r) = c.handle_accepted(peer) else {
        panic!("over the attempts")
    };
    let text = String::from_utf8_lossy(&r);
    assert!(text.contains("Retry-After: "), "{text}");
    let s = c.stats().snapshot();
    let i = Refusal::ALL
        .iter()
        .position(|r| *r == Refusal::TooManyRequests)
        .unwrap();
    assert_eq!(s.refused[i], 2);
}

#[test]
fn server_shutdown_event_then_the_close_after_the_notice() {
    let t0 = Instant::now();
    let mut c = core_at(&["--shutdown-notice-ms", "500"], t0);
    let (id, _) = upgrade_with(&mut c, "/ws/t", None);
    c.begin_shutdown();
    let got = flush(&mut c).0.remove(&id).unwrap();
    let text = String::from_utf8_lossy(&got[2..]).into_owned();
    assert!(text.starts_with(r#"{"e":"serverShutdown","E":"#), "{text}");
    assert!(!closing(&c, id), "the notice comes first");
    assert!(c.poll_timeout() <= Duration::from_millis(500));
    c.handle_time(at(t0, 499));
    assert!(!closing(&c, id));
    c.handle_time(at(t0, 500));
    assert!(closing(&c, id));
    assert_eq!(
        frames(&c, id),
        vec![encode_close(
            CloseCode::GOING_AWAY,
            crate::runtime::shutdown::SHUTDOWN_REASON
        )
        .to_vec()]
    );
}

#[test]
#[ignore = "timing probe: cargo test --release -p shardcast --lib -- --ignored subscribe_cost --nocapture"]
fn subscribe_cost() {
    let args = [
        "--subscriber-rate",
        "0",
        "--max-control-message-bytes",
        "65536",
    ];
    let mut c = core_at(&args, Instant::now());
    let (id, _) = upgrade_with(&mut c, "/ws", None);
    let topics: Vec<String> = (0..1024)
        .map(|i| format!("\"probe.topic.{i:04}\""))
        .collect();
    let sub = format!(
        r#"{{"method":"SUBSCRIBE","params":[{}],"id":1}}"#,
        topics.join(",")
    );
    let unsub = sub.replace("SUBSCRIBE", "UNSUBSCRIBE");
    for round in 0..3 {
        let t = Instant::now();
        c.handle_received(id, &mut client_frame(OpCode::Text, sub.as_bytes()));
        let s = t.elapsed();
        let t = Instant::now();
        c.handle_received(id, &mut client_frame(OpCode::Text, unsub.as_bytes()));
        let u = t.elapsed();
        take(&mut c, id);
        eprintln!("round {round}: SUBSCRIBE 1024 {s:?}, UNSUBSCRIBE 1024 {u:?}");
    }
}
