//! Logs as an operator gets them: a default start is warning-free; no escape codes reach a pipe
//! (files, journald); colour only on a terminal and never with NO_COLOR; `--log-format json`
//! is one JSON object per line; a warning repeated at the rate of its cause is one line per
//! 10 s with a count.
mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A start with nothing but ephemeral ports given: every other option at its default. The
/// suite's epoll pass refuses io_uring (SHARDCAST_URING_REFUSE), which start-up rightly warns
/// about (the fallback to epoll, and preflight's `driver` check): not a default start, so the
/// variables refusing io_uring are left out here.
fn default_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .env_remove("SHARDCAST_URING_REFUSE")
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    cmd
}

/// Some traffic, so the run logs what a real one would.
fn exercise(server: &Server) {
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    assert_eq!(server.post("t", "text/plain", b"hello", ""), 204);
    assert_eq!(next_text(&mut sub), "hello");
    assert_eq!(status(&server.http(b"GARBAGE\r\n\r\n")), 400);
}

#[test]
fn a_default_start_into_a_pipe_logs_no_warning_and_no_escape_codes() {
    let (mut server, log) = Server::spawn_logged(default_command());
    exercise(&server);
    server.terminate();
    let text = log.finish();
    assert!(
        text.contains("INFO"),
        "the default level logs start-up: {text}"
    );
    assert!(text.contains("shard starting"), "{text}");
    assert!(!text.contains("WARN"), "a default start warned:\n{text}");
    assert!(!text.contains("ERROR"), "{text}");
    assert!(
        !log.bytes().contains(&0x1b),
        "escape codes in a pipe:\n{text:?}"
    );
}

#[test]
fn json_format_is_one_object_per_line_with_level_target_and_fields() {
    let (mut server, log) = Server::start_logged(&["--log-format", "json", "--log", "debug"], &[]);
    exercise(&server);
    server.terminate();
    let text = log.finish();
    let mut levels = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = v["level"].as_str().unwrap_or_else(|| panic!("{line}"));
        levels.insert(level.to_owned());
        assert!(v["target"].as_str().is_some(), "{line}");
        assert!(v["timestamp"].as_str().is_some(), "{line}");
        assert!(v["fields"]["message"].as_str().is_some(), "{line}");
    }
    assert!(levels.contains("INFO"), "{levels:?}");
    let starting: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "shard starting")
        .expect("a shard starting line");
    assert_eq!(starting["target"], "shardcast::server");
    assert!(starting["fields"]["shard"].is_u64(), "{starting}");
    assert!(!log.bytes().contains(&0x1b), "escape codes in JSON");
}

/// Start the default command with stderr on a fresh pseudo-terminal; returns what it printed
/// there from start to exit.
fn stderr_on_a_terminal(env: &[(&str, &str)]) -> Vec<u8> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors it opens into the ints we own; the name,
    // termios and winsize arguments are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = default_command();
    cmd.envs(env.iter().copied())
        .stderr(Stdio::from(slave))
        .stdout(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    drop(cmd); // our copy of the terminal's slave side: reads end (EIO) when the child exits
    let log = Log::capture(std::fs::File::from(master));
    let mut server = Server::from_child(child);
    exercise(&server);
    server.terminate();
    log.finish();
    log.bytes()
}

#[test]
fn colour_on_a_terminal_only_without_no_color() {
    let coloured = stderr_on_a_terminal(&[]);
    assert!(
        coloured.windows(2).any(|w| w == b"\x1b["),
        "no colour on a terminal: {:?}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = stderr_on_a_terminal(&[("NO_COLOR", "1")]);
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("shard starting"), "{text:?}");
    assert!(!plain.contains(&0x1b), "NO_COLOR ignored: {text:?}");
}

#[test]
fn repeated_accept_failures_are_one_line_per_ten_seconds_with_a_count() {
    // 64 descriptors in all: the server starts, then runs out after a few dozen clients, and
    // every accept after that fails (EMFILE) until they leave. Each failure answers the pending
    // clients (503 through the reserve descriptor), so failures repeat only while clients keep
    // arriving: a trickle of new ones (bounded) keeps them coming. One shard: with two, a shard
    // can take the descriptor the other frees to answer through its reserve, and from then on
    // one descriptor stays spare, each trickle client is accepted, and nothing fails again.
    let mut cmd = Server::command(&[
        "--shards",
        "1",
        "--max-connections",
        "1000",
        "--handshake-timeout-ms",
        "60000",
    ]);
    limit_files(&mut cmd, 64);
    let started = Instant::now();
    let (mut server, log) = Server::spawn_logged(cmd);
    let clients: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (stop, addr) = (stop.clone(), server.addr);
        std::thread::spawn(move || {
            for _ in 0..1500 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                drop(std::net::TcpStream::connect(addr));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // The second line comes one window (10 s) after the first, standing for all in between.
    let text = log.wait_for(Duration::from_secs(30), |t| t.contains("accept failed (x"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    let elapsed = started.elapsed().as_secs();
    assert!(
        lines.len() as u64 <= 2 + elapsed / 10,
        "{} lines in {elapsed} s:\n{text}",
        lines.len()
    );
    let folded: u64 = lines
        .iter()
        .find_map(|l| l.split("accept failed (x").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(folded >= 10, "only {folded} failures folded:\n{text}");
    assert!(text.contains("in the last 10 s)"), "{text}");
    drop(clients);
    server.terminate();
}
