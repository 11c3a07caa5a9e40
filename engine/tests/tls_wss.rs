//! wss:// and HTTPS served by the real binary (`--tls-cert`/`--tls-key`) on an ephemeral
//! loopback port, with clients nobody here wrote: tungstenite (rustls) on every route, TLS 1.3
//! and 1.2; Python `websockets` with an `ssl` context; `openssl s_client` (protocol, ALPN);
//! headless Chromium trusting the leaf by its SPKI hash. Also: `close_notify` on close, client
//! certificates and the minimum version, hostile TLS input closed and counted while a healthy
//! subscriber loses nothing, a never-reading TLS subscriber evicted while fast ones get
//! everything, SIGHUP serving new handshakes with the new certificate under a live stream, and
//! a plain listener beside wss:// (`--listen-plain`). scripts/test.sh runs the
//! suite on io_uring and again on epoll (`SHARDCAST_URING_REFUSE=1`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{
    chromium_wss, foreign_identity, localhost, openssl_upgrades_on_tls13_and_tls12_only,
    python_websockets, tungstenite_wss, LeafKey, Pki,
};
use common::{chromium, deadline, stats, stats_until, Server, TIMEOUT};
use rustls::pki_types::CertificateDer;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;

type Wss = WebSocket<MaybeTlsStream<TcpStream>>;

fn start(pki: &Pki, extra: &[&str]) -> Server {
    let mut args: Vec<String> = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

fn url(server: &Server, path: &str) -> String {
    format!("wss://localhost:{}{path}", server.addr.port())
}

fn wss(
    server: &Server,
    pki: &Pki,
    path: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Wss {
    tungstenite_wss(
        &url(server, path),
        server.addr,
        pki.client_config(&[version]),
    )
    .unwrap_or_else(|e| panic!("wss {path}: {e}"))
}

fn next_data(ws: &mut Wss) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// A rustls client stream over loopback (for HTTPS and raw WebSocket bytes).
fn tls_stream(
    server: &Server,
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(pki.client_config(&[version])), localhost())
        .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A WebSocket upgrade of `path` over `s`; reads exactly the status (`HTTP/1.1 101`), leaving the
/// rest of the head unread.
fn upgrade_over(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, path: &str) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

/// An HTTPS request; the whole response, read to a clean TLS end (`close_notify`: rustls reports
/// a missing one as an error).
fn https(
    server: &Server,
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    request: &str,
) -> String {
    let mut s = tls_stream(server, pki, version);
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("response ends with close_notify");
    String::from_utf8_lossy(&out).into_owned()
}

fn publish(
    server: &Server,
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    topic: &str,
    body: &str,
) {
    let response = https(
        server,
        pki,
        version,
        &format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
}

#[test]
fn every_route_over_wss_on_tls13_and_tls12() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    for (v, version) in [(13, TLS13), (12, TLS12)] {
        let mut echo = wss(&server, &pki, "/echo", version);
        match echo.get_ref() {
            MaybeTlsStream::Rustls(tls) => {
                assert_eq!(tls.conn.protocol_version(), Some(version.version));
                assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            }
            _ => panic!("not TLS"),
        }
        for i in 0..20 {
            let text = format!("message {i} {}", "x".repeat(i * 100));
            echo.send(Message::text(text.clone())).unwrap();
            assert_eq!(next_data(&mut echo), Message::text(text));
        }
        // Larger than a record, a seal's batch and a provided buffer.
        let big = vec![0xa5u8; 300_000];
        echo.send(Message::binary(big.clone())).unwrap();
        assert_eq!(next_data(&mut echo), Message::binary(big));

        // Subscribers on both shards, fed by an HTTPS publish, a wss:// publisher and a room.
        let topic = format!("t{v}");
        let mut subs: Vec<Wss> = (0..4)
            .map(|_| wss(&server, &pki, &format!("/ws/{topic}"), version))
            .collect();
        let mut stream = wss(
            &server,
            &pki,
            &format!("/stream?streams={topic}/other{v}"),
            version,
        );
        publish(&server, &pki, version, &topic, r#"{"n":1}"#);
        for s in subs.iter_mut() {
            assert_eq!(next_data(s), Message::text(r#"{"n":1}"#));
        }
        assert_eq!(
            next_data(&mut stream),
            Message::text(format!(r#"{{"stream":"{topic}","data":{{"n":1}}}}"#))
        );
        let mut publisher = wss(&server, &pki, &format!("/pub/{topic}"), version);
        // A burst: queued frames are sealed together, each subscriber gets every one in order.
        for i in 0..500 {
            publisher
                .send(Message::text(format!(r#"{{"i":{i}}}"#)))
                .unwrap();
        }
        publisher.flush().unwrap();
        for s in subs.iter_mut() {
            for i in 0..500 {
                assert_eq!(next_data(s), Message::text(format!(r#"{{"i":{i}}}"#)));
            }
        }
        let room = format!("room{v}");
        let mut a = wss(&server, &pki, &format!("/room/{room}"), version);
        let mut b = wss(&server, &pki, &format!("/room/{room}"), version);
        a.send(Message::text("hello room")).unwrap();
        assert_eq!(next_data(&mut b), Message::text("hello room"));
        // HTTP routes over HTTPS: a refusal is an HTTP status, sealed like any response.
        let response = https(
            &server,
            &pki,
            version,
            "GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        echo.close(None).unwrap();
        while echo.read().is_ok() {}
    }
    let admin = server.admin.unwrap();
    let s = stats(admin);
    let tls = &s["totals"]["tls"];
    assert!(tls["handshakes"].as_u64().unwrap() >= 2 * 11, "{tls:#}");
    assert!(tls["tls12"].as_u64().unwrap() >= 11, "{tls:#}");
    let failures: u64 = tls["failures"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(failures, 0, "{tls:#}");
}

#[test]
fn close_notify_follows_the_close_frame() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    for version in [TLS13, TLS12] {
        let mut s = tls_stream(&server, &pki, version);
        s.write_all(
            b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        // A masked close frame, code 1000 (mask 0: the payload is sent as is).
        s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).unwrap();
        let mut out = Vec::new();
        // read_to_end fails with UnexpectedEof unless the stream ends with close_notify.
        s.read_to_end(&mut out)
            .expect("the server sends close_notify after its close frame");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(out.ends_with(&[0x88, 0x02, 0x03, 0xe8]), "{out:?}");
    }
}

#[test]
fn peers_python_openssl_and_chromium() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    let out = python_websockets(&url(&server, "/echo"), &pki.ca, "hello from python").unwrap();
    assert!(out.contains("tls=TLSv1.3"), "{out}");
    assert!(out.contains("echo=hello from python"), "{out}");
    let stranger = Pki::new();
    let err = python_websockets(&url(&server, "/echo"), &stranger.ca, "x").unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    openssl_upgrades_on_tls13_and_tls12_only(server.addr, &pki.ca);
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!! SKIPPED the Chromium part: no chromium (scripts/test.sh installs it) !!!\n"
        );
        return;
    };
    let text = chromium_wss(
        &bin,
        &pki,
        &format!("wss://127.0.0.1:{}/echo", server.addr.port()),
        "hello from chromium",
    );
    assert_eq!(text, "echo:hello from chromium");
}

fn failures(s: &serde_json::Value, reason: &str) -> u64 {
    s["totals"]["tls"]["failures"][reason].as_u64().unwrap()
}

/// Read until the server closes (EOF or reset); returns what it sent. Bounded by the socket's
/// read timeout (a server that never closes fails the test).
fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close: {e} (got {got:?})"),
        }
    }
}

#[test]
fn hostile_tls_input_is_closed_and_counted() {
    let pki = Pki::new();
    let server = start(&pki, &["--handshake-timeout-ms", "500"]);
    let admin = server.admin.unwrap();
    // A healthy subscriber on each shard must lose nothing.
    let mut healthy: Vec<Wss> = (0..2)
        .map(|_| wss(&server, &pki, "/ws/calm", TLS13))
        .collect();

    // 1. Plain HTTP on the TLS port: a fatal alert (record type 21), then the close.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = until_closed(&mut tcp);
    assert_eq!(got.first(), Some(&21), "an alert record: {got:?}");
    // 2. Random garbage.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = tcp.write_all(&junk);
    until_closed(&mut tcp);
    // 3. A slow handshake: the first bytes of a ClientHello, then nothing: closed at the
    //    handshake deadline, counted as a timeout.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    until_closed(&mut slow);
    assert!(started.elapsed() < Duration::from_secs(5));
    // 4. A client that leaves mid-handshake.
    let mut early = TcpStream::connect(server.addr).unwrap();
    early.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    drop(early);
    // 5. Garbage after the handshake: a forged application-data record (bad_record_mac), and a
    //    plaintext handshake record on an established TLS 1.2 session (renegotiation-like).
    for (version, record) in [
        (TLS13, vec![0x17, 0x03, 0x03, 0x00, 0x20]),
        (TLS12, vec![0x16, 0x03, 0x03, 0x00, 0x20]),
    ] {
        let mut s = tls_stream(&server, &pki, version);
        upgrade_over(&mut s, "/ws/calm");
        let mut tcp = s.sock;
        let mut forged = record;
        forged.extend_from_slice(&[0x5a; 0x20]);
        tcp.write_all(&forged).unwrap();
        until_closed(&mut tcp);
    }
    let s = stats_until(admin, |s| {
        failures(s, "timeout") >= 1
            && failures(s, "closed_early") >= 1
            && failures(s, "bad_record") >= 4
    });
    // The healthy subscribers still get every broadcast.
    publish(&server, &pki, TLS13, "calm", r#""still here""#);
    for h in healthy.iter_mut() {
        assert_eq!(next_data(h), Message::text(r#""still here""#));
    }
    assert!(server_alive(&server), "{s:#}");
}

fn server_alive(server: &Server) -> bool {
    TcpStream::connect(server.addr).is_ok()
}

/// The leaf certificate a new handshake gets.
fn served_leaf(server: &Server, pki: &Pki) -> CertificateDer<'static> {
    let mut s = tls_stream(server, pki, TLS13);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s.conn.peer_certificates().unwrap()[0].clone()
}

#[test]
fn sighup_serves_new_handshakes_with_the_new_certificate() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    let first = pki.leaf_der.clone();
    assert_eq!(served_leaf(&server, &pki), first);
    // Under load: subscribers on both shards get a paced stream while the reload happens.
    let mut live: Vec<Wss> = (0..4)
        .map(|_| wss(&server, &pki, "/ws/reload", TLS13))
        .collect();
    let mut publisher = wss(&server, &pki, "/pub/reload", TLS13);
    const N: usize = 300;
    let feeding = std::thread::spawn(move || {
        for i in 0..N {
            publisher.send(Message::text(i.to_string())).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        publisher
    });
    // A new leaf from the same CA over the files, then SIGHUP.
    let pki = pki.reissue(LeafKey::EcdsaP256);
    assert_ne!(pki.leaf_der, first);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    let end = deadline();
    while served_leaf(&server, &pki) != pki.leaf_der {
        assert!(Instant::now() < end, "the new certificate is never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _publisher = feeding.join().unwrap();
    // The connections made before the reload lost nothing.
    for ws in live.iter_mut() {
        for i in 0..N {
            assert_eq!(next_data(ws), Message::text(i.to_string()));
        }
    }
    assert_eq!(stats(server.admin.unwrap())["tls_reloads"], 1);
    let mut live = live.pop().unwrap();
    // A bad key: the reload fails and the current certificate stays.
    std::fs::write(&pki.key, "not a key").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    let admin = server.admin.unwrap();
    stats_until(admin, |s| s["tls_reload_failures"].as_u64() == Some(1));
    assert_eq!(served_leaf(&server, &pki), pki.leaf_der);
    publish(&server, &pki, TLS13, "reload", "2");
    assert_eq!(next_data(&mut live), Message::text("2"));
}

#[test]
fn client_certificates_against_the_ca_file() {
    let pki = Pki::new();
    let ca = pki.ca.display().to_string();
    let server = start(&pki, &["--tls-client-ca", &ca, "--tls-min-version", "1.3"]);
    let with = pki.client_config_with(&[], Some(pki.client_identity("alice")));
    let mut ws = tungstenite_wss(&url(&server, "/echo"), server.addr, with).unwrap();
    ws.send(Message::text("authenticated")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("authenticated"));
    for client in [
        pki.client_config(&[]),
        pki.client_config_with(&[], Some(foreign_identity())),
    ] {
        // TLS 1.3 clients finish first and hear the refusal on their first read.
        let refused = match tungstenite_wss(&url(&server, "/echo"), server.addr, client) {
            Err(_) => true,
            Ok(mut ws) => ws.read().is_err(),
        };
        assert!(refused);
    }
    // TLS 1.2 is below the configured minimum.
    assert!(tungstenite_wss(
        &url(&server, "/echo"),
        server.addr,
        pki.client_config(&[TLS12])
    )
    .is_err());
    stats_until(server.admin.unwrap(), |s| {
        failures(s, "client_cert_refused") == 2 && failures(s, "unsupported_version") == 1
    });
}

#[test]
fn a_never_reading_tls_subscriber_is_evicted_and_fast_ones_get_everything() {
    // 9.6 MB: more than the kernel's send buffer (tcp_wmem max 4 MiB here) and the 1 MiB mark
    // take for the slow one; paced (~8 MB/s) so that debug-built readers on a loaded host stay
    // far from that.
    const N: usize = 600;
    let pki = Pki::new();
    // A 1 MiB mark holds one max-size message plus the kernel's send buffer only with smaller
    // messages than the default (`Config::check_limits`): 16 KiB are sent, 64 KiB allowed.
    let server = start(
        &pki,
        &["--high-water-bytes", "1MiB", "--max-message-bytes", "65536"],
    );
    // The slow one: a 4 KiB receive buffer, the TLS handshake and upgrade, then no more reads.
    let tcp = common::small_rcvbuf_connect(server.addr);
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(pki.client_config(&[TLS13])), localhost()).unwrap();
    let mut slow = rustls::StreamOwned::new(conn, tcp);
    upgrade_over(&mut slow, "/ws/flood");
    let fast: Vec<_> = (0..2)
        .map(|_| {
            let mut ws = wss(&server, &pki, "/ws/flood", TLS13);
            std::thread::spawn(move || {
                (0..N)
                    .map(|_| match next_data(&mut ws) {
                        Message::Binary(b) => u32::from_be_bytes(b[..4].try_into().unwrap()),
                        m => panic!("{m:?}"),
                    })
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut publisher = wss(&server, &pki, "/pub/flood", TLS13);
    for i in 0..N as u32 {
        let mut m = vec![0u8; 16 * 1024];
        m[..4].copy_from_slice(&i.to_be_bytes());
        publisher.send(Message::binary(m)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for f in fast {
        assert_eq!(f.join().unwrap(), (0..N as u32).collect::<Vec<_>>());
    }
    stats_until(server.admin.unwrap(), |s| {
        s["totals"]["evictions"]["high_water"] == 1
    });
    drop(slow);
}

/// `--listen-plain`: one process serves wss:// on `--listen` and plain ws:// beside it for
/// internal traffic. A plain publisher (HTTP POST and /pub) feeds wss:// and ws:// subscribers
/// on both shards alike; each port speaks only its own protocol (a TLS ClientHello on the
/// plain port is a bad HTTP request; plain HTTP on the TLS port is a failed handshake); the
/// TLS counters see only the wss:// connections.
#[test]
fn a_plain_listener_beside_wss_serves_internal_traffic() {
    let pki = Pki::new();
    let server = start(&pki, &["--listen-plain", "127.0.0.1:0"]);
    let plain = server.plain.expect("the plain listener's line");
    assert_ne!(plain.port(), server.addr.port());
    let plain_url = |path: &str| format!("ws://{plain}{path}");
    let mut secure: Vec<Wss> = (0..4)
        .map(|_| wss(&server, &pki, "/ws/mixed", TLS13))
        .collect();
    let mut clear: Vec<Wss> = (0..4)
        .map(|_| {
            tungstenite::connect(plain_url("/ws/mixed"))
                .expect("ws:// on the plain port")
                .0
        })
        .collect();
    // Every subscriber is registered once /stats counts them (4 wss + 4 ws).
    let admin = server.admin.unwrap();
    stats_until(admin, |s| s["totals"]["subscriptions"] == 8);
    // An HTTP publish on the plain port.
    let mut tcp = TcpStream::connect(plain).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body = r#"{"n":1}"#;
    write!(
        tcp,
        "POST /publish/mixed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 204");
    // A burst from a plain /pub publisher.
    let (mut publisher, _) = tungstenite::connect(plain_url("/pub/mixed")).unwrap();
    for i in 0..200 {
        publisher
            .send(Message::text(format!(r#"{{"i":{i}}}"#)))
            .unwrap();
    }
    publisher.flush().unwrap();
    for s in secure.iter_mut().chain(clear.iter_mut()) {
        assert_eq!(next_data(s), Message::text(body));
        for i in 0..200 {
            assert_eq!(next_data(s), Message::text(format!(r#"{{"i":{i}}}"#)));
        }
    }
    // A TLS ClientHello on the plain port: an HTTP 400, nothing else.
    let mut wrong = TcpStream::connect(plain).unwrap();
    wrong.set_read_timeout(Some(TIMEOUT)).unwrap();
    wrong
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut wrong)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Plain HTTP on the TLS port: a failed handshake (an alert, no HTTP).
    let mut wrong = TcpStream::connect(server.addr).unwrap();
    wrong.set_read_timeout(Some(TIMEOUT)).unwrap();
    wrong
        .write_all(b"GET /ws/mixed HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = until_closed(&mut wrong);
    assert!(!answer.starts_with(b"HTTP"), "{answer:?}");
    let all_failures = |s: &serde_json::Value| -> u64 {
        s["totals"]["tls"]["failures"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
    };
    let s = stats_until(admin, |s| all_failures(s) == 1);
    let tls = &s["totals"]["tls"];
    assert_eq!(tls["handshakes"], 4, "only the wss:// subscribers: {tls:#}");
}
