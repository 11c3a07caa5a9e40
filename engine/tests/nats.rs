//! The NATS bridge against a real `nats-server` (started here on an ephemeral loopback port):
//! two shardcast processes, one topic space. Needs `nats-server` on PATH or in /usr/sbin
//! (Debian's `nats-server` package; scripts/test.sh installs it): without it these tests fail,
//! they never skip.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

/// A `nats-server` child process on a loopback port; killed on drop (its JetStream store
/// directory, if any, removed).
struct Nats {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    /// JetStream on, storing here (`-js -sd`).
    store: Option<PathBuf>,
}

fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found on PATH or in /usr/sbin: these tests need a real NATS server \
                 (Debian: apt-get install nats-server; scripts/test.sh installs it)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    fn start() -> Nats {
        Nats::start_with(None)
    }

    /// With JetStream, its store in a fresh directory under the temp dir.
    fn start_js() -> Nats {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("shardcast-js-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Nats::start_with(Some(dir))
    }

    fn start_with(store: Option<PathBuf>) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            monitor: free_port(),
            store,
        };
        n.restart();
        n
    }

    /// (Re)start on the same ports; returns once it accepts connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()]);
        if let Some(dir) = &self.store {
            cmd.arg("-js").arg("-sd").arg(dir);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_for("nats-server accepting", || TcpStream::connect(addr).is_ok());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A monitoring endpoint's JSON.
    fn monitor(&self, path: &str) -> Value {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.monitor)).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            tcp,
            // HTTP/1.0: the body is never chunked.
            "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        let body = out.split_once("\r\n\r\n").expect("complete response").1;
        serde_json::from_str(body).expect("monitoring answers JSON")
    }

    /// The last stream sequence JetStream stored, over all streams (monitoring `/jsz`): every
    /// message published so far is in the stream once this reaches their count.
    fn stored(&self) -> u64 {
        let v = self.monitor("/jsz?streams=1");
        v["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .map(|s| s["state"]["last_seq"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    /// Stop (SIGSTOP) or continue (SIGCONT) the server: a JetStream that does not answer.
    fn freeze(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Every subject subscribed on the server, over all connections (monitoring `/connz`).
    fn subjects(&self) -> BTreeSet<String> {
        let v = self.monitor("/connz?subs=1");
        v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Poll `cond` every 10 ms until it holds; fail after [`TIMEOUT`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = deadline();
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A shardcast host joined to `nats`, with `extra` flags.
fn host(nats: &Nats, extra: &[&str]) -> Server {
    let url = nats.url();
    let mut args = vec!["--nats-url", &url, "--nats-reconnect-max-ms", "100"];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    wait_for("bridge up", || bridge(&s)["state"] == "up");
    s
}

fn bridge(s: &Server) -> Value {
    stats(s.admin.unwrap())["bridge"].clone()
}

fn counter(s: &Server, name: &str) -> u64 {
    bridge(s)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no bridge.{name}"))
}

/// Read with a short timeout: `None` when nothing arrived in time.
fn poll(ws: &mut Ws, within: Duration) -> Option<Message> {
    ws.get_mut().set_read_timeout(Some(within)).unwrap();
    let got = loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => break Some(m),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                break None
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    got
}

/// Post `"probe"` to `topic` on `from` until `to` receives a probe: the cross-host path for
/// `topic` is in place (subscription propagated). Other messages are returned in order.
fn probe(from: &Server, topic: &str, to: &mut Ws) -> Vec<Message> {
    let mut others = Vec::new();
    let end = deadline();
    loop {
        assert!(Instant::now() < end, "no cross-host delivery on {topic}");
        assert_eq!(from.post(topic, "application/json", b"\"probe\"", ""), 204);
        while let Some(m) = poll(to, Duration::from_millis(50)) {
            if is_probe(&m) {
                return others;
            }
            others.push(m);
        }
    }
}

fn is_probe(m: &Message) -> bool {
    match m {
        Message::Text(t) => {
            let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
            v == "probe" || v["data"] == "probe"
        }
        _ => false,
    }
}

/// Per-topic sequence checker: every sequence exactly once, in order.
#[derive(Default)]
struct Seqs(HashMap<String, u64>);

impl Seqs {
    fn see(&mut self, who: &str, topic: &str, seq: u64) {
        let next = self.0.entry(topic.to_owned()).or_insert(0);
        assert_eq!(
            seq, *next,
            "{who}: {topic} out of order, duplicated or lost"
        );
        *next += 1;
    }

    fn get(&self, topic: &str) -> u64 {
        self.0.get(topic).copied().unwrap_or(0)
    }
}

/// Reads `ws` (a `/stream` or `/ws/<topic>` subscriber) until every topic in `want` has
/// reached its count, checking order and exactly-once. Text is `{"seq":N}` (wrapped with its
/// topic on /stream), binary is an 8-byte big-endian sequence of `binary_topic`. Probes are
/// skipped.
fn receive_all(
    who: &str,
    ws: &mut Ws,
    plain_topic: Option<&str>,
    want: &[(&str, u64)],
    hosts: &[&Server],
) {
    let mut seqs = Seqs::default();
    let done = |s: &Seqs| want.iter().all(|(t, n)| s.get(t) >= *n);
    while !done(&seqs) {
        let Some(m) = poll(ws, TIMEOUT) else {
            let bridges: Vec<Value> = hosts.iter().map(|h| bridge(h)).collect();
            panic!("{who}: stuck at {:?}; bridges {bridges:?}", seqs.0);
        };
        if is_probe(&m) {
            continue;
        }
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let (topic, data) = match plain_topic {
                    Some(topic) => (topic.to_owned(), v),
                    None => (v["stream"].as_str().unwrap().to_owned(), v["data"].clone()),
                };
                seqs.see(who, &topic, data["seq"].as_u64().unwrap());
            }
            Message::Binary(b) => {
                let seq = u64::from_be_bytes(b[..8].try_into().unwrap());
                seqs.see(who, BINARY_TOPIC, seq);
            }
            m => panic!("{who}: unexpected {m:?}"),
        }
    }
}

const BINARY_TOPIC: &str = "md.bin";

/// A WebSocket client of the server at `addr` (usable from another thread than the
/// [`Server`] owner's).
fn ws_at(addr: SocketAddr, path: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let req = format!("ws://{addr}{path}").into_client_request().unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    match tungstenite::client(req, tcp) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("connect {path}: {e}"),
    }
}

/// A `/pub/<topic>` publisher on `addr` sending `from..to`: text `{"seq":N,"run":RUN}`, or
/// 8-byte big-endian binary.
fn publish_range(addr: SocketAddr, topic: &str, from: u64, to: u64, binary: bool, run: &str) {
    let mut p = ws_at(addr, &format!("/pub/{topic}"));
    for i in from..to {
        let m = if binary {
            Message::binary(i.to_be_bytes().to_vec())
        } else {
            Message::text(format!("{{\"seq\":{i},\"run\":\"{run}\"}}"))
        };
        p.send(m).unwrap();
    }
    p.close(None).unwrap();
    // Wait for the close handshake so every message was read by the server.
    while p.read().is_ok() {}
}

#[test]
fn cross_host_delivery_is_ordered_and_exactly_once() {
    const PER_TOPIC: u64 = 2500;
    let nats = Nats::start();
    let a = host(&nats, &[]);
    let b = host(&nats, &[]);
    let text_topics = ["md.btc", "md.eth", ".odd..topic"];
    let all = [text_topics[0], text_topics[1], text_topics[2], BINARY_TOPIC];
    let streams = format!("/stream?streams={}", all.join("/"));
    let (mut b_stream, _) = b.ws(&streams);
    let (mut b_plain, _) = b.ws("/ws/md.btc");
    let (mut a_stream, _) = a.ws(&streams);
    let (mut a_back, _) = a.ws("/ws/back");
    for ws in [&mut b_stream, &mut b_plain, &mut a_stream, &mut a_back] {
        sync(ws);
    }
    wait_for("B subscribed to 4 subjects", || {
        counter(&b, "subscriptions") == 4
    });
    assert_eq!(
        nats.subjects(),
        [
            "shardcast.md.btc",
            "shardcast.md.eth",
            "shardcast.~.odd.~.topic",
            "shardcast.md.bin",
            "shardcast.back"
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "one subscription per topic with subscribers, ill-formed subjects mapped"
    );
    for t in all {
        // Probes of earlier topics may still arrive: probe() skips them all.
        probe(&a, t, &mut b_stream);
    }
    probe(&a, "md.btc", &mut b_plain);
    probe(&b, "back", &mut a_back);
    let publishers: Vec<_> = all
        .iter()
        .map(|t| {
            let (addr, t) = (a.addr, t.to_string());
            std::thread::spawn(move || {
                publish_range(addr, &t, 0, PER_TOPIC, t == BINARY_TOPIC, "main")
            })
        })
        .collect();
    let back = {
        let addr = b.addr;
        std::thread::spawn(move || publish_range(addr, "back", 0, 1000, false, "main"))
    };
    let want: Vec<(&str, u64)> = all.iter().map(|t| (*t, PER_TOPIC)).collect();
    let hosts = [&a, &b];
    receive_all("B /stream", &mut b_stream, None, &want, &hosts);
    receive_all(
        "B /ws",
        &mut b_plain,
        Some("md.btc"),
        &[("md.btc", PER_TOPIC)],
        &hosts,
    );
    receive_all("A /stream", &mut a_stream, None, &want, &hosts);
    receive_all(
        "A /ws/back",
        &mut a_back,
        Some("back"),
        &[("back", 1000)],
        &hosts,
    );
    for p in publishers {
        p.join().unwrap();
    }
    back.join().unwrap();
    // Nothing more and nothing twice: one more message per topic is the very next one.
    for t in text_topics {
        let body = format!("{{\"seq\":{PER_TOPIC}}}");
        assert_eq!(a.post(t, "application/json", body.as_bytes(), ""), 204);
    }
    let want_one_more: Vec<(&str, u64)> = text_topics.iter().map(|t| (*t, 1)).collect();
    let mut tail = Seqs::default();
    for t in text_topics {
        tail.0.insert(t.to_owned(), PER_TOPIC);
    }
    while want_one_more
        .iter()
        .any(|(t, _)| tail.get(t) < PER_TOPIC + 1)
    {
        let m = next(&mut b_stream);
        if is_probe(&m) {
            continue;
        }
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        tail.see(
            "B tail",
            v["stream"].as_str().unwrap(),
            v["data"]["seq"].as_u64().unwrap(),
        );
    }
    let (ba, bb) = (bridge(&a), bridge(&b));
    assert_eq!(ba["out_dropped"], 0);
    assert_eq!(bb["slow_consumer_drops"], 0);
    assert_eq!(
        ba["own_ignored"], 0,
        "no_echo: own messages never come back"
    );
    assert!(ba["messages_out"].as_u64().unwrap() >= 4 * PER_TOPIC + 3);
    assert!(bb["messages_in"].as_u64().unwrap() >= 4 * PER_TOPIC + 3);
    let (code, metrics) = admin(b.admin.unwrap(), "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("shardcast_bridge_up 1\n"), "{metrics}");
}

#[test]
fn subjects_follow_subscriber_interest() {
    let nats = Nats::start();
    let b = host(&nats, &[]);
    let subjects = |want: &[&str]| {
        let want: BTreeSet<String> = want.iter().map(|s| format!("shardcast.{s}")).collect();
        // NATS may list a subject before the bridge has updated its counters (it counts a
        // subscription once the client call returns): wait for both views to agree.
        let n = want.len() as u64;
        wait_for(
            &format!("NATS subjects {want:?} and bridge counters {n}"),
            || {
                nats.subjects() == want
                    && counter(&b, "subscriptions") == n
                    && counter(&b, "interested_topics") == n
            },
        );
    };
    subjects(&[]);
    let (mut c1, _) = b.ws("/stream?streams=x");
    sync(&mut c1);
    subjects(&["x"]);
    // A second subscriber of x (whichever shard it lands on) changes nothing; y is new.
    let (mut c2, _) = b.ws("/stream?streams=x/y");
    sync(&mut c2);
    subjects(&["x", "y"]);
    let r = control(&mut c2, r#"{"method":"UNSUBSCRIBE","params":["y"],"id":1}"#);
    assert_eq!(r["id"], 1);
    subjects(&["x"]);
    let r = control(&mut c2, r#"{"method":"SUBSCRIBE","params":["z"],"id":2}"#);
    assert_eq!(r["id"], 2);
    subjects(&["x", "z"]);
    drop(c2); // disconnecting releases z; x is still held by c1
    subjects(&["x"]);
    drop(c1);
    subjects(&[]);
}

#[test]
fn nats_outage_keeps_local_delivery_and_cross_host_resumes() {
    let mut nats = Nats::start();
    let a = host(&nats, &["--nats-buffer-bytes", "32KiB"]);
    let b = host(&nats, &[]);
    let (mut a_sub, _) = a.ws("/ws/t");
    let (mut b_sub, _) = b.ws("/ws/t");
    sync(&mut a_sub);
    sync(&mut b_sub);
    wait_for("B subscribed", || counter(&b, "subscriptions") == 1);
    probe(&a, "t", &mut b_sub);
    while poll(&mut a_sub, Duration::from_millis(100)).is_some() {}

    nats.stop();
    for h in [&a, &b] {
        wait_for("bridge down", || bridge(h)["state"] == "down");
        let (code, body) = admin(h.admin.unwrap(), "GET", "/health");
        assert_eq!(code, 200, "NATS down is not a local failure: {body}");
        assert!(body.starts_with("ok\nnats bridge: down for "), "{body}");
        let (_, metrics) = admin(h.admin.unwrap(), "GET", "/metrics");
        assert!(metrics.contains("shardcast_bridge_up 0\n"));
    }
    // Both hosts keep delivering their own traffic.
    for (h, sub) in [(&a, &mut a_sub), (&b, &mut b_sub)] {
        for i in 0..20u64 {
            let body = format!("{{\"seq\":{i}}}");
            assert_eq!(h.post("t", "application/json", body.as_bytes(), ""), 204);
            let v: Value = serde_json::from_str(&next_text(sub)).unwrap();
            assert_eq!(v["seq"], i, "local delivery during the outage");
        }
    }
    // More than the buffer (32 KiB: ~350 of these ~29-byte messages at 64 bytes of overhead
    // each) plus what the forwarder and the client hold (64 + 128 messages): the rest is
    // counted.
    publish_range(a.addr, "t", 20, 2000, false, "outage");
    wait_for("A counts what it could not forward", || {
        counter(&a, "out_dropped") > 0
    });
    let a_local: Vec<u64> = (0..1980)
        .map(|_| {
            let v: Value = serde_json::from_str(&next_text(&mut a_sub)).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        a_local,
        (20..2000).collect::<Vec<_>>(),
        "A's own subscriber got all"
    );

    nats.restart();
    for h in [&a, &b] {
        wait_for("bridge up again", || bridge(h)["state"] == "up");
        assert!(counter(h, "reconnects") >= 1);
        let (code, body) = admin(h.admin.unwrap(), "GET", "/health");
        assert_eq!(
            (code, body.lines().nth(1).unwrap()),
            (200, "nats bridge: up (1 subscriptions)")
        );
    }
    // Whatever was buffered during the outage may arrive first; then the path is back.
    probe(&a, "t", &mut b_sub);
    let publisher = {
        let addr = a.addr;
        // Fewer than the buffer holds: a burst may reach the bridge in one ring drain.
        std::thread::spawn(move || publish_range(addr, "t", 0, 200, false, "after"))
    };
    let mut seqs = Seqs::default();
    while seqs.get("t") < 200 {
        let m = next(&mut b_sub);
        if is_probe(&m) {
            continue;
        }
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        // Messages buffered on A during the outage may still be on their way: not this run.
        if v["run"] == "after" {
            seqs.see("B after restart", "t", v["seq"].as_u64().unwrap());
        }
    }
    publisher.join().unwrap();
}

#[test]
fn slow_remote_host_does_not_stall_the_publisher() {
    const N: u64 = 20_000;
    let nats = Nats::start();
    // A's own subscriber may hold the whole burst (20 MB), and A's shard may get that far
    // ahead of A's bridge on a loaded machine: this test is about B.
    let a = host(
        &nats,
        &["--high-water-bytes", "64MiB", "--ring-capacity", "32768"],
    );
    // On B the topic pauses its publishers when a subscriber falls behind: the bridge then
    // stops pulling it, and the NATS client drops what exceeds 64 pending messages.
    let b = host(
        &nats,
        &[
            "--topic-policy",
            "slow=pause,high_water_bytes=16384",
            "--nats-pending-messages",
            "64",
        ],
    );
    let (mut a_sub, _) = a.ws("/ws/slow");
    sync(&mut a_sub);
    let (mut b_probe, _) = b.ws("/ws/slow");
    sync(&mut b_probe);
    // B's slow subscriber upgrades and never reads again.
    let mut stuck = TcpStream::connect(b.addr).unwrap();
    upgrade_raw(&mut stuck, "/ws/slow");
    wait_for("B subscribed", || counter(&b, "subscriptions") == 1);
    probe(&a, "slow", &mut b_probe);
    drop(b_probe);
    while poll(&mut a_sub, Duration::from_millis(100)).is_some() {}

    let started = Instant::now();
    let publisher = {
        let addr = a.addr;
        std::thread::spawn(move || {
            let mut p = ws_at(addr, "/pub/slow");
            let pad = "x".repeat(1000);
            for i in 0..N {
                p.send(Message::text(format!("{{\"seq\":{i},\"pad\":\"{pad}\"}}")))
                    .unwrap();
            }
            p.close(None).unwrap();
            while p.read().is_ok() {}
        })
    };
    receive_all(
        "A local",
        &mut a_sub,
        Some("slow"),
        &[("slow", N)],
        &[&a, &b],
    );
    publisher.join().unwrap();
    let elapsed = started.elapsed();
    wait_for("B's bridge backs off and NATS drops are counted", || {
        counter(&b, "slow_consumer_drops") > 0
    });
    assert!(
        counter(&b, "messages_in") < N,
        "B could not take everything"
    );
    wait_for("A forwarded everything", || {
        counter(&a, "messages_out") >= N
    });
    assert_eq!(
        counter(&a, "out_dropped"),
        0,
        "the publishing side lost nothing"
    );
    let (code, _) = admin(a.admin.unwrap(), "GET", "/health");
    assert_eq!(code, 200);
    assert_eq!(bridge(&b)["state"], "up", "B stays connected");
    eprintln!("20,000 x 1 KB published on A with a stuck subscriber on B: {elapsed:?}");
    drop(stuck);
}

/// A bare NATS protocol client (CONNECT, PUB/HPUB, PING): what a non-shardcast publisher
/// sends straight to the subjects.
struct RawNats(TcpStream);

impl RawNats {
    fn connect(nats: &Nats) -> RawNats {
        let tcp = TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = RawNats(tcp);
        c.read_until("INFO ");
        c.0.write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":false}\r\n")
            .unwrap();
        c
    }

    fn read_until(&mut self, marker: &str) {
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains(marker) {
            let n = self.0.read(&mut b).expect("nats-server answers");
            assert!(
                n > 0,
                "nats-server closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&b[..n]);
        }
    }

    /// Publish with `headers` (name, value) pairs, or a plain PUB without any.
    fn publish(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut out = Vec::new();
        if headers.is_empty() {
            write!(out, "PUB {subject} {}\r\n", payload.len()).unwrap();
        } else {
            let mut h = String::from("NATS/1.0\r\n");
            for (k, v) in headers {
                h += &format!("{k}: {v}\r\n");
            }
            h += "\r\n";
            write!(
                out,
                "HPUB {subject} {} {}\r\n{h}",
                h.len(),
                h.len() + payload.len()
            )
            .unwrap();
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.0.write_all(&out).unwrap();
    }

    /// Round trip: everything sent before was processed by the server.
    fn ping(&mut self) {
        self.0.write_all(b"PING\r\n").unwrap();
        self.read_until("PONG");
    }
}

#[test]
fn external_publishers_kinds_and_own_origin() {
    let nats = Nats::start();
    let b = host(&nats, &[]);
    let (mut sub, _) = b.ws("/ws/ext");
    sync(&mut sub);
    wait_for("B subscribed", || counter(&b, "subscriptions") == 1);
    let origin = bridge(&b)["origin"].as_str().unwrap().to_owned();
    assert_eq!(origin.len(), 16);
    let mut raw = RawNats::connect(&nats);
    let subject = "shardcast.ext";
    // Until the subscription is in place on the server, plain text probes.
    let end = deadline();
    loop {
        assert!(
            Instant::now() < end,
            "no delivery from a raw NATS publisher"
        );
        raw.publish(subject, &[], b"\"probe\"");
        raw.ping();
        if poll(&mut sub, Duration::from_millis(50)).is_some_and(|m| is_probe(&m)) {
            break;
        }
    }
    while poll(&mut sub, Duration::from_millis(100)).is_some() {}
    let (in0, invalid0) = (counter(&b, "messages_in"), counter(&b, "in_invalid"));
    // This host's own origin: ignored (it already delivered its own publishes locally).
    raw.publish(
        subject,
        &[("Shardcast-Origin", &origin), ("Shardcast-Kind", "text")],
        b"own",
    );
    // Labelled text but not UTF-8, and an unknown kind: dropped and counted.
    raw.publish(subject, &[("Shardcast-Kind", "text")], &[0xff, 0xfe]);
    raw.publish(subject, &[("Shardcast-Kind", "json")], b"{}");
    // No kind header: UTF-8 is text, anything else binary; a kind header is obeyed.
    raw.publish(subject, &[], b"plain");
    raw.publish(subject, &[], &[0xc3, 0x28]);
    raw.publish(subject, &[("Shardcast-Kind", "binary")], b"bin");
    raw.publish(subject, &[("Shardcast-Origin", "someone-else")], b"last");
    raw.ping();
    let got: Vec<Message> = (0..4).map(|_| next(&mut sub)).collect();
    assert_eq!(
        got,
        vec![
            Message::text("plain"),
            Message::binary(vec![0xc3, 0x28]),
            Message::binary(b"bin".to_vec()),
            Message::text("last"),
        ]
    );
    assert_eq!(counter(&b, "own_ignored"), 1);
    assert_eq!(counter(&b, "in_invalid") - invalid0, 2);
    assert_eq!(counter(&b, "messages_in") - in0, 4);
}

/// Each change of the bridge's link state is one line, however many reconnect attempts an
/// outage takes: down once at start (NATS not there yet), up once, down once when NATS goes
/// away, up once when it is back; nothing from the NATS client itself at INFO.
#[test]
fn bridge_logs_each_link_state_change_once() {
    let mut nats = Nats::start();
    nats.stop();
    let url = nats.url();
    let (mut s, log) = Server::start_logged(
        &[
            "--nats-url",
            &url,
            "--nats-reconnect-max-ms",
            "50",
            "--log",
            "info",
        ],
        &[],
    );
    let failures = |s: &Server| counter(s, "connect_failures");
    wait_for("repeated failed attempts", || failures(&s) >= 10);
    nats.restart();
    wait_for("bridge up", || bridge(&s)["state"] == "up");
    nats.stop();
    wait_for("bridge down", || bridge(&s)["state"] == "down");
    let before = failures(&s);
    wait_for("more failed attempts", || failures(&s) >= before + 10);
    nats.restart();
    wait_for("bridge up again", || bridge(&s)["state"] == "up");
    s.terminate();
    let text = log.finish();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("nats bridge: down"), 2, "{text}");
    assert_eq!(count("nats bridge: up"), 2, "{text}");
    assert_eq!(count("async_nats"), 0, "the client's own lines: {text}");
    assert!(
        text.contains("nats bridge: down (cannot connect"),
        "the first line says why: {text}"
    );
    assert!(
        text.contains("nats bridge: down (connection lost)"),
        "{text}"
    );
    assert!(text.contains("failed_attempts="), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

/// Messages from NATS are compressed once, by the bridge, for every shard's compressing
/// subscribers (the shards compress nothing); plain subscribers get plain frames.
#[test]
fn messages_from_nats_are_compressed_once_by_the_bridge() {
    use common::zclient::{ZClient, OFFER};
    let nats = Nats::start();
    let b = host(&nats, &["--compression-min-bytes", "32"]);
    let mut zs: Vec<ZClient> = (0..2)
        .map(|shard| ZClient::connect_on(b.addr, "/ws/zext", Some(OFFER), shard))
        .collect();
    let (mut plain, _) = b.ws("/ws/zext");
    sync(&mut plain);
    wait_for("B subscribed, compressing", || {
        counter(&b, "subscriptions") == 1 && bridge(&b)["compression"]["topics"] == 1
    });
    let mut raw = RawNats::connect(&nats);
    let end = deadline();
    loop {
        assert!(Instant::now() < end, "no delivery from NATS");
        raw.publish("shardcast.zext", &[], b"\"probe\"");
        raw.ping();
        if poll(&mut plain, Duration::from_millis(50)).is_some_and(|m| is_probe(&m)) {
            break;
        }
    }
    while poll(&mut plain, Duration::from_millis(100)).is_some() {}
    for z in &mut zs {
        while z.poll(Duration::from_millis(100)).is_some() {}
    }
    let msgs: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "{{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"seq\":{i},\"p\":\"97000.{i:02}\",\"q\":\"0.0{i}\",\"pad\":\"{}\"}}",
                "ab".repeat(50 + i)
            )
        })
        .collect();
    for m in &msgs {
        raw.publish(
            "shardcast.zext",
            &[("Shardcast-Kind", "text")],
            m.as_bytes(),
        );
    }
    raw.ping();
    for m in &msgs {
        assert_eq!(next_text(&mut plain), *m);
        for z in &mut zs {
            let got = z.message();
            assert!(got.compressed, "from NATS, compressed");
            assert_eq!(got.payload, m.as_bytes());
        }
    }
    let s = stats(b.admin.unwrap());
    assert_eq!(s["bridge"]["compression"]["compressed_messages"], 5);
    assert_eq!(s["totals"]["compression"]["compressed_messages"], 0);
    assert_eq!(s["totals"]["compression"]["compressed_deliveries"], 10);
}

/// Continuity across hosts (docs/CONTINUITY.md, "Guarantees per topology"): a topic published
/// on one host keeps that host's numbers on every host (the `Shardcast-Epoch`/`Shardcast-Seq`
/// headers), so a client resumes on another host with nothing lost and nothing duplicated.
#[test]
fn sequence_numbers_travel_with_messages_and_resume_on_another_host() {
    let nats = Nats::start();
    let history = ["--topic-history", "x=messages=5000"];
    let a = host(&nats, &history);
    let b = host(&nats, &history);
    let (mut sa, _) = a.ws("/ws/x?seq=1");
    let (epoch_a, _, _) = notice(&mut sa, "x");
    // A sequenced subscriber alone makes B's bridge subscribe the subject.
    let (mut sb, _) = b.ws("/ws/x?seq=1");
    notice(&mut sb, "x");
    // Probe until B receives A's messages; B then adopts A's numbering (an `epoch` resync
    // notice, once, before the first adopted message).
    let mut probes = 0u64;
    let first = loop {
        assert!(probes < 500, "no cross-host delivery");
        probes += 1;
        assert_eq!(a.post("x", "application/json", b"\"probe\"", ""), 204);
        assert_eq!(data(&mut sa, "x").0, probes);
        ws_timeout(&mut sb, Duration::from_millis(50));
        match sb.read() {
            Ok(Message::Text(t)) => break t.to_string(),
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    };
    ws_timeout(&mut sb, TIMEOUT);
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["epoch"], epoch_a.as_str(), "B adopts A's epoch: {v}");
    assert_eq!(v["resync"], "epoch", "{v}");
    let adopted = v["seq"].as_u64().unwrap() + 1;
    // Drain B up to the last probe: A's numbers.
    for want in adopted..=probes {
        assert_eq!(data(&mut sb, "x").0, want);
    }
    // 300 more messages from A: the same numbers on both hosts.
    for i in 1..=300u64 {
        assert_eq!(
            a.post("x", "application/json", i.to_string().as_bytes(), ""),
            204
        );
    }
    let head = probes + 300;
    let mut cut = 0;
    for want in probes + 1..=head {
        assert_eq!(data(&mut sa, "x").0, want);
        if want < probes + 100 {
            assert_eq!(data(&mut sb, "x"), (want, serde_json::json!(want - probes)));
            cut = want;
        }
    }
    // B's client is cut off after `cut`; it resumes on B with A's epoch and gets the rest from
    // B's history, exactly once. A second subscriber on B holds B's interest in the topic
    // meanwhile (with none, B's bridge would unsubscribe the subject, and what NATS has not
    // yet delivered to B would be lost to B: at most once), and shows that B has everything.
    let (mut keeper, _) = b.ws(&format!("/ws/x?seq=1&since=x:{cut}&epoch={epoch_a}"));
    assert_eq!(notice(&mut keeper, "x"), (epoch_a.clone(), cut, None));
    for want in cut + 1..=head {
        assert_eq!(data(&mut keeper, "x").0, want);
    }
    drop(sb);
    let (mut sb, _) = b.ws(&format!("/ws/x?seq=1&since=x:{cut}&epoch={epoch_a}"));
    assert_eq!(notice(&mut sb, "x"), (epoch_a.clone(), cut, None));
    for want in cut + 1..=head {
        assert_eq!(data(&mut sb, "x"), (want, serde_json::json!(want - probes)));
    }
    // And a client of A resumes on B from A's numbers too.
    let (mut sc, _) = b.ws(&format!("/ws/x?seq=1&since=x:{}&epoch={epoch_a}", head - 5));
    assert_eq!(notice(&mut sc, "x"), (epoch_a, head - 5, None));
    assert_eq!(data(&mut sc, "x").0, head - 4);
}

fn ws_timeout(ws: &mut Ws, t: Duration) {
    ws.get_mut().set_read_timeout(Some(t)).unwrap();
}

// Deep history (docs/CONTINUITY.md, "Deep history"): resumes older than the local ring read the
// missing range from a JetStream stream (a real `nats-server -js`, its store in a temp dir).

/// A host with deep history on (`--nats-jetstream`) and a ring of `ring` messages for topic
/// x; returns once its JetStream stream exists.
fn deep_host(nats: &Nats, ring: usize, extra: &[&str]) -> Server {
    let ring = format!("x=messages={ring}");
    let mut args = vec!["--nats-jetstream", "on", "--topic-history", &ring];
    args.extend_from_slice(extra);
    let s = host(nats, &args);
    if nats.store.is_some() {
        wait_for("the JetStream stream", || {
            counter(&s, "deep_stream_ready") == 1
        });
    }
    s
}

/// Read x's data `from..=to` on a sequenced connection: each number once, in order, carrying
/// the payload `publish_range` sent for it (`{"seq": n - offset}`).
fn expect_range(ws: &mut Ws, from: u64, to: u64, offset: u64) {
    for want in from..=to {
        let (seq, d) = data(ws, "x");
        assert_eq!(seq, want, "lost or duplicated");
        assert_eq!(d["seq"], want - offset, "{d}");
    }
}

/// A sequenced client of `s` sees `n` messages published to x and reads the first `read`
/// before it is cut off; returns x's epoch once the stream holds all `n`.
fn cut_off_after(nats: &Nats, s: &Server, n: u64, read: u64) -> String {
    let (mut c, _) = s.ws("/ws/x?seq=1");
    let (epoch, _, _) = notice(&mut c, "x");
    publish_range(s.addr, "x", 1, n + 1, false, "deep");
    expect_range(&mut c, 1, read, 0);
    drop(c);
    wait_for("every message in the stream", || nats.stored() >= n);
    epoch
}

/// One host, a ring of 10 messages: a client cut off after 1,000 messages resumes after 2,000
/// more and gets every one exactly once (1,990 of them from JetStream, in two chunks), then
/// live.
#[test]
fn deep_history_fills_what_the_local_ring_no_longer_has() {
    let nats = Nats::start_js();
    let s = deep_host(&nats, 10, &[]);
    let (mut c, _) = s.ws("/ws/x?seq=1");
    let (epoch, at, resync) = notice(&mut c, "x");
    assert_eq!((at, resync), (0, None));
    publish_range(s.addr, "x", 1, 1001, false, "deep");
    expect_range(&mut c, 1, 1000, 0);
    drop(c);
    publish_range(s.addr, "x", 1001, 3001, false, "deep");
    wait_for("3000 messages in the stream", || nats.stored() >= 3000);
    let (mut c, _) = s.ws(&format!("/ws/x?seq=1&since=x:1000&epoch={epoch}"));
    assert_eq!(notice(&mut c, "x"), (epoch.clone(), 1000, None));
    expect_range(&mut c, 1001, 3000, 0);
    assert_eq!(s.post("x", "application/json", b"{\"seq\":3001}", ""), 204);
    expect_range(&mut c, 3001, 3001, 0);
    // The ring held 2991..=3000; everything before came from the stream, nothing twice.
    assert_eq!(counter(&s, "deep_messages"), 1990);
    assert!(counter(&s, "deep_fetches") >= 2, "chunked");
    assert_eq!(counter(&s, "deep_short"), 0);
    let (_, metrics) = admin(s.admin.unwrap(), "GET", "/metrics");
    assert!(
        metrics.contains("shardcast_bridge_deep_messages_total 1990"),
        "{metrics}"
    );
}

/// Two hosts: a client reads part of x on A (the origin), is cut off, 2,000 more messages are
/// published, and it resumes on B, whose ring keeps 10: every message exactly once, in
/// order, with A's numbers, then live.
#[test]
fn deep_history_resumes_on_another_host_from_jetstream() {
    let nats = Nats::start_js();
    let a = deep_host(&nats, 100_000, &[]);
    let b = deep_host(&nats, 10, &[]);
    // A sequenced subscriber on B makes B's bridge subscribe x; probe from A until it
    // arrives, from then on B has A's numbering (an `epoch` resync, then A's numbers).
    let (mut keeper, _) = b.ws("/ws/x?seq=1");
    notice(&mut keeper, "x");
    let mut probes = 0u64;
    loop {
        assert!(probes < 500, "no cross-host delivery");
        probes += 1;
        assert_eq!(a.post("x", "application/json", b"\"probe\"", ""), 204);
        if poll(&mut keeper, Duration::from_millis(50)).is_some() {
            break; // the adoption notice
        }
    }
    let mut last = 0;
    while last < probes {
        last = data(&mut keeper, "x").0;
    }
    let (mut sa, _) = a.ws("/ws/x?seq=1");
    let (epoch, at, _) = notice(&mut sa, "x");
    assert_eq!(at, probes);
    publish_range(a.addr, "x", 1, 501, false, "deep");
    let cut = probes + 500;
    expect_range(&mut sa, probes + 1, cut, probes);
    drop(sa);
    publish_range(a.addr, "x", 501, 2501, false, "deep");
    let head = probes + 2500;
    expect_range(&mut keeper, probes + 1, head, probes);
    wait_for("every message in the stream", || nats.stored() >= head);
    let (mut c, _) = b.ws(&format!("/ws/x?seq=1&since=x:{cut}&epoch={epoch}"));
    assert_eq!(notice(&mut c, "x"), (epoch, cut, None));
    expect_range(&mut c, cut + 1, head, probes);
    assert_eq!(a.post("x", "application/json", b"{\"seq\":2501}", ""), 204);
    expect_range(&mut c, head + 1, head + 1, probes);
    assert_eq!(counter(&b, "deep_messages"), head - 10 - cut);
    assert_eq!(counter(&b, "deep_short"), 0);
}

/// What deep history cannot give ends in the documented `trimmed` resync naming where the
/// client continues, and a counter: a range the stream's retention dropped, a JetStream that
/// does not answer in time, and no JetStream at all.
#[test]
fn deep_history_short_or_unavailable_ends_in_a_trimmed_resync() {
    let nats = Nats::start_js();
    let s = deep_host(
        &nats,
        10,
        &[
            "--nats-jetstream-max-messages",
            "50",
            "--nats-jetstream-timeout-ms",
            "500",
        ],
    );
    let (mut c, _) = s.ws("/ws/x?seq=1");
    let (epoch, _, _) = notice(&mut c, "x");
    publish_range(s.addr, "x", 1, 301, false, "deep");
    expect_range(&mut c, 1, 300, 0);
    wait_for("300 messages through the stream", || nats.stored() >= 300);
    // The stream keeps 251..=300, the ring 291..=300: 21..=250 are gone.
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:20&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 20, None));
    let trimmed = Some("trimmed".to_owned());
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 250, trimmed.clone()));
    expect_range(&mut r, 251, 300, 0);
    assert_eq!(counter(&s, "deep_short"), 1);
    assert_eq!(counter(&s, "deep_messages"), 40);
    // JetStream frozen (SIGSTOP): the fetch times out, the client continues from the ring.
    nats.freeze(true);
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:100&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 100, None));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 290, trimmed.clone()));
    expect_range(&mut r, 291, 300, 0);
    nats.freeze(false);
    assert_eq!(counter(&s, "deep_timeouts"), 1);
    drop((c, r, s));

    // A NATS server without JetStream: no stream, every deep fetch fails at once.
    let plain = Nats::start();
    let s = deep_host(&plain, 10, &[]);
    let (mut c, _) = s.ws("/ws/x?seq=1");
    let (epoch, _, _) = notice(&mut c, "x");
    publish_range(s.addr, "x", 1, 51, false, "deep");
    expect_range(&mut c, 1, 50, 0);
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:5&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 5, None));
    assert_eq!(notice(&mut r, "x"), (epoch, 40, trimmed));
    expect_range(&mut r, 41, 50, 0);
    assert_eq!(counter(&s, "deep_unavailable"), 1);
    assert_eq!(counter(&s, "deep_stream_ready"), 0);
}

/// A client that leaves while its deep fetch is out leaves nothing behind: its pending resume
/// goes at once, and the late result finds no ticket (the shard serves the next resume as
/// usual).
#[test]
fn a_client_leaving_during_a_deep_fetch_leaves_nothing_behind() {
    let nats = Nats::start_js();
    let s = deep_host(&nats, 10, &["--nats-jetstream-timeout-ms", "60000"]);
    let epoch = cut_off_after(&nats, &s, 100, 100);
    let admin = s.admin.unwrap();
    let pending = || -> u64 {
        stats(admin)["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sh| sh["continuity"]["resumes_pending"].as_u64().unwrap())
            .sum()
    };
    let answered = || {
        ["deep_fetches", "deep_timeouts", "deep_unavailable"]
            .iter()
            .map(|n| counter(&s, n))
            .sum::<u64>()
    };
    nats.freeze(true);
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:5&epoch={epoch}"));
    // The home shard's answer (the notice) came: the fetch is out, and stuck.
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 5, None));
    wait_for("the resume pending", || pending() == 1);
    drop(r);
    wait_for("no resume pending", || pending() == 0);
    assert_eq!(answered(), 0, "the fetch is still out");
    nats.freeze(false);
    wait_for("the late result", || answered() == 1);
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:5&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch, 5, None));
    expect_range(&mut r, 6, 100, 0);
    wait_for("live, nothing pending", || pending() == 0);
}

/// A sequenced client evicted (1013) mid-stream resumes past a 10-message ring: every message
/// exactly once, most of them from JetStream.
#[test]
fn a_client_evicted_mid_stream_resumes_from_jetstream() {
    let nats = Nats::start_js();
    // A mark this small must hold one max-size message plus the kernel's send buffer
    // (`Config::check_limits`), as in tests/continuity.rs.
    let s = deep_host(
        &nats,
        10,
        &[
            "--max-message-bytes",
            "8192",
            "--send-buffer-bytes",
            "16KiB",
            "--high-water-bytes",
            "64KiB",
        ],
    );
    let admin = s.admin.unwrap();
    let (mut slow, epoch) = slow_sequenced(s.addr, "/ws/x?seq=1", "x");
    let pad = "x".repeat(1000);
    let (mut p, _) = s.ws("/pub/x");
    let evicted = |v: &Value| v["totals"]["evictions"]["high_water"].as_u64() > Some(0);
    let mut n = 0u64;
    while n < 10_000 {
        n += 1;
        p.send(Message::text(format!("{{\"seq\":{n},\"pad\":\"{pad}\"}}")))
            .unwrap();
        if n.is_multiple_of(100) && evicted(&stats(admin)) {
            break;
        }
    }
    assert!(evicted(&stats_until(admin, evicted)));
    stats_until(admin, |v| {
        v["totals"]["continuity"]["stamped"].as_u64() >= Some(n)
    });
    wait_for("every message in the stream", || nats.stored() >= n);
    let last = read_until_evicted(&mut slow); // what reached it before its 1013
    assert!(last + 10 < n, "the ring alone cannot cover the gap");
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:{last}&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch, last, None));
    expect_range(&mut r, last + 1, n, 0);
    assert_eq!(counter(&s, "deep_messages"), n - 10 - last);
}

/// A host that has received nothing of a topic since it started (it started after the
/// messages were published) learns the origin's numbering from the stream's last message: a
/// client of A resumes there with nothing lost and nothing twice, then live.
#[test]
fn deep_history_resumes_on_a_host_that_never_received_the_topic() {
    let nats = Nats::start_js();
    let a = deep_host(&nats, 100_000, &[]);
    let epoch = cut_off_after(&nats, &a, 1000, 400);
    let b = deep_host(&nats, 10, &[]);
    let (mut c, _) = b.ws(&format!("/ws/x?seq=1&since=x:400&epoch={epoch}"));
    assert_eq!(notice(&mut c, "x"), (epoch, 400, None));
    expect_range(&mut c, 401, 1000, 0);
    // Live from A once B's bridge subscribes the topic for this subscriber.
    wait_for("B subscribed", || counter(&b, "subscriptions") == 1);
    assert_eq!(a.post("x", "application/json", b"{\"seq\":1001}", ""), 204);
    expect_range(&mut c, 1001, 1001, 0);
    assert_eq!(counter(&b, "deep_lookups"), 1);
    assert_eq!(counter(&b, "deep_messages"), 600);
}

/// A JetStream API request as an operator's tool would make it (the NATS protocol by hand:
/// `CONNECT`, a reply subscription, `PUB $JS.API.<api>`); returns the server's answer.
fn js_api(nats: &Nats, api: &str, body: &Value) -> Value {
    let mut tcp = TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body = body.to_string();
    write!(
        tcp,
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB reply.api 1\r\n\
         PUB $JS.API.{api} reply.api {}\r\n{body}\r\n",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "nats-server closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(at) = text.find("MSG reply.api") {
            let rest = &text[at..];
            if let Some((head, body)) = rest.split_once("\r\n") {
                let len: usize = head.rsplit(' ').next().unwrap().parse().unwrap();
                if body.len() >= len {
                    return serde_json::from_str(&body[..len]).unwrap();
                }
            }
        }
    }
}

/// A stream the operator configured (no direct gets, 50 messages per subject) is used as it is,
/// never changed: a host started later resumes a client from it (the leader's message gets),
/// as far back as that stream keeps.
#[test]
fn deep_history_uses_an_operator_stream_as_configured() {
    let nats = Nats::start_js();
    let created = js_api(
        &nats,
        "STREAM.CREATE.OPS",
        &serde_json::json!({
            "name": "OPS",
            "subjects": ["shardcast.>"],
            "storage": "memory",
            "max_msgs_per_subject": 50,
            "allow_direct": false,
            "num_replicas": 1,
        }),
    );
    assert!(created.get("error").is_none(), "{created}");
    let ops = ["--nats-jetstream-stream", "OPS"];
    let a = deep_host(&nats, 100_000, &ops);
    let (mut sa, _) = a.ws("/ws/x?seq=1");
    let (epoch, _, _) = notice(&mut sa, "x");
    publish_range(a.addr, "x", 1, 301, false, "deep");
    expect_range(&mut sa, 1, 300, 0);
    wait_for("300 messages through the stream", || nats.stored() >= 300);
    // B (ring 10, and a larger retention it would create a stream with) has received nothing of
    // x: it takes A's numbering from the stream, then replays what the stream still has.
    let b = deep_host(
        &nats,
        10,
        &[&ops[..], &["--nats-jetstream-max-messages", "100000"]].concat(),
    );
    let (mut c, _) = b.ws(&format!("/ws/x?seq=1&since=x:20&epoch={epoch}"));
    assert_eq!(notice(&mut c, "x"), (epoch.clone(), 20, None));
    assert_eq!(
        notice(&mut c, "x"),
        (epoch, 250, Some("trimmed".to_owned()))
    );
    expect_range(&mut c, 251, 300, 0);
    assert_eq!(counter(&b, "deep_lookups"), 1);
    assert_eq!(counter(&b, "deep_short"), 1);
    // Still the operator's stream: 50 per subject, no direct gets.
    let v = nats.monitor("/jsz?streams=1&config=1");
    let config = &v["account_details"][0]["stream_detail"][0]["config"];
    assert_eq!(
        (
            config["max_msgs_per_subject"].as_i64(),
            config["allow_direct"].as_bool()
        ),
        (Some(50), Some(false)),
        "{config}"
    );
}

/// The stream deleted under a running host: the next fetch finds none, creates it again
/// (empty), and the client is told `trimmed`; later messages are captured again.
#[test]
fn deep_history_after_the_stream_was_deleted_resyncs_and_recreates_it() {
    let nats = Nats::start_js();
    let s = deep_host(&nats, 10, &[]);
    let (mut c, _) = s.ws("/ws/x?seq=1");
    let (epoch, _, _) = notice(&mut c, "x");
    publish_range(s.addr, "x", 1, 101, false, "deep");
    expect_range(&mut c, 1, 100, 0);
    wait_for("100 messages in the stream", || nats.stored() >= 100);
    // A resume from the stream first: the bridge remembers where it ended in that stream, which
    // must not be taken for a place in the next one.
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:40&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 40, None));
    expect_range(&mut r, 41, 100, 0);
    drop(r);
    let deleted = js_api(&nats, "STREAM.DELETE.SHARDCAST", &serde_json::json!({}));
    assert_eq!(deleted["success"], true, "{deleted}");
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:5&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch.clone(), 5, None));
    assert_eq!(
        notice(&mut r, "x"),
        (epoch.clone(), 90, Some("trimmed".to_owned()))
    );
    expect_range(&mut r, 91, 100, 0);
    assert_eq!(
        (counter(&s, "deep_short"), counter(&s, "deep_fetches")),
        (1, 2)
    );
    // Re-created: what is published now is captured, and resumes reach it again.
    publish_range(s.addr, "x", 101, 201, false, "deep");
    expect_range(&mut c, 101, 200, 0);
    expect_range(&mut r, 101, 200, 0);
    wait_for("the new messages in the new stream", || {
        nats.stored() >= 100
    });
    let (mut r2, _) = s.ws(&format!("/ws/x?seq=1&since=x:150&epoch={epoch}"));
    assert_eq!(notice(&mut r2, "x"), (epoch, 150, None));
    expect_range(&mut r2, 151, 200, 0);
}

/// A resume from the stream while the topic keeps going (a publisher on another thread):
/// every message exactly once across the stream's part, the ring's and the switch to live.
#[test]
fn deep_history_resumes_while_the_topic_keeps_going() {
    let nats = Nats::start_js();
    let s = deep_host(&nats, 10, &[]);
    let epoch = cut_off_after(&nats, &s, 2000, 100);
    let addr = s.addr;
    let publisher = std::thread::spawn(move || publish_range(addr, "x", 2001, 5001, false, "deep"));
    let (mut r, _) = s.ws(&format!("/ws/x?seq=1&since=x:100&epoch={epoch}"));
    assert_eq!(notice(&mut r, "x"), (epoch, 100, None));
    expect_range(&mut r, 101, 5000, 0);
    publisher.join().unwrap();
    assert!(counter(&s, "deep_messages") >= 1890);
}
