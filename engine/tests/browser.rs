//! A real browser on another origin: headless Chromium (Debian's, driven by playwright-core
//! from target/clients) loads a page served by this test from `http://127.0.0.1:<page port>`
//! that opens a WebSocket publisher and sends a `fetch` POST (`no-cors`, as an attacking page
//! would) to shardcast. Refused without credentials (browsers are never trusted), refused
//! with credentials from an origin that is not allowed, accepted from an allowed one. A CORS
//! `fetch` (with `Authorization`: preflighted) publishes only from an origin the allow-list
//! grants.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const PAGE: &str = r#"<!doctype html><html><body><pre id="out"></pre><script>
window.result = {};
let pending = 2;
const finish = () => { if (--pending === 0) { window.done = true; } };
const token = "TOKEN";
const ws = new WebSocket("ws://TARGET/pub/browser", token ? ["shardcast", "shardcast.token." + token] : []);
ws.onopen = () => {
  window.result.ws = "open";
  window.result.protocol = ws.protocol;
  ws.send("from-ws");
  ws.close(1000);
};
ws.onclose = (e) => {
  if (!window.result.ws) { window.result.ws = "refused"; }
  finish();
};
fetch("http://TARGET/publish/browser" + (token ? "?token=" + token : ""), {
  method: "POST", mode: "no-cors", body: "from-fetch", headers: { "Content-Type": "text/plain" },
}).then(() => { window.result.fetch = "sent"; finish(); },
        () => { window.result.fetch = "failed"; finish(); });
</script></body></html>"#;

/// A page that publishes with a CORS `fetch` (an `Authorization` header and a JSON body: the
/// browser sends a preflight `OPTIONS` first) and records the status it could read.
const CORS_PAGE: &str = r#"<!doctype html><html><body><script>
window.result = {};
fetch("http://TARGET/publish/browser", {
  method: "POST", body: JSON.stringify("from-cors"),
  headers: { "Authorization": "Bearer TOKEN", "Content-Type": "application/json" },
}).then((r) => { window.result.cors = r.status; window.done = true; },
        () => { window.result.cors = "failed"; window.done = true; });
</script></body></html>"#;

/// A loopback port for the page, bound first so its origin is known before shardcast starts.
fn page_origin() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    (listener, origin)
}

/// Serve `page` to every request on `listener` (a thread per page, at most 64 requests).
fn serve_page(listener: TcpListener, page: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(TIMEOUT));
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
}

fn chromium() -> Option<PathBuf> {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    Path::new(&bin).exists().then(|| PathBuf::from(bin))
}

/// Load `url` in Chromium and return what the page recorded (bounded: 90 s).
fn load(url: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(root.join("scripts/clients.sh"))
        .current_dir(&root)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/clients.sh");
    assert!(status.success());
    let (_, out) = run_bounded(
        Command::new("node")
            .arg(root.join("engine/tests/clients/node/origin_page.js"))
            .arg(url)
            .env("NODE_PATH", root.join("target/clients/node/node_modules")),
        Duration::from_secs(90),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("page said {out:?}"))
}

fn page_for(page: &str, server: &Server, token: &str) -> String {
    page.replace("TARGET", &server.addr.to_string())
        .replace("TOKEN", token)
}

/// Open `page`'s origin in the browser, with the page rendered for `server`.
fn visit(listener: TcpListener, origin: &str, server: &Server, token: &str) -> Value {
    visit_page(PAGE, listener, origin, server, token)
}

fn visit_page(
    page: &str,
    listener: TcpListener,
    origin: &str,
    server: &Server,
    token: &str,
) -> Value {
    serve_page(listener, page_for(page, server, token));
    load(&format!("{origin}/"))
}

/// A server with the publish `token` and `--allowed-origins origins`, and a subscriber of
/// `browser` (ready).
fn server_with(token: &str, origins: &str) -> (Server, Ws) {
    let server = Server::start(&["--publish-token", token, "--allowed-origins", origins]);
    let (mut sub, _) = server.ws("/ws/browser");
    sync(&mut sub);
    (server, sub)
}

/// Publish a sentinel with `token` and check it is the first thing `sub` gets: nothing from
/// the page came through before it.
fn nothing_came_first(server: &Server, sub: &mut Ws, token: &str) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(
        server.post("browser", "text/plain", b"sentinel", &auth),
        204
    );
    assert_eq!(
        next_text(sub),
        "sentinel",
        "nothing from the page came first"
    );
}

#[test]
fn a_page_on_another_origin_cannot_publish_unless_allowed_and_credentialed() {
    let Some(_) = chromium() else {
        eprintln!(
            "\n\n!!! SKIPPED a_page_on_another_origin...: no chromium at /usr/bin/chromium \
             (scripts/test.sh installs it with apt-get when run as root) !!!\n"
        );
        return;
    };
    // 1. Defaults: the page gets nothing through, WebSocket or fetch: browsers are not
    //    trusted, even on loopback.
    let server = Server::start(&[]);
    let (mut sub, _) = server.ws("/ws/browser");
    sync(&mut sub);
    let (listener, origin) = page_origin();
    let r = visit(listener, &origin, &server, "");
    assert_eq!(r["ws"], "refused", "{r}");
    assert_eq!(r["fetch"], "sent", "{r}");
    stats_until(server.admin.unwrap(), |s| {
        s["totals"]["access"]["refused"]["untrusted"] == 2
    });
    assert_eq!(server.post("browser", "text/plain", b"sentinel", ""), 204);
    assert_eq!(
        next_text(&mut sub),
        "sentinel",
        "nothing from the page came first"
    );

    // 2. With the publish token but from an origin that is not allowed: refused (403).
    let token = "browser-token";
    let (listener, origin) = page_origin();
    let (server, mut sub) = server_with(token, "https://app.example");
    let r = visit(listener, &origin, &server, token);
    assert_eq!(r["ws"], "refused", "{r}");
    stats_until(server.admin.unwrap(), |s| {
        s["totals"]["access"]["refused"]["origin"] == 2
    });
    nothing_came_first(&server, &mut sub, token);

    // 3. The same page from an allowed origin: both get through; the WebSocket got the
    //    `shardcast` subprotocol back (the token was offered as `shardcast.token.<token>`).
    let (listener, origin) = page_origin();
    let (server, mut sub) = server_with(token, &origin);
    let r = visit(listener, &origin, &server, token);
    assert_eq!(r["ws"], "open", "{r}");
    assert_eq!(r["protocol"], "shardcast", "{r}");
    let mut got = [next_text(&mut sub), next_text(&mut sub)];
    got.sort();
    assert_eq!(got, ["from-fetch", "from-ws"]);
}

#[test]
fn cors_publish_needs_a_preflight_granted_by_the_allow_list() {
    let Some(_) = chromium() else {
        eprintln!("\n\n!!! SKIPPED cors_publish...: no chromium at /usr/bin/chromium !!!\n");
        return;
    };
    let token = "cors-token";
    // From an origin that is not listed: the preflight is refused, the POST never sent.
    let (listener, origin) = page_origin();
    let (server, mut sub) = server_with(token, "https://app.example");
    let r = visit_page(CORS_PAGE, listener, &origin, &server, token);
    assert_eq!(r["cors"], "failed", "{r}");
    stats_until(server.admin.unwrap(), |s| {
        s["totals"]["access"]["refused"]["origin"] == 1
    });
    nothing_came_first(&server, &mut sub, token);

    // From a listed origin: preflight granted, the publish goes through and the page reads
    // its status.
    let (listener, origin) = page_origin();
    let (server, mut sub) = server_with(token, &origin);
    let r = visit_page(CORS_PAGE, listener, &origin, &server, token);
    assert_eq!(r["cors"], 204, "{r}");
    assert_eq!(next_text(&mut sub), "\"from-cors\"");
}
