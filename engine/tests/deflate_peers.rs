//! permessage-deflate with real peers nobody here wrote: Python `websockets` (compression on,
//! its default; installed into target/pyenv by scripts/pyenv.sh, which these tests run when the
//! environment is missing) and headless Chromium (browsers always offer permessage-deflate).
//! Each receives compressed broadcast frames, sends compressed messages, and round-trips
//! /echo; the peer itself reports what it negotiated and what it read.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

const N: usize = 12;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A child process killed on drop, its stdout lines delivered over a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn peer");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Peer { child, lines }
    }

    /// The next line starting with `prefix`, within 60 s.
    fn line(&self, prefix: &str) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no {prefix:?} line from the peer: {e}"),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/pyenv's interpreter, creating the environment first if needed.
fn python() -> PathBuf {
    let py = repo().join("target/pyenv/bin/python");
    let status = Command::new(repo().join("scripts/pyenv.sh"))
        .status()
        .expect("run scripts/pyenv.sh");
    assert!(
        status.success() && py.exists(),
        "scripts/pyenv.sh could not create target/pyenv (Python websockets is needed)"
    );
    py
}

/// The JSON depth event both peers' scripts also build.
fn event(i: usize) -> String {
    let levels: Vec<String> = (0..10 + i % 20)
        .map(|k| {
            format!(
                "[\"97{:03}.{k:02}\",\"0.{:05}\"]",
                i % 1000,
                (i * k * 7919) % 100_000
            )
        })
        .collect();
    format!(
        "{{\"e\":\"depthUpdate\",\"s\":\"BTCUSDT\",\"u\":{i},\"b\":[{}]}}",
        levels.join(",")
    )
}

fn compression(addr: std::net::SocketAddr) -> serde_json::Value {
    stats(addr)["totals"]["compression"].clone()
}

#[test]
fn python_websockets_negotiates_receives_and_sends_compressed() {
    let py = python();
    let server = Server::start(&["--compression-min-bytes", "64"]);
    let admin = server.admin.unwrap();
    let (mut out_sub, _) = server.ws("/ws/py-out");
    sync(&mut out_sub);
    let peer = Peer::spawn(
        Command::new(py)
            .arg(repo().join("engine/tests/peers/ws_deflate.py"))
            .arg(format!("ws://{}", server.addr))
            .arg(N.to_string()),
    );
    let ready = peer.line("ready ");
    assert_eq!(ready.strip_prefix("ready "), Some(ANSWER));
    // One publisher: its messages arrive in order (separate HTTP publishes may land on
    // different shards and overtake each other).
    let (mut publisher, _) = server.ws("/pub/py");
    for i in 0..N {
        publisher.send(Message::text(event(i))).unwrap();
    }
    let report: serde_json::Value = serde_json::from_str(&peer.line("{")).unwrap();
    assert_eq!(report["sync"]["result"], serde_json::json!(["py"]));
    let received: Vec<String> = serde_json::from_value(report["received"].clone()).unwrap();
    assert_eq!(received, (0..N).map(event).collect::<Vec<_>>());
    assert_eq!(report["echo_text"], true);
    assert_eq!(report["echo_binary"], true);
    // Compressed frames read by websockets: the N broadcasts and both echo replies.
    assert!(report["rsv1_in"].as_u64() >= Some(N as u64 + 2), "{report}");
    // websockets compresses everything it sends: the sync request, N publishes, 2 echoes.
    assert!(
        report["rsv1_out"].as_u64() >= Some(N as u64 + 3),
        "{report}"
    );
    for i in 0..N {
        assert_eq!(next_text(&mut out_sub), event(i));
    }
    let c = compression(admin);
    assert!(c["inflated_messages"].as_u64() >= Some(N as u64 + 3), "{c}");
    assert!(c["compressed_deliveries"].as_u64() >= Some(N as u64), "{c}");
}

/// The page Chromium runs: subscribe (compressed), report readiness and everything read over
/// a publisher WebSocket to `/pub/report`, round-trip /echo.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>deflate</title><script>
const base = new URLSearchParams(location.search).get('ws');
const n = Number(new URLSearchParams(location.search).get('n'));
const token = new URLSearchParams(location.search).get('token');
const report = new WebSocket(base + '/pub/report?token=' + token);
const say = (kind, body) => report.send(JSON.stringify({kind, ...body}));
report.onopen = () => {
  const sub = new WebSocket(base + '/ws/browser');
  const got = [];
  sub.onopen = () => sub.send('{"method":"LIST_SUBSCRIPTIONS","id":"sync"}');
  sub.onmessage = (e) => {
    if (e.data.includes('"id":"sync"')) { say('ready', {extensions: sub.extensions}); return; }
    got.push(e.data);
    if (got.length < n) return;
    const echo = new WebSocket(base + '/echo');
    const text = got.join('\n');
    echo.onopen = () => echo.send(text);
    echo.onmessage = (m) => say('done', {extensions: sub.extensions, received: got,
      echo_ok: m.data === text, echo_extensions: echo.extensions});
  };
};
</script>"#;

#[test]
fn chromium_negotiates_receives_and_round_trips_compressed() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!! SKIPPED chromium_negotiates_receives_and_round_trips_compressed: no chromium at \
             /usr/bin/chromium (scripts/test.sh installs it with apt-get when run as root) !!!\n"
        );
        return;
    };
    // A page is never trusted to publish (it sends `Origin`): it presents the publish token.
    let token = "deflate-test-token";
    let server = Server::start(&["--compression-min-bytes", "64", "--publish-token", token]);
    let admin = server.admin.unwrap();
    let (mut reports, _) = server.ws("/ws/report");
    sync(&mut reports);
    let dir = std::env::temp_dir().join(format!("shardcast-deflate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.html");
    std::fs::write(&page, PAGE).unwrap();
    let url = format!(
        "file://{}?ws=ws://{}&n={N}&token={token}",
        page.display(),
        server.addr
    );
    let _browser = Peer::spawn(
        headless_chromium(&bin, &dir.join("profile"))
            .arg(url)
            .stderr(Stdio::null()),
    );
    let read_report = |reports: &mut Ws| -> serde_json::Value {
        reports
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        serde_json::from_str(&next_text(reports)).unwrap()
    };
    let ready = read_report(&mut reports);
    assert_eq!(ready["kind"], "ready");
    assert_eq!(ready["extensions"], ANSWER, "{ready}");
    let before = compression(admin);
    let (mut publisher, _) = server.ws(&format!("/pub/browser?token={token}"));
    for i in 0..N {
        publisher.send(Message::text(event(i))).unwrap();
    }
    let done = read_report(&mut reports);
    assert_eq!(done["kind"], "done");
    let received: Vec<String> = serde_json::from_value(done["received"].clone()).unwrap();
    assert_eq!(received, (0..N).map(event).collect::<Vec<_>>());
    assert_eq!(done["echo_ok"], true, "{done}");
    assert_eq!(done["echo_extensions"], ANSWER);
    // The server sent Chromium compressed frames, and Chromium sent compressed messages (the
    // echo request, the reports) that the server inflated.
    let after = compression(admin);
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert!(delta("compressed_deliveries") > N as u64, "{after}"); // N broadcasts + the echo
    assert!(delta("inflated_messages") >= 1, "{after}");
    let _ = std::fs::remove_dir_all(&dir);
}
