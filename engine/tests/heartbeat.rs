//! Heartbeats and timeouts against the real binary: pings answered keep a client connected,
//! a silent peer is closed after ping + pong timeout, lifetime and idle timeouts close 1001.
mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Upper bound on how late a close may come (sweep period + scheduling on a loaded machine).
const SLACK: Duration = Duration::from_millis(1000);

/// Read with a short timeout until `until`; returns pings seen. Panics on close or error.
fn read_until(ws: &mut Ws, until: Instant) -> usize {
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pings = 0;
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
    pings
}

/// Wait for the server's close frame; returns (code, reason, time since `start`).
fn expect_close(ws: &mut Ws, start: Instant) -> (u16, String, Duration) {
    ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                return (u16::from(f.code), f.reason.to_string(), start.elapsed())
            }
            Ok(Message::Ping(_)) => {}
            Ok(m) => panic!("unexpected {m:?}"),
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Upgrade on a raw socket; nothing past the response head has been read yet.
fn raw_upgrade(server: &Server, path: &str) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    upgrade_raw(&mut tcp, path);
    (tcp, Vec::new())
}

#[test]
fn answered_pings_keep_clients_and_silent_peers_are_closed() {
    let server = Server::start(&[
        "--ping-interval-ms",
        "200",
        "--pong-timeout-ms",
        "300",
        "--idle-timeout-ms",
        "700",
    ]);
    // A normal client: tungstenite answers every ping while it reads.
    let (mut ws, _) = server.ws("/ws/t");
    let start = Instant::now();
    // A peer that completes the upgrade and then never sends anything.
    let (mut raw, mut got) = raw_upgrade(&server, "/ws/t");

    let pings = read_until(&mut ws, start + Duration::from_secs(2));
    assert!((5..=10).contains(&pings), "{pings} pings in 2 s");
    // Still connected and served after 2 s (several idle timeouts' worth of pongs only).
    server.post("t", "text/plain", b"still here", "");
    ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => break assert_eq!(t.as_str(), "still here"),
            Message::Ping(_) => {}
            m => panic!("unexpected {m:?}"),
        }
    }

    // The silent peer: it was closed long ago; read everything the server sent.
    let mut chunk = [0u8; 256];
    loop {
        match raw.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
    let mut close = vec![0x88, 14, 0x03, 0xe9];
    close.extend_from_slice(b"pong timeout");
    assert_eq!(got[..2], [0x89, 0x00], "a ping first: {got:?}");
    assert_eq!(got[2..], close[..], "then the close frame, then EOF");
}

#[test]
fn silent_peer_is_closed_within_ping_plus_pong_timeout() {
    let server = Server::start(&["--ping-interval-ms", "200", "--pong-timeout-ms", "300"]);
    let (mut raw, mut got) = raw_upgrade(&server, "/ws/t");
    let start = Instant::now();
    let mut chunk = [0u8; 256];
    let eof = loop {
        match raw.read(&mut chunk) {
            Ok(0) => break start.elapsed(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    };
    assert_eq!(got[..2], [0x89, 0x00], "{got:?}");
    assert_eq!(got[2..6], [0x88, 14, 0x03, 0xe9], "close 1001: {got:?}");
    assert_eq!(&got[6..], b"pong timeout");
    eprintln!("silent peer closed after {eof:?}");
    // The operator sees what the client saw: one ping sent, one heartbeat timeout.
    let s = stats(server.admin.expect("admin listener"));
    assert_eq!(s["totals"]["heartbeat_timeouts_total"], 1, "{s:#}");
    assert!(s["totals"]["pings_sent_total"].as_u64() >= Some(1), "{s:#}");
    // Ping due at 200 ms, close due 300 ms after it; the sweep runs every 50 ms.
    assert!(
        eof >= Duration::from_millis(480) && eof <= Duration::from_millis(500) + SLACK,
        "closed after {eof:?}"
    );
}

#[test]
fn max_lifetime_closes_with_1001() {
    let server = Server::start(&[
        "--ping-interval-ms",
        "0",
        "--max-lifetime-ms",
        "400",
        "--lifetime-jitter-pct",
        "10",
    ]);
    let (mut ws, _) = server.ws("/ws/t");
    let start = Instant::now();
    let (code, reason, after) = expect_close(&mut ws, start);
    assert_eq!((code, reason.as_str()), (1001, "max connection lifetime"));
    eprintln!("lifetime close after {after:?}");
    assert!(
        after >= Duration::from_millis(340) && after <= Duration::from_millis(400) + SLACK,
        "closed after {after:?}"
    );
}

#[test]
fn idle_timeout_closes_with_1001() {
    let server = Server::start(&["--ping-interval-ms", "0", "--idle-timeout-ms", "300"]);
    let (mut ws, _) = server.ws("/ws/t");
    let start = Instant::now();
    let (code, reason, after) = expect_close(&mut ws, start);
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    eprintln!("idle close after {after:?}");
    assert!(
        after >= Duration::from_millis(280) && after <= Duration::from_millis(300) + SLACK,
        "closed after {after:?}"
    );
}
