//! `room`: N clients on `/room/<topic>`, each sends M messages, every client should receive
//! all N*M (its own included when the server echoes to the sender, which is reported).

use crate::common::{self, CommonArgs};
use crate::dial::{Target, WsConn};
use crate::report::{self, Meter};
use crate::scan::{Scanner, Stamp, STAMP_LEN};
use crate::seqcheck::SeqTrack;
use crate::{clock, process, recv, workers};
use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use serde_json::json;
use shardcast_proto::encode::encode_client_frame;
use shardcast_proto::frame::OpCode;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `room` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RoomArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Clients in the room.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 1)]
    messages: u32,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Upper bound on the sending and receiving phase, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// End early once no delivery arrived for this long after all sends, ms.
    #[arg(long, default_value_t = 1000)]
    quiet_ms: u64,
    /// Wait after the last client connected before sending, ms.
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
}

struct Shared {
    clients: usize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    go: AtomicBool,
    go_ns: AtomicU64,
    writers_done: AtomicUsize,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct ClientStats {
    received: u64,
    self_received: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    end: Option<String>,
}

/// Runs the scenario and prints its result.
pub fn run(args: RoomArgs) -> Result<(), String> {
    if args.size < STAMP_LEN {
        return Err(format!("--size must be at least {STAMP_LEN}"));
    }
    let target = args.common.target()?;
    let cpus = args.common.cpus()?;
    let sh = Arc::new(Shared {
        clients: args.clients,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        go_ns: AtomicU64::new(0),
        writers_done: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let n = cpus.len();
    let (a, s) = (args.clone(), sh.clone());
    let outs = workers::run(&cpus, move |w| {
        worker(w, n, a.clone(), target.clone(), s.clone())
    });
    let mut clients = Vec::new();
    let mut window = None;
    for (c, win) in outs {
        clients.extend(c);
        window = window.or(win);
    }
    let w = window.ok_or("no measurement window")?;
    let connected = sh.connected.load(Ordering::Acquire) as u64;
    let sent = connected * u64::from(args.messages);
    let delivered: u64 = clients.iter().map(|c| c.received).sum();
    let self_echo = clients.iter().any(|c| c.self_received > 0);
    let expected = if self_echo {
        connected * sent
    } else {
        connected * (sent - u64::from(args.messages))
    };
    let active_s = sh
        .last_delivery_ns
        .load(Ordering::Acquire)
        .saturating_sub(sh.go_ns.load(Ordering::Acquire)) as f64
        / 1e9;
    let per = |f: fn(&report::CpuUse) -> u64| {
        w.server_cpu.map(|s| f(&s) as f64 / delivered.max(1) as f64)
    };
    let lost: u64 = clients.iter().map(|c| c.lost).sum();
    let dup: u64 = clients.iter().map(|c| c.duplicated).sum();
    let reord: u64 = clients.iter().map(|c| c.reordered).sum();
    let ended: Vec<&String> = clients.iter().filter_map(|c| c.end.as_ref()).collect();
    let result = json!({
        "scenario": "room",
        "url": args.common.url,
        "server_pid": args.common.server_pid,
        "clients": args.clients,
        "clients_connected": connected,
        "connect_failures": sh.failed.load(Ordering::Acquire),
        "messages_per_client": args.messages,
        "message_size": args.size,
        "messages_sent": sent,
        "self_echo": self_echo,
        "writers_done": sh.writers_done.load(Ordering::Acquire),
        "expected_deliveries": expected,
        "deliveries": delivered,
        "total_time_s": active_s,
        "deliveries_per_s": delivered as f64 / active_s.max(1e-9),
        "lost": lost,
        "duplicated": dup,
        "reordered": reord,
        "clients_ended_early": ended.len(),
        "first_end_reason": ended.first(),
        "server_cpu_us_per_delivery": per(|c| c.user_us + c.sys_us),
        "server_user_us_per_delivery": per(|c| c.user_us),
        "server_sys_us_per_delivery": per(|c| c.sys_us),
        "client_bound": w.client_bound,
        "window_measured": w,
    });
    eprintln!(
        "room N={} M={}: {} deliveries in {:.3}s = {:.0}/s (expected {}, lost {}, dup {}, \
         reordered {}); {}",
        args.clients,
        args.messages,
        delivered,
        active_s,
        delivered as f64 / active_s.max(1e-9),
        expected,
        lost,
        dup,
        reord,
        report::cpu_line(&w)
    );
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    if connected == 0 {
        return Err("no client connected".into());
    }
    Ok(())
}

async fn worker(
    w: usize,
    n_workers: usize,
    args: RoomArgs,
    target: Target,
    sh: Arc<Shared>,
) -> (Vec<ClientStats>, Option<report::Window>) {
    let c = &args.common;
    let deadline = Instant::now() + Duration::from_secs_f64(c.timeout);
    let path = format!("/room/{}", c.topic);
    let conns = common::connect_share(
        &target,
        c,
        &path,
        args.clients,
        w,
        n_workers,
        &sh.connected,
        &sh.failed,
    )
    .await;
    let mut fds = Vec::new();
    let mut tasks = Vec::new();
    for (id, conn) in conns {
        // A duplicate, so the number cannot be reused before the shutdown below; without a
        // descriptor to spare, the bare number (the receiver must be stopped either way).
        let raw = conn.stream.as_raw_fd();
        fds.push(process::dup_socket(raw).map_err(|_| raw));
        tasks.push(monoio::spawn(client(id, conn, args.clone(), sh.clone())));
    }
    let everyone =
        || sh.connected.load(Ordering::Acquire) + sh.failed.load(Ordering::Acquire) >= sh.clients;
    let left = deadline.saturating_duration_since(Instant::now());
    let ready = common::wait_until(left, everyone).await;
    let mut window = None;
    if w == 0 {
        if ready {
            monoio::time::sleep(Duration::from_millis(args.settle_ms)).await;
            window = Some(coordinate(&args, &sh, deadline).await);
        }
        sh.stop.store(true, Ordering::Release);
    }
    while !sh.stop.load(Ordering::Acquire) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    fds.iter().for_each(|fd| {
        process::shutdown_socket(fd.as_ref().map_or_else(|&raw| raw, |d| d.as_raw_fd()))
    });
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await);
    }
    (out, window)
}

/// Starts the sends, then ends the run when every delivery arrived, when deliveries stopped
/// for `quiet_ms` after all sends, or at the duration bound.
async fn coordinate(args: &RoomArgs, sh: &Shared, deadline: Instant) -> report::Window {
    let meter = Meter::start(args.common.server_pid);
    let start = Instant::now();
    sh.go_ns.store(clock::now_ns(), Ordering::Release);
    sh.go.store(true, Ordering::Release);
    let connected = sh.connected.load(Ordering::Acquire) as u64;
    let all = connected * connected * u64::from(args.messages);
    let end = (start + Duration::from_secs_f64(args.duration)).min(deadline);
    let mut last = (0u64, Instant::now());
    loop {
        monoio::time::sleep(Duration::from_millis(2)).await;
        let d = sh.delivered.load(Ordering::Acquire);
        let now = Instant::now();
        if d != last.0 {
            last = (d, now);
        }
        let sends_done = sh.writers_done.load(Ordering::Acquire) >= connected as usize;
        let quiet = now - last.1 >= Duration::from_millis(args.quiet_ms);
        if d >= all || (sends_done && quiet) || now >= end {
            break;
        }
    }
    let cores = args.common.cpus().map_or(1, |c| c.len());
    meter.finish(cores)
}

async fn client(id: u64, conn: WsConn, args: RoomArgs, sh: Arc<Shared>) -> ClientStats {
    let WsConn {
        stream, leftover, ..
    } = conn;
    let (mut rd, mut wr) = stream.into_split();
    let writer_sh = sh.clone();
    let (size, count) = (args.size, args.messages);
    let writer = monoio::spawn(async move {
        while !writer_sh.go.load(Ordering::Acquire) {
            if writer_sh.stop.load(Ordering::Acquire) {
                return wr;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        // All of this client's messages in as few writes as fit in 64 KiB each.
        let mut payload = vec![0u8; size];
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut mask = (id as u32).wrapping_mul(0x9E37_79B9) | 1;
        let mut seq = 0u32;
        while seq < count {
            out.clear();
            let now = clock::now_ns();
            while seq < count && out.len() + size + 14 <= 64 * 1024 {
                Stamp {
                    sent_ns: now,
                    seq: id << 32 | u64::from(seq),
                }
                .write(&mut payload);
                mask ^= mask << 13;
                mask ^= mask >> 17;
                mask ^= mask << 5;
                encode_client_frame(&mut out, OpCode::Binary, true, &payload, mask.to_le_bytes());
                seq += 1;
            }
            let (res, back) = wr.write_all(out).await;
            out = back;
            if res.is_err() {
                break;
            }
        }
        writer_sh.writers_done.fetch_add(1, Ordering::AcqRel);
        // Handed back, not dropped: dropping monoio's write half shuts the socket down for
        // writing, and servers (ws among them) close a connection on the client's FIN.
        wr
    });

    let mut tracks = vec![SeqTrack::default(); sh.clients];
    let mut st = ClientStats::default();
    let mut scanner = Scanner::default();
    st.end = recv::receive(&mut rd, leftover, &mut scanner, &sh.stop, |sc, buf| {
        let before = st.received;
        let scanned = sc.scan(buf, |s: Stamp| {
            let publisher = (s.seq >> 32) as usize;
            if publisher == id as usize {
                st.self_received += 1;
            }
            if let Some(t) = tracks.get_mut(publisher) {
                t.observe(s.seq as u32);
            }
            st.received += 1;
        });
        if st.received > before {
            sh.delivered
                .fetch_add(st.received - before, Ordering::AcqRel);
            sh.last_delivery_ns
                .fetch_max(clock::now_ns(), Ordering::AcqRel);
        }
        scanned
    })
    .await;
    let write_half = writer.await;
    drop(write_half);
    // Only clients that connected sent anything; their own stream counts only when echoed.
    let connected = sh.connected.load(Ordering::Acquire);
    for (p, t) in tracks.iter().enumerate().take(connected) {
        if p == id as usize && !t.seen_any() {
            continue;
        }
        st.lost += t.lost(u64::from(args.messages));
        st.duplicated += t.duplicated;
        st.reordered += t.reordered;
    }
    st
}
