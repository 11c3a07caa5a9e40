//! Driver selection through the real binary: io_uring refused the way Docker's default seccomp
//! profile refuses it (`io_uring_setup` failing with EPERM, forced by `SHARDCAST_URING_REFUSE`),
//! `--driver auto` falls back to epoll and serves; `--driver uring` fails start-up; and where
//! the kernel allows io_uring, `auto` runs on it.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use tungstenite::Message;

/// Start the binary with `env` set (and the variables that refuse io_uring cleared first),
/// returning the server once it listens.
fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--shards",
        "2",
    ])
    .args(args)
    .env_remove("SHARDCAST_URING_REFUSE")
    .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn shardcast");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("shardcast listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let (addr, admin) = rest.split_once(" (admin ").expect("admin listener is on");
    Server {
        child,
        addr: addr.parse().unwrap(),
        admin: Some(admin.trim_end_matches(')').parse().unwrap()),
    }
}

fn drivers(server: &Server) -> Vec<String> {
    let s = stats(server.admin.unwrap());
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh["driver"].as_str().unwrap().to_owned())
        .collect()
}

fn echo_works(server: &Server) {
    let (mut ws, _) = server.ws("/echo");
    ws.send(Message::text("still serving")).unwrap();
    assert_eq!(next_text(&mut ws), "still serving");
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    for value in ["1", "enosys"] {
        let server = start_with_env(&["--driver", "auto"], &[("SHARDCAST_URING_REFUSE", value)]);
        assert_eq!(drivers(&server), ["epoll", "epoll"], "{value}");
        echo_works(&server);
    }
}

#[test]
fn driver_uring_fails_start_up_when_io_uring_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--driver",
            "uring",
        ])
        .env("SHARDCAST_URING_REFUSE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "must not claim to be listening");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "{err}");
    assert!(err.contains("SHARDCAST_URING_REFUSE"), "{err}");
}

/// Where io_uring works (this kernel and sandbox allow it), `auto` uses it and `epoll` is
/// honoured; where it does not, `auto` must have fallen back (the test above covers it).
#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let server = start_with_env(&["--driver", "auto"], &[]);
    let got = drivers(&server);
    let usable = shardcast::runtime::uring::probe_kernel().is_ok();
    let want = if usable { "io_uring" } else { "epoll" };
    assert_eq!(got, [want, want]);
    echo_works(&server);
    let server = start_with_env(&["--driver", "epoll"], &[]);
    assert_eq!(drivers(&server), ["epoll", "epoll"]);
    echo_works(&server);
}
