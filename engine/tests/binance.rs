//! The Binance spot stream contract through the real binary: bare `/ws` and `/stream` then
//! SUBSCRIBE, the `combined` property, ids, the `serverShutdown` event, `--profile binance`,
//! and three Binance clients nobody here wrote, run unmodified with only their base URL
//! changed: `binance-connector` and `python-binance` (PyPI) and `@binance/spot` (npm),
//! installed under target/clients by scripts/clients.sh.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

#[test]
fn bare_ws_and_stream_then_subscribe_with_the_combined_property() {
    let server = Server::start(&[]);
    let (mut raw, _) = server.ws("/ws");
    let r = control(
        &mut raw,
        r#"{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}"#,
    );
    assert_eq!(r, json!({"result": null, "id": 1}));
    assert_eq!(
        server.post("btcusdt@trade", "application/json", br#"{"p":"1"}"#, ""),
        204
    );
    assert_eq!(next_text(&mut raw), r#"{"p":"1"}"#);
    let r = control(
        &mut raw,
        r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#,
    );
    assert_eq!(r, json!({"result": false, "id": 2}));
    let r = control(
        &mut raw,
        r#"{"method":"SET_PROPERTY","params":["combined",true],"id":3}"#,
    );
    assert_eq!(r, json!({"result": null, "id": 3}));
    assert_eq!(
        server.post("btcusdt@trade", "application/json", br#"{"p":"2"}"#, ""),
        204
    );
    assert_eq!(
        next_text(&mut raw),
        r#"{"stream":"btcusdt@trade","data":{"p":"2"}}"#
    );
    // Bare /stream is combined from the start; /stream?streams= (empty) too.
    for path in ["/stream", "/stream?streams="] {
        let (mut combined, _) = server.ws(path);
        let r = control(
            &mut combined,
            r#"{"method":"GET_PROPERTY","params":["combined"],"id":"a1"}"#,
        );
        assert_eq!(r, json!({"result": true, "id": "a1"}));
        let r = control(
            &mut combined,
            r#"{"method":"LIST_SUBSCRIPTIONS","id":null}"#,
        );
        assert_eq!(r, json!({"result": [], "id": null}));
    }
    // Replies keep Binance's field order.
    raw.send(Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":4}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut raw),
        r#"{"result":["btcusdt@trade"],"id":4}"#
    );
    raw.send(Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1.5}"#))
        .unwrap();
    assert_eq!(
        next_text(&mut raw),
        r#"{"error":{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"},"id":null}"#
    );
}

#[test]
fn subscriptions_stop_at_1024_per_connection() {
    let server = Server::start(&["--profile", "binance"]);
    let (mut s, _) = server.ws("/ws");
    let names: Vec<String> = (0..1024).map(|i| format!("s{i}@trade")).collect();
    let req = json!({"method": "SUBSCRIBE", "params": names, "id": 1}).to_string();
    assert!(
        req.len() > 4096,
        "one message larger than the default control limit"
    );
    assert_eq!(control(&mut s, &req), json!({"result": null, "id": 1}));
    let r = control(
        &mut s,
        r#"{"method":"SUBSCRIBE","params":["one@more"],"id":2}"#,
    );
    assert_eq!(r["error"]["code"], 4, "{r}");
    let r = control(&mut s, r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#);
    assert_eq!(r["result"].as_array().unwrap().len(), 1024);
}

#[test]
fn server_shutdown_event_comes_before_the_close() {
    let server = Server::start(&["--shutdown-notice-ms", "300"]);
    let (mut a, _) = server.ws("/ws/a");
    let (mut b, _) = server.ws("/stream?streams=a");
    sync(&mut a);
    sync(&mut b);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);
    for ws in [&mut a, &mut b] {
        let event: Value = serde_json::from_str(&next_text(ws)).unwrap();
        assert_eq!(event["e"], "serverShutdown", "{event}");
        let at = event["E"].as_u64().unwrap();
        let now_ms = unix_now() * 1000;
        assert!(at + 60_000 > now_ms && at < now_ms + 60_000, "{event}");
        assert_eq!(close_of(ws).0, 1001);
    }
}

#[test]
fn profile_binance_sets_the_contract_and_explicit_options_win() {
    let bin = env!("CARGO_BIN_EXE_shardcast");
    let print = |args: &[&str]| {
        let out = Command::new(bin)
            .args(["--print-config", "--profile", "binance"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let text = print(&[]);
    for line in [
        "ping_interval_ms = 20000",
        "pong_timeout_ms = 60000",
        "max_lifetime_ms = 86400000",
        "max_topics_per_connection = 1024",
        "subscriber_rate = 5",
        "ip_connect_limit = 300",
        "ip_connect_window_ms = 300000",
        "profile = \"binance\"",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let text = print(&["--ping-interval-ms", "1000"]);
    assert!(text.contains("ping_interval_ms = 1000\n"), "{text}");
}

/// Workspace root (tests run in engine/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Install the clients once per test binary (scripts/clients.sh; a no-op when present).
fn clients() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let status = Command::new(root().join("scripts/clients.sh"))
            .current_dir(root())
            .status()
            .expect("run scripts/clients.sh");
        assert!(status.success(), "scripts/clients.sh failed: {status}");
        root().join("target/clients")
    })
}

/// Run a client (bounded: 90 s); returns (success, stdout).
fn run(mut cmd: Command) -> (bool, String) {
    let (status, out) = run_bounded(cmd.stderr(Stdio::inherit()), Duration::from_secs(90));
    (status.success(), out)
}

fn urls(server: &Server) -> [String; 2] {
    [
        format!("ws://{}", server.addr),
        format!("http://{}", server.addr),
    ]
}

#[test]
fn binance_connector_python_runs_unmodified() {
    let dir = clients();
    let server = Server::start(&["--profile", "binance"]);
    let mut cmd = Command::new(dir.join("connector/bin/python"));
    cmd.arg(root().join("engine/tests/clients/binance_connector.py"))
        .args(urls(&server));
    let (ok, out) = run(cmd);
    assert!(ok && out.contains("ok raw\nok combined\nPASS"), "{out}");
}

#[test]
fn python_binance_runs_unmodified() {
    let dir = clients();
    let server = Server::start(&["--profile", "binance"]);
    let mut cmd = Command::new(dir.join("python-binance/bin/python"));
    cmd.arg(root().join("engine/tests/clients/python_binance.py"))
        .args(urls(&server));
    let (ok, out) = run(cmd);
    assert!(ok && out.contains("ok multiplex_socket\nPASS"), "{out}");
}

#[test]
fn binance_spot_javascript_runs_unmodified() {
    let dir = clients();
    let server = Server::start(&["--profile", "binance"]);
    let mut cmd = Command::new("node");
    cmd.arg(root().join("engine/tests/clients/node/binance_spot.js"))
        .args(urls(&server))
        .env("NODE_PATH", dir.join("node/node_modules"));
    let (ok, out) = run(cmd);
    assert!(ok && out.contains("ok trade stream\nPASS"), "{out}");
}
