//! `connect`: a connection storm. K upgrades, C in flight at a time; connections stay open
//! until the storm ends (like clients reconnecting after a restart).

use crate::common::{self, CommonArgs};
use crate::dial::{self, Target, WsConn};
use crate::report::{self, Latency, Meter};
use crate::{clock, workers};
use hdrhistogram::Histogram;
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `connect` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 5000)]
    connections: u64,
    /// Handshakes in flight at once (over all generator threads).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Per-connection limit (TCP connect + upgrade), seconds.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    shards: BTreeMap<String, u64>,
    /// wss://: handshakes that resumed a session.
    resumed: u64,
    held: Vec<WsConn>,
}

/// Runs the scenario and prints its result.
pub fn run(args: ConnectArgs) -> Result<(), String> {
    let target = args.common.target()?;
    let target_tls = target.tls.is_some();
    let cpus = args.common.cpus()?;
    let next = Arc::new(AtomicU64::new(0));
    let last_ns = Arc::new(AtomicU64::new(0));
    let n = cpus.len();
    let meter = Meter::start(args.common.server_pid);
    let start_ns = clock::now_ns();
    let (a, nx, ln) = (args.clone(), next.clone(), last_ns.clone());
    let outs = workers::run(&cpus, move |w| {
        worker(w, n, a.clone(), target.clone(), nx.clone(), ln.clone())
    });
    let window = meter.finish(n);
    let mut hist = report::latency_histogram();
    let (mut ok, mut failed, mut resumed) = (0u64, 0u64, 0u64);
    let mut shards = BTreeMap::<String, u64>::new();
    for (h, t) in outs {
        hist.add(&h).map_err(|e| e.to_string())?;
        ok += t.0;
        failed += t.1;
        resumed += t.3;
        for (k, v) in t.2 {
            *shards.entry(k).or_default() += v;
        }
    }
    let storm_s = last_ns.load(Ordering::Acquire).saturating_sub(start_ns) as f64 / 1e9;
    let lat = Latency::from_hist(&hist);
    let server_us = window
        .server_cpu
        .map(|s| s.total_us() as f64 / ok.max(1) as f64);
    let result = json!({
        "scenario": "connect",
        "url": args.common.url,
        "server_pid": args.common.server_pid,
        "connections": args.connections,
        "concurrency": args.concurrency,
        "succeeded": ok,
        "failed": failed,
        "success_rate": ok as f64 / args.connections.max(1) as f64,
        "storm_time_s": storm_s,
        "handshakes_per_s": ok as f64 / storm_s.max(1e-9),
        "handshake_latency": lat,
        "server_cpu_us_per_handshake": server_us,
        "shards": shards,
        "tls": target_tls,
        "tls_resume_offered": args.common.resume && target_tls,
        "tls_resumed": target_tls.then_some(resumed),
        "client_bound": window.client_bound,
        "window_measured": window,
    });
    let tls_note = match target_tls {
        true => format!(" (wss, {resumed} resumed)"),
        false => String::new(),
    };
    eprintln!(
        "connect {} (c={}){tls_note}: {} ok, {} failed in {:.3}s = {:.0} handshakes/s; latency p50 {:.0}us \
         p99 {:.0}us max {:.0}us; {}",
        args.connections,
        args.concurrency,
        ok,
        failed,
        storm_s,
        ok as f64 / storm_s.max(1e-9),
        lat.p50_us,
        lat.p99_us,
        lat.max_us,
        report::cpu_line(&window)
    );
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    if ok == 0 {
        return Err("no connection succeeded".into());
    }
    Ok(())
}

type WorkerOut = (Histogram<u64>, (u64, u64, BTreeMap<String, u64>, u64));

async fn worker(
    w: usize,
    n_workers: usize,
    args: ConnectArgs,
    target: Target,
    next: Arc<AtomicU64>,
    last_ns: Arc<AtomicU64>,
) -> WorkerOut {
    let hist = Rc::new(RefCell::new(report::latency_histogram()));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let path = format!("/ws/{}", args.common.topic);
    let limit = Duration::from_secs_f64(args.handshake_timeout);
    let mine = common::share(args.concurrency, w, n_workers).len();
    let tasks: Vec<_> = (0..mine)
        .map(|_| {
            let (hist, tally, target, path) =
                (hist.clone(), tally.clone(), target.clone(), path.clone());
            let (next, last_ns, total) = (next.clone(), last_ns.clone(), args.connections);
            monoio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::AcqRel);
                    if id >= total {
                        break;
                    }
                    let t0 = clock::now_ns();
                    let res = monoio::time::timeout(limit, dial::connect(&target, id, &path)).await;
                    let t1 = clock::now_ns();
                    last_ns.fetch_max(t1, Ordering::AcqRel);
                    let mut t = tally.borrow_mut();
                    match res {
                        Ok(Ok(conn)) => {
                            let _ = hist.borrow_mut().record((t1 - t0).max(1));
                            t.ok += 1;
                            let shard = conn.shard.map_or("none".into(), |s| s.to_string());
                            *t.shards.entry(shard).or_default() += 1;
                            t.resumed += u64::from(conn.stream.resumed() == Some(true));
                            t.held.push(conn);
                        }
                        Ok(Err(e)) => {
                            common::report_first_error(&e.to_string());
                            t.failed += 1;
                        }
                        Err(_) => {
                            common::report_first_error("handshake timed out");
                            t.failed += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let h = hist.borrow().clone();
    let t = std::mem::take(&mut *tally.borrow_mut());
    (h, (t.ok, t.failed, t.shards, t.resumed))
}
