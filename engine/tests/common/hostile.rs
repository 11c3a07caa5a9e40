//! Helpers for the attack suite: what the server process holds (RSS, descriptors, kernel TCP
//! sockets and memory), timestamped publishing, and well-behaved subscribers that record what
//! they got and how late.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::Message;

use super::{next, Server, Ws, TIMEOUT};

/// Resident set size of `pid` in bytes (VmRSS).
pub fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Open descriptors of `pid`.
pub fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Kernel TCP memory of the whole host (`/proc/net/sockstat` TCP `mem`, pages × page size).
pub fn kernel_tcp_mem() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = s.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut it = line.split_whitespace();
    let pages: u64 = loop {
        match it.next() {
            Some("mem") => break it.next().unwrap().parse().unwrap(),
            Some(_) => {}
            None => panic!("no TCP mem in {line}"),
        }
    };
    // SAFETY: sysconf has no memory arguments.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// One TCP socket of this host's network namespace (`/proc/net/tcp`, `/proc/net/tcp6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    /// Local port.
    pub local: u16,
    /// Remote port.
    pub remote: u16,
    /// Kernel TCP state (1 = ESTABLISHED, 4 = FIN_WAIT1, 10 = LISTEN, ...).
    pub state: u8,
    /// Bytes in the send queue.
    pub tx_queue: u64,
    /// Bytes in the receive queue (not read by the application yet).
    pub rx_queue: u64,
    /// Inode of the socket; 0 once no process holds it (closed, the kernel finishing it).
    pub inode: u64,
}

impl Socket {
    /// Released by its process and holding no data: closed (the kernel may still show it in
    /// FIN_WAIT2 or TIME_WAIT until the peer closes, owning nothing), or reset and gone.
    pub fn released(&self) -> bool {
        self.inode == 0 && self.tx_queue == 0 && self.rx_queue == 0
    }
}

/// Every TCP socket of the namespace.
pub fn sockets() -> Vec<Socket> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
            let (tx, rx) = f[4].split_once(':').unwrap();
            out.push(Socket {
                local: port(f[1]),
                remote: port(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap(),
                tx_queue: u64::from_str_radix(tx, 16).unwrap(),
                rx_queue: u64::from_str_radix(rx, 16).unwrap(),
                inode: f[9].parse().unwrap(),
            });
        }
    }
    out
}

/// The server's end of the connection from client port `client` to server port `server`.
pub fn server_end(server: u16, client: u16) -> Option<Socket> {
    sockets()
        .into_iter()
        .find(|s| s.local == server && s.remote == client)
}

/// Poll until the server's end of every connection from `clients` is gone or released (no
/// descriptor, no data held: [`Socket::released`]), at most `limit`; returns how long it took.
pub fn wait_server_ends_gone(server: u16, clients: &[u16], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left: Vec<Socket> = sockets()
            .into_iter()
            .filter(|s| s.local == server && clients.contains(&s.remote) && !s.released())
            .collect();
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "server still holds {} of {} sockets after {limit:?}: {left:?}",
            left.len(),
            clients.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Local port of a client socket.
pub fn port_of(tcp: &TcpStream) -> u16 {
    tcp.local_addr().unwrap().port()
}

/// Nanoseconds since a process-wide epoch (publishers stamp messages with it).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least 16) carrying `seq` and the time it was made.
pub fn stamped(seq: u64, size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size.max(16)];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m[8..16].copy_from_slice(&now_ns().to_be_bytes());
    m
}

/// Messages at the start of a run whose lateness is not counted: the publisher's and the
/// readers' threads are still starting (measured ~50 ms on a loaded host before any attack).
pub const WARM_UP: u64 = 10;

/// What a good subscriber saw: sequence numbers in arrival order and the worst lateness (past
/// [`WARM_UP`]).
#[derive(Debug, Default)]
pub struct Seen {
    /// Sequence numbers, in order of arrival.
    pub seqs: Vec<u64>,
    /// Largest publish → receive delay of any message.
    pub max_delay: Duration,
}

/// Well-behaved subscribers of one topic, each reading in its own thread.
pub struct GoodSubscribers {
    threads: Vec<JoinHandle<(Seen, Ws)>>,
}

impl GoodSubscribers {
    /// `n` tungstenite subscribers of `path`, alternating between shards 0 and 1 (subscribed
    /// and synced before this returns), each reading `expect` messages.
    pub fn start(server: &Server, path: &str, n: usize, expect: usize) -> GoodSubscribers {
        let threads = (0..n)
            .map(|i| {
                let mut ws: Ws = server.ws_on(path, i % 2);
                super::sync(&mut ws);
                std::thread::spawn(move || {
                    let mut seen = Seen::default();
                    ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
                    while seen.seqs.len() < expect {
                        let data = match next(&mut ws) {
                            Message::Close(f) => panic!("good subscriber closed: {f:?}"),
                            m => m.into_data(),
                        };
                        let now = now_ns();
                        let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
                        let at = u64::from_be_bytes(data[8..16].try_into().unwrap());
                        let delay = Duration::from_nanos(now.saturating_sub(at));
                        if seq >= WARM_UP {
                            seen.max_delay = seen.max_delay.max(delay);
                        }
                        seen.seqs.push(seq);
                    }
                    (seen, ws)
                })
            })
            .collect();
        GoodSubscribers { threads }
    }

    /// Wait for every subscriber; asserts each got `0..expect` in order with no message later
    /// than `stall`. Returns the connections, still open.
    pub fn assert_all(self, expect: u64, stall: Duration) -> Vec<Ws> {
        let mut open = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            let (seen, ws) = t.join().expect("good subscriber");
            open.push(ws);
            assert_eq!(
                seen.seqs,
                (0..expect).collect::<Vec<_>>(),
                "good subscriber {i} lost or reordered messages"
            );
            assert!(
                seen.max_delay < stall,
                "good subscriber {i} stalled {:?} (limit {stall:?})",
                seen.max_delay
            );
        }
        open
    }
}

/// Publish `n` stamped binary messages of `size` bytes to `/pub/<topic>` from a thread, one
/// every `every`; `stop` ends it early.
pub fn publish_paced(
    server: &Server,
    topic: &str,
    n: u64,
    size: usize,
    every: Duration,
) -> JoinHandle<Ws> {
    let mut p = server.ws(&format!("/pub/{topic}")).0;
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..n {
            let due = start + every * i as u32;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            p.send(Message::binary(stamped(i, size))).unwrap();
        }
        p.flush().unwrap();
        p
    })
}

/// A flag shared with a background attacker thread.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Tell the attacker to stop.
    pub fn set(&self) {
        self.0.store(true, SeqCst);
    }

    /// True once told to stop.
    pub fn is_set(&self) -> bool {
        self.0.load(SeqCst)
    }
}

/// RSS bound of the attack suite: `base` (the server before the attack) + the ceiling + a
/// per-connection allowance + slack. Asserts and returns the margin left.
pub fn assert_rss_within(pid: i32, base: u64, ceiling: u64, conns: u64, slack: u64) -> i64 {
    let now = rss(pid);
    let bound = base + ceiling + conns * PER_CONNECTION + slack;
    eprintln!(
        "RSS {now} = base {base} + {}; bound {bound} (margin {})",
        now as i64 - base as i64,
        bound as i64 - now as i64
    );
    assert!(
        now <= bound,
        "server RSS {now} over base {base} + ceiling {ceiling} + {conns} x {PER_CONNECTION} + slack {slack} = {bound}"
    );
    bound as i64 - now as i64
}

/// User-space bytes allowed per connection in the RSS bounds: an idle subscriber measures
/// ~1 KB (engine/tests/memory.rs); this allows a partly used read path and queue as well.
pub const PER_CONNECTION: u64 = 8 * 1024;

/// Poll until the server has read everything these clients sent (the server's ends hold
/// nothing unread and the clients' send queues are empty), at most `limit`.
pub fn wait_server_read_all(server: u16, clients: &[u16], limit: Duration) {
    let start = Instant::now();
    loop {
        let all = sockets();
        let pending: Vec<&Socket> = all
            .iter()
            .filter(|s| {
                (s.local == server && clients.contains(&s.remote) && s.rx_queue > 0)
                    || (s.remote == server && clients.contains(&s.local) && s.tx_queue > 0)
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "server has not read everything after {limit:?}: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A masked client frame with an empty payload (`op`: 0x9 ping, 0xA pong, ...).
pub fn empty_client_frame(op: u8) -> [u8; 6] {
    [0x80 | op, 0x80, 1, 2, 3, 4]
}

/// A masked client frame of `payload` (`fin` false: a fragment to be continued).
pub fn client_frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 | op } else { op }];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [1u8, 2, 3, 4];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
