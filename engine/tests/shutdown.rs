//! Graceful shutdown: SIGTERM closes every client with 1001 and the process exits 0.
mod common;

use std::time::Instant;

use common::*;
use tungstenite::Message;

fn expect_close_1001(ws: &mut Ws) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1001);
                assert_eq!(f.reason, "server shutting down");
                return;
            }
            Ok(Message::Close(None)) => panic!("close without code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut clients = vec![
        server.ws_on("/ws/a", 0),
        server.ws_on("/ws/a", 1),
        server.ws_on("/pub/a", 0),
        server.ws_on("/stream?streams=a/b", 1),
        server.ws("/echo").0,
    ];
    sync(&mut clients[0]);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);
    for c in &mut clients {
        expect_close_1001(c);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn print_config_prints_toml_and_exits() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["--print-config", "--shards", "3"])
        .env("SHARDCAST_MAX_HEADERS", "11")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("shards = 3"), "{text}");
    assert!(text.contains("max_headers = 11"), "{text}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--max-connections-per-shard") && help.contains("[default: none]"),
        "{help}"
    );
}

#[test]
fn driver_uring_fails_when_uring_is_forced_off() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--driver",
            "uring",
        ])
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "must not claim to be listening");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "{err}");
}
