//! `echo`: N connections on `/echo`, each keeping K messages in flight (it sends K, then one
//! more for every echo it gets back) for a fixed time: echoed messages per second, round-trip
//! latency, and the server's CPU per echoed message (so a client-bound run still tells).

use crate::common::{self, CommonArgs};
use crate::dial::{Target, WsConn};
use crate::report::{self, Meter};
use crate::scan::{Scanner, Stamp, STAMP_LEN};
use crate::{clock, process, workers};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use serde_json::json;
use shardcast_proto::encode::encode_client_frame;
use shardcast_proto::frame::OpCode;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `echo` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Measured time, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Wait after the last connection before measuring, ms (the echo loop runs meanwhile).
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
}

struct Shared {
    total: usize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    go: AtomicBool,
    stop: AtomicBool,
    echoed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// Latency is recorded only inside the measured window.
    measuring: AtomicBool,
}

/// Runs the scenario and prints its result.
pub fn run(args: EchoArgs) -> Result<(), String> {
    if args.size < STAMP_LEN {
        return Err(format!("--size must be at least {STAMP_LEN}"));
    }
    let target = args.common.target()?;
    let cpus = args.common.cpus()?;
    let sh = Arc::new(Shared {
        total: args.connections,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        echoed: AtomicU64::new(0),
        latency: Mutex::new(report::latency_histogram()),
        measuring: AtomicBool::new(false),
    });
    let n = cpus.len();
    let (a, s) = (args.clone(), sh.clone());
    let outs = workers::run(&cpus, move |w| {
        worker(w, n, a.clone(), target.clone(), s.clone())
    });
    let (window, echoed) = outs
        .into_iter()
        .find_map(|o| o)
        .ok_or("not every connection was established in time")?;
    let connected = sh.connected.load(Ordering::Acquire);
    let secs = window.wall_s.max(1e-9);
    let per = |f: fn(&report::CpuUse) -> u64| {
        window
            .server_cpu
            .map(|s| f(&s) as f64 / echoed.max(1) as f64)
    };
    let latency = report::Latency::from_hist(&sh.latency.lock().expect("latency lock"));
    let result = json!({
        "scenario": "echo",
        "url": args.common.url,
        "server_pid": args.common.server_pid,
        "connections": args.connections,
        "connected": connected,
        "connect_failures": sh.failed.load(Ordering::Acquire),
        "in_flight": args.in_flight,
        "message_size": args.size,
        "echoed": echoed,
        "echoes_per_s": echoed as f64 / secs,
        "latency": latency,
        "server_cpu_us_per_echo": per(|c| c.user_us + c.sys_us),
        "server_user_us_per_echo": per(|c| c.user_us),
        "server_sys_us_per_echo": per(|c| c.sys_us),
        "client_bound": window.client_bound,
        "window_measured": window,
    });
    eprintln!(
        "echo {} conns x {} in flight, {} B: {} echoes in {:.2}s = {:.0}/s; {}",
        args.connections,
        args.in_flight,
        args.size,
        echoed,
        secs,
        echoed as f64 / secs,
        report::cpu_line(&window)
    );
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    if connected == 0 {
        return Err("no connection succeeded".into());
    }
    Ok(())
}

async fn worker(
    w: usize,
    n: usize,
    args: EchoArgs,
    target: Target,
    sh: Arc<Shared>,
) -> Option<(report::Window, u64)> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.common.timeout);
    let ids = common::share(args.connections, w, n);
    let (conns, failed) = common::connect_all(
        &target,
        ids,
        "/echo",
        args.common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
    sh.connected.fetch_add(conns.len(), Ordering::AcqRel);
    sh.failed.fetch_add(failed, Ordering::AcqRel);
    let mut fds = Vec::new();
    let mut tasks = Vec::new();
    for (id, conn) in conns {
        let raw = conn.stream.as_raw_fd();
        fds.push(process::dup_socket(raw).map_err(|_| raw));
        tasks.push(monoio::spawn(client(id, conn, args.clone(), sh.clone())));
    }
    let all =
        || sh.connected.load(Ordering::Acquire) + sh.failed.load(Ordering::Acquire) >= sh.total;
    let left = deadline.saturating_duration_since(Instant::now());
    let ready = common::wait_until(left, all).await;
    let mut out = None;
    if w == 0 {
        if ready {
            sh.go.store(true, Ordering::Release);
            monoio::time::sleep(Duration::from_millis(args.settle_ms)).await;
            let meter = Meter::start(args.common.server_pid);
            let before = sh.echoed.load(Ordering::Acquire);
            sh.measuring.store(true, Ordering::Release);
            monoio::time::sleep(Duration::from_secs_f64(args.duration)).await;
            let echoed = sh.echoed.load(Ordering::Acquire) - before;
            sh.measuring.store(false, Ordering::Release);
            let cores = args.common.cpus().map_or(1, |c| c.len());
            out = Some((meter.finish(cores), echoed));
        }
        sh.stop.store(true, Ordering::Release);
    }
    while !sh.stop.load(Ordering::Acquire) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    fds.iter().for_each(|fd| {
        process::shutdown_socket(fd.as_ref().map_or_else(|&raw| raw, |d| d.as_raw_fd()))
    });
    for t in tasks {
        t.await;
    }
    out
}

/// Sends `in_flight` messages, then one more per echo, until stopped.
async fn client(id: u64, conn: WsConn, args: EchoArgs, sh: Arc<Shared>) {
    let WsConn {
        mut stream,
        leftover,
        ..
    } = conn;
    while !sh.go.load(Ordering::Acquire) {
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut seq = 0u64;
    let mut mask = (id as u32).wrapping_mul(0x9E37_79B9) | 1;
    let mut payload = vec![0u8; args.size];
    let mut frames = |k: usize, out: &mut BytesMut| {
        let now = clock::now_ns();
        for _ in 0..k {
            Stamp {
                sent_ns: now,
                seq: id << 32 | seq,
            }
            .write(&mut payload);
            seq += 1;
            mask ^= mask << 13;
            mask ^= mask >> 17;
            mask ^= mask << 5;
            encode_client_frame(out, OpCode::Binary, true, &payload, mask.to_le_bytes());
        }
    };
    let mut out = BytesMut::new();
    frames(args.in_flight, &mut out);
    if stream.write_all(out.split().freeze()).await.0.is_err() {
        return;
    }
    let mut scanner = Scanner::default();
    let mut buf = leftover;
    buf.reserve(READ_BUF);
    loop {
        // Every echo found in one read is answered with one write.
        let mut echoes = 0usize;
        let measuring = sh.measuring.load(Ordering::Relaxed);
        let scanned = scanner.scan(&buf, |s: Stamp| {
            echoes += 1;
            if measuring {
                let rtt_us = clock::now_ns().saturating_sub(s.sent_ns) / 1000;
                let _ = sh
                    .latency
                    .lock()
                    .expect("latency lock")
                    .record(rtt_us.max(1));
            }
        });
        match scanned {
            Ok(used) => {
                buf.drain(..used);
            }
            Err(_) => return,
        }
        sh.echoed.fetch_add(echoes as u64, Ordering::Relaxed);
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        frames(echoes, &mut out);
        out.extend_from_slice(&scanner.pongs.split());
        if !out.is_empty() && stream.write_all(out.split().freeze()).await.0.is_err() {
            return;
        }
        if buf.capacity() - buf.len() < READ_BUF / 2 {
            buf.reserve(READ_BUF);
        }
        let len = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Free buffer space kept for each read.
const READ_BUF: usize = 16 * 1024;
