//! shardcast's TLS session layer with clients nobody here wrote, over real loopback sockets:
//! tungstenite (rustls), Python `websockets` (`ssl`), `openssl s_client` and headless Chromium,
//! each against the harness's echo server (our [`Session`] driven by a tiny blocking driver, with
//! tungstenite's server role on top). These also prove the harness that the engine's wss://
//! tests will use.

mod common;

use std::sync::atomic::Ordering;

use common::chromium;
use common::tls::{
    chromium_wss, foreign_identity, openssl_upgrades_on_tls13_and_tls12_only, python_websockets,
    server_config, tungstenite_wss, EchoServer, Pki,
};
use common::TIMEOUT;
use shardcast::tls::options::TlsVersion;
use tungstenite::Message;

const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;

#[test]
fn tungstenite_wss_echo_on_tls13_and_tls12_with_batched_records() {
    let pki = Pki::new();
    let server = EchoServer::start(server_config(&pki.options()));
    for version in [TLS13, TLS12] {
        let mut ws = tungstenite_wss(
            &server.url("/echo"),
            server.addr,
            pki.client_config(&[version]),
        )
        .unwrap();
        match ws.get_ref() {
            tungstenite::stream::MaybeTlsStream::Rustls(tls) => {
                assert_eq!(tls.conn.protocol_version(), Some(version.version));
                assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            }
            _ => panic!("not TLS"),
        }
        for i in 0..50 {
            let text = format!("message {i} {}", "x".repeat(i * 40));
            ws.send(Message::text(text.clone())).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(text));
        }
        let big = vec![0xa5u8; 200_000];
        ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(big));
        // 1,000 frames of 64 B queued at once: a handful of records, not 1,000.
        let before = server.counts.records.load(Ordering::Relaxed);
        ws.send(Message::text("burst 1000 64")).unwrap();
        for i in 0..1000 {
            assert_eq!(
                ws.read().unwrap(),
                Message::binary(vec![(i % 251) as u8; 64])
            );
        }
        let records = server.counts.records.load(Ordering::Relaxed) - before;
        assert!(records <= 5, "{records} records for 1,000 queued frames");
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    assert!(server.failures.lock().unwrap().is_empty());
}

#[test]
fn tungstenite_client_certificates() {
    let pki = Pki::new();
    let mut options = pki.options();
    options.client_ca = Some(pki.ca.clone());
    let server = EchoServer::start(server_config(&options));
    let with = pki.client_config_with(&[], Some(pki.client_identity("alice")));
    let mut ws = tungstenite_wss(&server.url("/echo"), server.addr, with).unwrap();
    ws.send(Message::text("authenticated")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("authenticated"));
    for client in [
        pki.client_config(&[]),
        pki.client_config_with(&[], Some(foreign_identity())),
    ] {
        // The refusal may surface in the handshake or on the first read (TLS 1.3 clients finish
        // first and hear the alert afterwards).
        let refused = match tungstenite_wss(&server.url("/echo"), server.addr, client) {
            Err(_) => true,
            Ok(mut ws) => ws.read().is_err(),
        };
        assert!(refused);
    }
    let end = std::time::Instant::now() + TIMEOUT;
    while server.failures.lock().unwrap().len() < 2 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let failures = server.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures.iter().all(|f| f.contains("client_cert_refused")),
        "{failures:?}"
    );
}

#[test]
fn python_websockets_with_an_ssl_context() {
    let pki = Pki::new();
    let server = EchoServer::start(server_config(&pki.options()));
    let out = python_websockets(&server.url("/echo"), &pki.ca, "hello from python").unwrap();
    assert!(out.contains("tls=TLSv1.3"), "{out}");
    assert!(out.contains("echo=hello from python"), "{out}");
    // Python refuses a server its context does not trust.
    let stranger = Pki::new();
    let err = python_websockets(&server.url("/echo"), &stranger.ca, "x").unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
}

#[test]
fn openssl_s_client_on_tls13_and_tls12() {
    let pki = Pki::new();
    let mut options = pki.options();
    options.min_version = TlsVersion::Tls12;
    let server = EchoServer::start(server_config(&options));
    openssl_upgrades_on_tls13_and_tls12_only(server.addr, &pki.ca);
}

#[test]
fn chromium_wss_echo() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!! SKIPPED chromium_wss_echo: no chromium at /usr/bin/chromium \
             (scripts/test.sh installs it with apt-get when run as root) !!!\n"
        );
        return;
    };
    let pki = Pki::new();
    let server = EchoServer::start(server_config(&pki.options()));
    let url = format!("wss://127.0.0.1:{}/echo", server.addr.port());
    let text = chromium_wss(&bin, &pki, &url, "hello from chromium");
    assert_eq!(text, "echo:hello from chromium");
    // Without the SPKI exception Chromium refuses the test CA's certificate.
    let stranger = Pki::new();
    let text = chromium_wss(&bin, &stranger, &url, "x");
    assert_ne!(text, "echo:x");
}
