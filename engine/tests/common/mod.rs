//! Shared helpers for the integration tests: start the real binary, connect clients.
#![allow(dead_code)]

pub mod hostile;

pub mod zclient;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
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
    /// The plain listener beside TLS (`--listen-plain`), when it is on.
    pub plain: Option<SocketAddr>,
}

impl Server {
    /// Start with `args` plus `--listen 127.0.0.1:0`, `--shards 2`, `--log warn` and
    /// `--admin-listen 127.0.0.1:0` unless given (the default ports would collide between
    /// parallel tests); stderr goes to the test's.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// [`start`](Self::start) with environment variables set (an empty value removes one).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Server::command(args);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.stderr(Stdio::inherit());
        Server::spawn(cmd)
    }

    /// Like [`Server::start`], with stderr captured into the returned [`Log`].
    pub fn start_logged(args: &[&str], env: &[(&str, &str)]) -> (Server, Log) {
        let mut cmd = Server::command(args);
        cmd.envs(env.iter().copied()).stderr(Stdio::piped());
        Server::spawn_logged(cmd)
    }

    /// The command [`Server::start`] runs.
    pub fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        for (flag, default) in [
            ("--log", "warn"),
            ("--listen", "127.0.0.1:0"),
            ("--shards", "2"),
            ("--admin-listen", "127.0.0.1:0"),
        ] {
            if !args.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        cmd.args(args);
        cmd
    }

    /// Spawn `cmd` (its stdout is taken over) and wait for its listening line.
    pub fn spawn(mut cmd: Command) -> Server {
        let child = cmd.stdout(Stdio::piped()).spawn().expect("spawn shardcast");
        Server::from_child(child)
    }

    /// Spawn `cmd` with its stderr (and stdout) piped; returns it with its stderr's [`Log`].
    pub fn spawn_logged(mut cmd: Command) -> (Server, Log) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardcast");
        // Read from the start, so a full stderr pipe never blocks the server.
        let log = Log::capture(child.stderr.take().unwrap());
        (Server::from_child(child), log)
    }

    /// Wait for the listening line of a child whose stdout is piped.
    pub fn from_child(mut child: Child) -> Server {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // `shardcast listening on ADDR`, then ` (admin ADMIN)` and ` (plain ws:// PLAIN)` when on.
        let rest = line
            .trim()
            .strip_prefix("shardcast listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (rest, plain) = match rest.split_once(" (plain ws:// ") {
            Some((a, p)) => (a, Some(p.trim_end_matches(')').parse().unwrap())),
            None => (rest, None),
        };
        let (addr, admin) = match rest.split_once(" (admin ") {
            Some((a, admin)) => (a, Some(admin.trim_end_matches(')').parse().unwrap())),
            None => (rest, None),
        };
        Server {
            child,
            addr: addr.parse().unwrap(),
            admin,
            plain,
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(&mut self) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let end = deadline();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < end, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
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

/// Send `method path` to the admin listener; returns the response (head, body).
pub fn admin_response(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(tcp, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("complete response");
    (head.to_owned(), body.to_owned())
}

/// Send `method path` to the admin listener; returns (status, body).
pub fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (head, body) = admin_response(addr, method, path);
    (status(&head), body)
}

pub fn stats(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = admin(addr, "GET", "/stats");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/stats is JSON")
}

/// Sends a WebSocket upgrade for `path` on a raw socket and reads exactly the response head
/// (byte by byte, so no frame bytes are consumed); asserts 101 and returns the head.
pub fn upgrade_raw(tcp: &mut TcpStream, path: &str) -> String {
    upgrade_raw_with(tcp, path, "")
}

/// [`upgrade_raw`] with `extra` header lines (each ending in `\r\n`) in the request.
pub fn upgrade_raw_with(tcp: &mut TcpStream, path: &str, extra: &str) -> String {
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
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

/// Samples of latency histogram `kind` (`handshake`, `broadcast`, ...) over every shard of a
/// /stats document.
pub fn latency_count(s: &serde_json::Value, kind: &str) -> u64 {
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh["latency_us"][kind]["count"].as_u64().unwrap())
        .sum()
}

/// Poll /stats until `f` holds (counters are eventually consistent across shards).
pub fn stats_until(addr: SocketAddr, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = deadline();
    loop {
        let s = stats(addr);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < end, "condition never held: {s:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connect with a 4 KiB receive buffer, set before connecting (setting it later leaves the
/// already advertised window in place).
pub fn small_rcvbuf_connect(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("tests listen on 127.0.0.1")
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream built below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let tcp = unsafe { TcpStream::from_raw_fd(fd) };
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt with a correctly sized c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::connect(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    tcp
}

/// A WebSocket subscriber of `path` on a raw socket with a 4 KiB receive buffer (so the server's
/// queue for it fills after a few frames if it does not read); returns it and its shard.
pub fn raw_subscriber(addr: SocketAddr, path: &str) -> (TcpStream, usize) {
    let mut tcp = small_rcvbuf_connect(addr);
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let head = upgrade_raw(&mut tcp, path);
    let shard = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Shardcast-Shard: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (tcp, shard)
}

/// Scripted fan-out: `n` subscribers of `/ws/t` alternating between shards 0 and 1 (synced), a
/// publisher on `publisher_shard` sending the text messages `m0` … `m{m-1}`, and every
/// subscriber reading all of them in order. Returns the subscribers and the publisher.
pub fn fan_out(server: &Server, n: usize, m: usize, publisher_shard: usize) -> (Vec<Ws>, Ws) {
    let mut subs: Vec<Ws> = (0..n).map(|i| server.ws_on("/ws/t", i % 2)).collect();
    for s in &mut subs {
        sync(s);
    }
    let mut publisher = server.ws_on("/pub/t", publisher_shard);
    for i in 0..m {
        publisher.send(Message::text(format!("m{i}"))).unwrap();
    }
    for s in &mut subs {
        for i in 0..m {
            assert_eq!(next_text(s), format!("m{i}"));
        }
    }
    (subs, publisher)
}

/// `/histograms?shard=N&kind=K` decoded: asserts it is an HdrHistogram log holding one interval
/// tagged `shardN_K` and returns that interval's histogram.
pub fn histogram(admin_addr: SocketAddr, shard: usize, kind: &str) -> Histogram<u64> {
    let (code, body) = admin(
        admin_addr,
        "GET",
        &format!("/histograms?shard={shard}&kind={kind}"),
    );
    assert_eq!(code, 200, "{body}");
    let intervals: Vec<_> = IntervalLogIterator::new(body.as_bytes())
        .map(|e| e.expect("parses as an interval log"))
        .filter_map(|e| match e {
            LogEntry::Interval(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(intervals.len(), 1, "{body}");
    assert_eq!(
        intervals[0].tag().unwrap().as_str(),
        format!("shard{shard}_{kind}")
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(intervals[0].encoded_histogram())
        .unwrap();
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("V2 deflate histogram")
}

/// The binary under test (`SHARDCAST_TEST_BIN` runs the suite against another build, e.g.
/// release).
pub fn bin() -> String {
    std::env::var("SHARDCAST_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_shardcast").to_owned())
}

/// What a process that was expected to exit printed.
pub struct Exited {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run the binary with `args` and `env` until it exits; panics (after killing it) if it is still
/// running after [`TIMEOUT`], e.g. because it started when it should have refused to.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Exited {
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardcast");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    );
    let end = deadline();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardcast {args:?} did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exited {
        code: status.code(),
        stdout: readers.0.join().unwrap(),
        stderr: readers.1.join().unwrap(),
    }
}

/// A child's stderr, read into memory by a thread as it arrives.
#[derive(Clone)]
pub struct Log {
    text: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Log {
    /// Start reading `from` until it ends.
    pub fn capture(mut from: impl Read + Send + 'static) -> Log {
        let log = Log {
            text: Default::default(),
            done: Default::default(),
        };
        let l = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.text.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            l.done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        log
    }

    /// Everything read so far, raw.
    pub fn bytes(&self) -> Vec<u8> {
        self.text.lock().unwrap().clone()
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Wait (bounded by `within`) until the text so far satisfies `f`; returns it.
    pub fn wait_for(&self, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let t = self.text();
            if f(&t) {
                return t;
            }
            assert!(Instant::now() < end, "log never matched; so far:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until the writer closed its end (the process exited); returns the text.
    pub fn finish(&self) -> String {
        let end = deadline();
        while !self.done.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < end, "stderr never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.text()
    }
}

/// A raw WebSocket upgrade request for `path` with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Read until the server's close frame; returns its code and reason. Panics on EOF without
/// one or after [`TIMEOUT`] (the socket's read timeout).
pub fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// An HS256 access token with `claims` (a JSON object) signed with `secret`.
pub fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Run `cmd` with its stdout captured, killed after `limit`; returns its exit status and stdout.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap())
}

/// Chromium, or `None` when it is not installed (scripts/test.sh installs it when it can).
pub fn chromium() -> Option<std::path::PathBuf> {
    [
        std::env::var("CHROMIUM").ok(),
        Some("/usr/bin/chromium".to_owned()),
        Some("/usr/bin/chromium-browser".to_owned()),
    ]
    .into_iter()
    .flatten()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

/// Headless Chromium flags for tests on a machine without a network: no sandbox (root), no GPU,
/// and none of the background connections a closed network refuses.
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Headless Chromium as this machine needs it ([`CHROMIUM_FLAGS`]), with its profile in
/// `profile`.
pub fn headless_chromium(bin: &std::path::Path, profile: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

pub mod tls;

// Continuity (`seq=1`): what a sequenced connection receives (docs/CONTINUITY.md).

/// One message a sequenced connection received.
#[derive(Debug, PartialEq)]
pub enum Got {
    Notice {
        epoch: String,
        seq: u64,
        resync: Option<String>,
    },
    Data {
        seq: u64,
        data: serde_json::Value,
    },
}

pub fn got(ws: &mut Ws, topic: &str) -> Got {
    let v: serde_json::Value = serde_json::from_str(&next_text(ws)).unwrap();
    assert_eq!(v["stream"], topic, "{v}");
    let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"));
    match v.get("epoch") {
        Some(e) => Got::Notice {
            epoch: e.as_str().unwrap().to_owned(),
            seq,
            resync: v.get("resync").map(|r| r.as_str().unwrap().to_owned()),
        },
        None => Got::Data {
            seq,
            data: v["data"].clone(),
        },
    }
}

pub fn notice(ws: &mut Ws, topic: &str) -> (String, u64, Option<String>) {
    match got(ws, topic) {
        Got::Notice { epoch, seq, resync } => (epoch, seq, resync),
        d => panic!("expected a notice, got {d:?}"),
    }
}

pub fn data(ws: &mut Ws, topic: &str) -> (u64, serde_json::Value) {
    match got(ws, topic) {
        Got::Data { seq, data } => (seq, data),
        n => panic!("expected data, got {n:?}"),
    }
}

/// A sequenced subscriber of `topic` (`path` carries `?seq=1`) that reads slowly: a tiny
/// receive buffer, so the server's marks catch it; returns it with the epoch of its first
/// notice.
pub fn slow_sequenced(addr: SocketAddr, path: &str, topic: &str) -> (Ws, String) {
    let mut tcp = small_rcvbuf_connect(addr);
    let head = upgrade_raw(&mut tcp, path);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocket::from_raw_socket(tcp, tungstenite::protocol::Role::Client, None);
    let (epoch, _, _) = notice(&mut ws, topic);
    (ws, epoch)
}

/// Read a sequenced connection that is being evicted: its data messages must be numbered 1, 2,
/// … with no gap, up to its 1013 close; returns the last number it got.
pub fn read_until_evicted(ws: &mut Ws) -> u64 {
    let mut last = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
            }
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1013);
                return last;
            }
            Ok(_) => {}
            Err(e) => panic!("no 1013: {e}"),
        }
    }
}

/// The child `cmd` starts with at most `n` open files (RLIMIT_NOFILE, soft and hard): how the
/// tests run a server out of descriptors.
pub fn limit_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started, between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
