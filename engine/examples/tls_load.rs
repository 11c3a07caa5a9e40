//! wss:// against ws:// in one run, on the real binary: handshakes per second and server CPU per
//! handshake (full TLS 1.3 handshakes, and resumed from a ticket), server CPU per delivery for a
//! broadcast of 64 B messages at ~100k deliveries/s, and server RSS per idle subscriber.
//! Interleaved rounds (ws, wss, ws, wss …), medians; the server pinned to SERVER_CPU, this
//! generator to GEN_CPU; server CPU from /proc/PID/stat (utime + stime).
//!
//! ```text
//! cargo build --release -p shardcast --example tls_load
//! target/release/examples/tls_load target/release/shardcast [ROUNDS] [SERVER_CPU] [GEN_CPU]
//! ```
//! Extra server flags (e.g. to force epoll) go through the environment, as for the binary.
//! Generates a test CA and certificate at start (rcgen, a temp dir).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const UPGRADE: &str = "HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &str, cpu: usize, tls: Option<&(String, String)>) -> Server {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), bin])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--shards",
            "1",
        ])
        .args(["--log", "error"]);
    if let Some((cert, key)) = tls {
        cmd.args(["--tls-cert", cert, "--tls-key", key]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start server");
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .strip_prefix("shardcast listening on ")
        .expect("listening line")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Server { child, addr }
}

/// The taskset child's pid is the server's (taskset execs it).
fn cpu_seconds(server: &Server) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name and state.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connect, upgrade on `path`, read the 101 head.
fn ws(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>, path: &str) -> Stream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = match tls {
        None => Stream::Plain(tcp),
        Some(c) => {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(c.clone(), name).unwrap();
            Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    };
    s.write_all(format!("GET {path} {UPGRADE}").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the upgrade");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

fn client_config(ca: &CertificateDer<'static>, resume: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

/// `n` handshakes (TCP + TLS + upgrade) from `threads` threads; (per second, server CPU µs each).
fn handshakes(server: &Server, tls: Option<Arc<ClientConfig>>, n: u64, threads: u64) -> (f64, f64) {
    // One to warm up (and, with resumption, to get a ticket).
    drop(ws(server.addr, tls.as_ref(), "/ws/hs"));
    let done = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu_seconds(server), Instant::now());
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (done, tls, addr) = (done.clone(), tls.clone(), server.addr);
            s.spawn(move || {
                while done.fetch_add(1, Ordering::Relaxed) < n {
                    drop(ws(addr, tls.as_ref(), "/ws/hs"));
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server) - cpu0;
    (n as f64 / secs, cpu * 1e6 / n as f64)
}

/// Count complete data frames in `buf`, keeping a partial one.
fn count_frames(buf: &mut Vec<u8>) -> u64 {
    let (mut at, mut n) = (0, 0);
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let (hdr, len) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (4, u16::from_be_bytes([rest[2], rest[3]]) as usize),
            126 | 127 => break,
            l => (2, l as usize),
        };
        if rest.len() < hdr + len {
            break;
        }
        if matches!(rest[0] & 0x0f, 1 | 2) {
            n += 1;
        }
        at += hdr + len;
    }
    buf.drain(..at);
    n
}

/// `subs` subscribers, `rate` messages/s of 64 B for `secs`: (deliveries/s, server CPU µs per
/// delivery). Every subscriber must get every message.
fn deliveries(
    server: &Server,
    tls: Option<Arc<ClientConfig>>,
    subs: usize,
    rate: u64,
    secs: u64,
) -> (f64, f64) {
    let mut conns: Vec<Stream> = (0..subs)
        .map(|_| ws(server.addr, tls.as_ref(), "/ws/fan"))
        .collect();
    let mut publisher = ws(server.addr, tls.as_ref(), "/pub/fan");
    for c in &mut conns {
        match c {
            Stream::Plain(s) => s.set_nonblocking(true).unwrap(),
            Stream::Tls(s) => s.sock.set_nonblocking(true).unwrap(),
        }
    }
    let total = rate * secs;
    let want = total * subs as u64;
    let got = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu_seconds(server), Instant::now());
    std::thread::scope(|s| {
        let got2 = got.clone();
        s.spawn(move || {
            let mut frame = vec![0x81u8, 0x80 | 64, 0, 0, 0, 0];
            frame.extend_from_slice(&[b'x'; 64]);
            for i in 0..total {
                let at = t0 + Duration::from_micros(i * 1_000_000 / rate);
                if let Some(d) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                publisher.write_all(&frame).unwrap();
            }
            publisher.flush().unwrap();
            // Keep the publisher open until every delivery arrived.
            while got2.load(Ordering::Relaxed) < want
                && t0.elapsed() < Duration::from_secs(secs + 20)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
        let mut plain = vec![0u8; 64 * 1024];
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: match c {
                    Stream::Plain(s) => s.as_raw_fd(),
                    Stream::Tls(s) => s.sock.as_raw_fd(),
                },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut n = 0;
        while n < want && t0.elapsed() < Duration::from_secs(secs + 20) {
            // SAFETY: `fds` is a valid array of pollfd for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, 100) };
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                loop {
                    // Some(k): k plaintext bytes in `plain`; None: the server closed.
                    let r: io::Result<Option<usize>> = match &mut conns[i] {
                        Stream::Plain(s) => s.read(&mut plain).map(|k| (k > 0).then_some(k)),
                        Stream::Tls(s) => match s.conn.read_tls(&mut s.sock) {
                            Ok(0) => Ok(None),
                            Ok(_) => {
                                s.conn.process_new_packets().expect("TLS");
                                let mut k = 0;
                                while k < plain.len() {
                                    match s.conn.reader().read(&mut plain[k..]) {
                                        Ok(m) if m > 0 => k += m,
                                        _ => break,
                                    }
                                }
                                Ok(Some(k))
                            }
                            Err(e) => Err(e),
                        },
                    };
                    match r {
                        Ok(None) => panic!("subscriber closed"),
                        Ok(Some(k)) => {
                            bufs[i].extend_from_slice(&plain[..k]);
                            n += count_frames(&mut bufs[i]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
            got.store(n, Ordering::Relaxed);
        }
        got.store(n, Ordering::Relaxed);
    });
    let secs_taken = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server) - cpu0;
    let n = got.load(Ordering::Relaxed);
    assert_eq!(n, want, "every subscriber gets every message");
    (n as f64 / secs_taken, cpu * 1e6 / n as f64)
}

/// Server RSS per idle subscriber: `n` subscribers after `warm` held ones.
fn idle(server: &Server, tls: Option<Arc<ClientConfig>>, warm: usize, n: usize) -> f64 {
    let _warm: Vec<Stream> = (0..warm)
        .map(|_| ws(server.addr, tls.as_ref(), "/ws/idle"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(server);
    let _held: Vec<Stream> = (0..n)
        .map(|_| ws(server.addr, tls.as_ref(), "/ws/idle"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    (rss(server) - before) as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .expect("usage: tls_load SHARDCAST_BIN [ROUNDS] [SERVER_CPU] [GEN_CPU]");
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let server_cpu: usize = args.get(3).map_or(0, |s| s.parse().unwrap());
    let gen_cpu: usize = args.get(4).map_or(1, |s| s.parse().unwrap());
    core_affinity::set_for_current(core_affinity::CoreId { id: gen_cpu });
    // A test CA and a P-256 leaf (what docs/DEPENDENCIES.md measured ring with).
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tls_load.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, keyf) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem() + &ca_cert.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let files = (cert.display().to_string(), keyf.display().to_string());
    let full = client_config(ca_cert.der(), false);
    let resumed = client_config(ca_cert.der(), true);

    type Kind<'a> = (
        &'a str,
        Option<&'a (String, String)>,
        Option<Arc<ClientConfig>>,
    );
    let kinds: [Kind; 3] = [
        ("ws", None, None),
        ("wss", Some(&files), Some(full)),
        ("wss-resumed", Some(&files), Some(resumed)),
    ];
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: String, v: f64| match rows.iter_mut().find(|r| r.0 == name) {
        Some(r) => r.1.push(v),
        None => rows.push((name, vec![v])),
    };
    for round in 0..rounds {
        for (kind, files, client) in &kinds {
            let server = start(bin, server_cpu, *files);
            let (hs, hs_cpu) = handshakes(&server, client.clone(), 2000, 4);
            push(format!("{kind} handshakes/s"), hs);
            push(format!("{kind} server CPU µs per handshake"), hs_cpu);
            if *kind != "wss-resumed" {
                let (d, d_cpu) = deliveries(&server, client.clone(), 500, 200, 3);
                push(
                    format!("{kind} deliveries/s (500 subs × 200 msg/s, 64 B)"),
                    d,
                );
                push(format!("{kind} server CPU µs per delivery"), d_cpu);
                let bytes = idle(&server, client.clone(), 500, 2000);
                push(format!("{kind} server RSS B per idle subscriber"), bytes);
            }
            eprintln!("round {round} {kind} done");
        }
    }
    println!("| measure | median of {rounds} | rounds |\n|---|---:|---|");
    for (name, v) in rows {
        let all: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!("| {name} | {:.2} | {} |", median(v.clone()), all.join(", "));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
