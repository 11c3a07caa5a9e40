//! The server binary and TLS: start-up fails clearly on bad key material, TLS options are
//! validated, SIGHUP reloads instead of killing the process, and the TLS counters are in /stats
//! and /metrics.
//!
//! wss:// itself, and `--listen-plain` serving ws:// beside it, are tested in tls_wss.rs; here a
//! taken plain port stops the start.

mod common;

use std::process::{Command, Output, Stdio};

use common::tls::Pki;
use common::*;

fn run(args: &[String]) -> Output {
    let bin = std::env::var("SHARDCAST_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_shardcast").to_owned());
    let mut child = Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--shards",
            "1",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = deadline();
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("the server started instead of refusing {args:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn refused(args: &[String]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bad_material_stops_the_start_with_the_reason() {
    let pki = Pki::new();
    let other = Pki::new();
    let mut args = pki.server_args();
    args[3] = other.key.display().to_string();
    let err = refused(&args);
    assert!(
        err.contains("does not match the leaf certificate's public key"),
        "{err}"
    );
    let mut args = pki.server_args();
    args[1] = pki.dir.0.join("nope.pem").display().to_string();
    let err = refused(&args);
    assert!(
        err.contains("nope.pem") && err.contains("cannot read"),
        "{err}"
    );
    let mut args = pki.server_args();
    args[3] = pki.cert.display().to_string();
    let err = refused(&args);
    assert!(err.contains("no PRIVATE KEY"), "{err}");
}

/// `--listen-plain` on a port another process holds stops the start with the address and the
/// way out (it is served otherwise: tls_wss `a_plain_listener_beside_wss_serves_internal_traffic`).
#[test]
fn a_taken_plain_port_stops_the_start() {
    let pki = Pki::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut args = pki.server_args();
    args.extend(strings(&["--listen-plain", &addr]));
    let err = refused(&args);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("another process"),
        "{err}"
    );
}

#[test]
fn tls_options_are_validated() {
    let pki = Pki::new();
    let err = refused(&strings(&["--tls-cert", &pki.cert.display().to_string()]));
    assert!(err.contains("tls_cert and tls_key go together"), "{err}");
    let err = refused(&strings(&["--listen-plain", "127.0.0.1:0"]));
    assert!(err.contains("listen_plain needs tls_cert"), "{err}");
    let err = refused(&strings(&["--tls-min-version", "1.0"]));
    assert!(err.contains("1.0"), "{err}");
}

#[test]
fn sighup_does_not_stop_the_server() {
    let mut server = Server::start(&["--shards", "1"]);
    for _ in 0..3 {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
        // Still serving after each one (a SIGHUP left to its default action would kill it).
        let (mut ws, _) = server.ws("/echo");
        sync(&mut ws);
    }
    assert!(server.child.try_wait().unwrap().is_none());
}

#[test]
fn tls_counters_are_in_stats_and_metrics() {
    let server = Server::start(&["--shards", "2"]);
    let admin = server.admin.unwrap();
    let s = stats(admin);
    for scope in [&s["totals"], &s["shards"][1]] {
        assert_eq!(scope["tls"]["handshakes"], 0, "{scope:#}");
        assert_eq!(scope["tls"]["failures"]["client_cert_refused"], 0);
        assert_eq!(scope["tls"]["failures"]["timeout"], 0);
    }
    let (code, body) = admin_get_metrics(admin);
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let reasons: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "shardcast_tls_handshake_failures_total")
        .filter(|s| s.labels.get("shard") == Some("1"))
        .map(|s| s.labels.get("reason").unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons.len(),
        shardcast::tls::Failure::ALL.len(),
        "{reasons:?}"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "shardcast_tls_handshakes_total"));
}

fn admin_get_metrics(addr: std::net::SocketAddr) -> (u16, String) {
    admin(addr, "GET", "/metrics")
}
