//! `idle`: N idle subscribers; the server's memory before and after gives its cost per
//! subscribed connection. `--warmup` connections are opened (and held) first and "before" is
//! read after them, so what a server allocates once (buffer pools, the first chunk of its
//! connection table, allocator arenas) is not charged to the connections measured.

use crate::common::{self, CommonArgs};
use crate::dial::Target;
use crate::process::{self, Memory};
use crate::report::{self, Meter};
use crate::workers;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `idle` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Idle subscribed connections.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Time to hold them after the last one connected before reading memory, ms.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    /// Subscribed connections opened and held before the "before" reading (not counted): enough
    /// handshakes to touch every once-per-shard pool (shardcast's io_uring driver lends 256
    /// provided receive buffers, touched in ring order).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
}

struct Shared {
    total: usize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    before: Mutex<Option<Memory>>,
    after: Mutex<Option<Memory>>,
    release: AtomicBool,
    warm: AtomicUsize,
    measured: AtomicBool,
}

/// Runs the scenario and prints its result.
pub fn run(args: IdleArgs) -> Result<(), String> {
    let pid = args
        .common
        .server_pid
        .ok_or("idle needs --server-pid (it reads the server's memory)")?;
    let target = args.common.target()?;
    let cpus = args.common.cpus()?;
    process::proc_memory(pid).map_err(|e| format!("server memory: {e}"))?;
    let sh = Arc::new(Shared {
        total: args.connections,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        before: Mutex::new(None),
        after: Mutex::new(None),
        release: AtomicBool::new(false),
        warm: AtomicUsize::new(0),
        measured: AtomicBool::new(false),
    });
    let meter = Meter::start(Some(pid));
    let n = cpus.len();
    let (a, s) = (args.clone(), sh.clone());
    workers::run(&cpus, move |w| {
        worker(w, n, a.clone(), target.clone(), s.clone(), pid)
    });
    let window = meter.finish(n);
    let before = sh
        .before
        .lock()
        .expect("memory lock")
        .ok_or("warm-up connections were not all settled in time")?;
    let after = sh
        .after
        .lock()
        .expect("memory lock")
        .ok_or("connections were not all settled in time")?;
    let connected = sh.connected.load(Ordering::Acquire);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / connected.max(1) as f64;
    let result = json!({
        "scenario": "idle",
        "url": args.common.url,
        "server_pid": pid,
        "connections": args.connections,
        "connected": connected,
        "failed": sh.failed.load(Ordering::Acquire),
        "server_memory_before": before,
        "server_memory_after": after,
        "warmup_connections": args.warmup,
        "rss_delta_bytes": after.rss as i64 - before.rss as i64,
        "bytes_per_connection": per(after.rss, before.rss),
        "bytes_per_subscribed_connection": per(after.rss, before.rss),
        "anon_bytes_per_connection": per(after.rss_anon, before.rss_anon),
        "client_bound": window.client_bound,
        "window_measured": window,
    });
    eprintln!(
        "idle {}: {} connected; server VmRSS {:.1} -> {:.1} MiB = {:.0} B/connection (anon {:.0}); {}",
        args.connections,
        connected,
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        per(after.rss, before.rss),
        per(after.rss_anon, before.rss_anon),
        report::cpu_line(&window)
    );
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    if connected == 0 {
        return Err("no connection succeeded".into());
    }
    Ok(())
}

async fn worker(w: usize, n: usize, args: IdleArgs, target: Target, sh: Arc<Shared>, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs_f64(args.common.timeout);
    let path = format!("/ws/{}", args.common.topic);
    // Warm-up first (ids after the measured ones), held until the end.
    let warm_ids: Vec<u64> = common::share(args.warmup, w, n)
        .into_iter()
        .map(|i| i + args.connections as u64)
        .collect();
    let (warm, warm_failed) = common::connect_all(
        &target,
        warm_ids,
        &path,
        args.common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
    sh.warm
        .fetch_add(warm.len() + warm_failed, Ordering::AcqRel);
    let warm_done = || sh.warm.load(Ordering::Acquire) >= args.warmup;
    common::wait_until(
        deadline.saturating_duration_since(Instant::now()),
        warm_done,
    )
    .await;
    if w == 0 {
        monoio::time::sleep(Duration::from_millis(args.hold_ms)).await;
        *sh.before.lock().expect("memory lock") = process::proc_memory(pid).ok();
        sh.measured.store(true, Ordering::Release);
    }
    let measured = || sh.measured.load(Ordering::Acquire);
    common::wait_until(deadline.saturating_duration_since(Instant::now()), measured).await;
    let ids = common::share(args.connections, w, n);
    let (conns, failed) = common::connect_all(
        &target,
        ids,
        &path,
        args.common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
    sh.connected.fetch_add(conns.len(), Ordering::AcqRel);
    sh.failed.fetch_add(failed, Ordering::AcqRel);
    let left = deadline.saturating_duration_since(Instant::now());
    let all =
        || sh.connected.load(Ordering::Acquire) + sh.failed.load(Ordering::Acquire) >= sh.total;
    if w == 0 {
        if common::wait_until(left, all).await {
            monoio::time::sleep(Duration::from_millis(args.hold_ms)).await;
            *sh.after.lock().expect("memory lock") = process::proc_memory(pid).ok();
        }
        sh.release.store(true, Ordering::Release);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    common::wait_until(left, || sh.release.load(Ordering::Acquire)).await;
    drop(conns);
    drop(warm);
}
