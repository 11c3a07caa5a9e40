//! Shared helpers for the integration tests: start the real binary, connect clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Generous bound for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type Ws = WebSocket<TcpStream>;

/// The server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Admin listener address, when it is on.
    pub admin: Option<SocketAddr>,
}

impl Server {
    /// Start with `--listen 127.0.0.1:0` plus `args` (and `--shards 2` and
    /// `--admin-listen 127.0.0.1:0` unless given: the default admin port would collide between
    /// parallel tests).
    pub fn start(args: &[&str]) -> Server {
        // SHARDCAST_TEST_BIN runs the suite against another build (e.g. release).
        let bin = std::env::var("SHARDCAST_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_shardcast").to_owned());
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(if args.contains(&"--shards") {
                &[][..]
            } else {
                &["--shards", "2"][..]
            })
            .args(if args.contains(&"--admin-listen") {
                &[][..]
            } else {
                &["--admin-listen", "127.0.0.1:0"][..]
            })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardcast");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // `shardcast listening on ADDR` or `shardcast listening on ADDR (admin ADMIN)`.
        let rest = line
            .trim()
            .strip_prefix("shardcast listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (addr, admin) = match rest.split_once(" (admin ") {
            Some((a, admin)) => (a, Some(admin.trim_end_matches(')').parse().unwrap())),
            None => (rest, None),
        };
        Server {
            child,
            addr: addr.parse().unwrap(),
            admin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connect a WebSocket client; returns it and the shard that accepted it.
    pub fn ws(&self, path: &str) -> (Ws, usize) {
        self.ws_with(path, &[])
    }

    pub fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> (Ws, usize) {
        self.try_ws(path, headers)
            .unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    pub fn try_ws(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, usize), tungstenite::Error> {
        let mut req = self.url(path).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, resp) = tungstenite::client(req, tcp).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted"),
        })?;
        let shard = resp.headers()["x-shardcast-shard"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        Ok((ws, shard))
    }

    /// Connect until a client lands on `shard` (SO_REUSEPORT spreads by 4-tuple hash).
    pub fn ws_on(&self, path: &str, shard: usize) -> Ws {
        for _ in 0..500 {
            let (ws, s) = self.ws(path);
            if s == shard {
                return ws;
            }
        }
        panic!("never landed on shard {shard}");
    }

    /// Raw HTTP exchange: send `request`, return the whole response (server closes).
    pub fn http(&self, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        tcp.write_all(request).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Refusals end with the server closing; a 101 keeps the connection open, so stop at
        // the end of its head.
        while !(out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n")) {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// POST /publish/<topic>; returns the response status.
    pub fn post(&self, topic: &str, content_type: &str, body: &[u8], extra: &str) -> u16 {
        let mut req = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        status(&self.http(&req))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a raw HTTP response.
pub fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// Next data message (skipping pings/pongs).
pub fn next(ws: &mut Ws) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

pub fn next_text(ws: &mut Ws) -> String {
    match next(ws) {
        Message::Text(t) => t.to_string(),
        m => panic!("expected text, got {m:?}"),
    }
}

/// Send a control request and return the parsed reply.
pub fn control(ws: &mut Ws, req: &str) -> serde_json::Value {
    ws.send(Message::text(req)).unwrap();
    serde_json::from_str(&next_text(ws)).unwrap()
}

/// Make sure a subscriber's subscriptions are registered (its reply comes after them).
pub fn sync(ws: &mut Ws) {
    let r = control(ws, r#"{"method":"LIST_SUBSCRIPTIONS","id":"sync"}"#);
    assert_eq!(r["id"], "sync");
}

pub fn deadline() -> Instant {
    Instant::now() + TIMEOUT
}

/// Send `method path` to the admin listener; returns (status, body).
pub fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(tcp, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("complete response");
    (status(head), body.to_owned())
}

pub fn stats(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = admin(addr, "GET", "/stats");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/stats is JSON")
}

/// Sends a WebSocket upgrade for `path` on a raw socket and reads exactly the response head
/// (byte by byte, so no frame bytes are consumed); asserts 101 and returns the head.
pub fn upgrade_raw(tcp: &mut TcpStream, path: &str) -> String {
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    head
}
