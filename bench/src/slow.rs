//! `slow`: N subscribers of which a fraction never read after subscribing, one publisher at a
//! fixed rate. What a server's back-pressure does to everyone else: the fast subscribers'
//! latency and loss (must be 0), how the slow ones were ended (close codes, 1013s, time to
//! eviction), and the server's memory over the run (RSS every 200 ms, /stats if given).

use crate::adminstats;
use crate::common::CommonArgs;
use crate::fanout::{self, FanoutArgs};
use crate::stalled::{Outcome, Stalled};
use crate::{clock, process, report};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `slow` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SlowArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Subscribers in all (fast and slow).
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Share of the subscribers that never read after subscribing.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) slow_fraction: f64,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 65536)]
    pub(crate) size: usize,
    /// Publish rate, messages/s.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Receive buffer of the slow clients' sockets, bytes (the kernel doubles it).
    #[arg(long, default_value_t = 4096)]
    pub(crate) slow_rcvbuf: usize,
    /// The server's admin URL (`http://IP:PORT`): sample /stats with the memory.
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// Memory and /stats sampling interval, ms.
    #[arg(long, default_value_t = 200)]
    pub(crate) sample_ms: u64,
    /// After publishing, how long to read the slow clients for their close frames, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) drain_s: f64,
    /// Wait after the last subscriber connected before publishing, ms.
    #[arg(long, default_value_t = 200)]
    pub(crate) settle_ms: u64,
    /// Write the fast subscribers' latency distribution here as CSV, for `plot`.
    #[arg(long)]
    pub(crate) percentiles: Option<PathBuf>,
}

/// Runs the scenario and prints its result.
pub fn run(args: SlowArgs) -> Result<(), String> {
    let (result, error) = measure(&args)?;
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    error.map_or(Ok(()), Err)
}

/// What the monitor thread saw while the load ran.
struct Watched {
    stalled: Vec<Stalled>,
    rss: Vec<(u64, u64)>,
    /// Kernel TCP memory of the host (`/proc/net/sockstat`), sampled with the RSS.
    kernel: Vec<(u64, u64)>,
    /// What the server's own sockets hold unsent (send queues of the server port).
    server_send_queues: Vec<(u64, u64)>,
    /// The part of it held for the slow clients.
    slow_send_queues: Vec<(u64, u64)>,
    stats: Vec<Value>,
    stats_error: Option<String>,
    /// When sampling started (`clock::now_ns`): sample times `t_ms` count from here.
    start_ns: u64,
}

/// Polls the stalled clients' TCP state every 50 ms and samples memory and /stats every
/// `sample` until `stop`.
fn watch(
    mut stalled: Vec<Stalled>,
    port: u16,
    pid: Option<u32>,
    admin: Option<SocketAddr>,
    sample: Duration,
    stop: Arc<AtomicBool>,
) -> Watched {
    let start = clock::now_ns();
    let slow_ports: Vec<u16> = stalled.iter().filter_map(Stalled::local_port).collect();
    let mut w = Watched {
        stalled: Vec::new(),
        rss: Vec::new(),
        kernel: Vec::new(),
        server_send_queues: Vec::new(),
        slow_send_queues: Vec::new(),
        stats: Vec::new(),
        stats_error: None,
        start_ns: start,
    };
    let mut next_sample = Instant::now();
    loop {
        let done = stop.load(Ordering::Acquire);
        stalled.iter_mut().for_each(Stalled::poll_state);
        if Instant::now() >= next_sample || done {
            next_sample += sample;
            let t_ms = (clock::now_ns() - start) / 1_000_000;
            if let Some(m) = pid.and_then(|p| process::proc_memory(p).ok()) {
                w.rss.push((t_ms, m.rss));
            }
            if let Ok(k) = process::kernel_tcp_memory() {
                w.kernel.push((t_ms, k));
            }
            if let Ok((tx, _)) = process::port_tcp_queues(port, &[]) {
                w.server_send_queues.push((t_ms, tx));
            }
            if !slow_ports.is_empty() {
                if let Ok((tx, _)) = process::port_tcp_queues(port, &slow_ports) {
                    w.slow_send_queues.push((t_ms, tx));
                }
            }
            if let Some(addr) = admin {
                match adminstats::fetch_stats(addr, Duration::from_millis(500)) {
                    Ok(v) => {
                        let mut s = adminstats::numeric_fields(&v);
                        s.insert("t_ms".into(), t_ms.into());
                        w.stats.push(Value::Object(s));
                    }
                    Err(e) => w.stats_error = Some(e.to_string()),
                }
            }
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    w.stalled = stalled;
    w
}

/// Each eviction's time (ms from the publish start): a /stats sample whose eviction count
/// went up, once per eviction; `offset_ms` converts sample times to publish-start times.
fn eviction_times_ms(samples: &[Value], offset_ms: f64) -> Vec<f64> {
    let count = |s: &Value| -> u64 {
        ["high_water", "ceiling", "slow_clients"]
            .iter()
            .filter_map(|r| s[format!("totals.evictions.{r}")].as_u64())
            .sum()
    };
    let mut out = Vec::new();
    let mut seen = 0;
    for s in samples {
        let n = count(s);
        let t = s["t_ms"].as_f64().unwrap_or(0.0) + offset_ms;
        out.extend(std::iter::repeat_n(t, n.saturating_sub(seen) as usize));
        seen = seen.max(n);
    }
    out
}

fn percentiles_ms(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"count": v.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

/// Runs the scenario; returns the result document and whether the run failed.
pub fn measure(args: &SlowArgs) -> Result<(Value, Option<String>), String> {
    let target = args.common.target()?;
    let admin = args
        .admin
        .as_deref()
        .map(adminstats::parse_admin_url)
        .transpose()?;
    let n_slow =
        ((args.subscribers as f64 * args.slow_fraction).round() as usize).min(args.subscribers);
    let n_fast = args.subscribers - n_slow;
    let path = format!("/ws/{}", args.common.topic);
    // Kernel TCP memory is host-wide: what it held before any client connected is the base.
    let kernel_base = process::kernel_tcp_memory().ok();
    let mut stalled = Vec::with_capacity(n_slow);
    let mut slow_failed = 0usize;
    for _ in 0..n_slow {
        match Stalled::connect(target.addr, &path, args.slow_rcvbuf) {
            Ok(c) => stalled.push(c),
            Err(e) => {
                crate::common::report_first_error(&format!("slow client: {e}"));
                slow_failed += 1;
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (pid, sample, stop) = (
            args.common.server_pid,
            Duration::from_millis(args.sample_ms),
            stop.clone(),
        );
        let port = target.addr.port();
        std::thread::spawn(move || watch(stalled, port, pid, admin, sample, stop))
    };
    let fan = FanoutArgs {
        common: args.common.clone(),
        subscribers: n_fast,
        size: args.size,
        rate: Some(args.rate),
        window: 64,
        messages: u64::MAX,
        duration: args.duration,
        settle_ms: args.settle_ms,
        percentiles: args.percentiles.clone(),
        publish_url: None,
        seq: false,
    };
    let measured = fanout::measure(fan);
    stop.store(true, Ordering::Release);
    let watched = monitor.join().map_err(|_| "monitor thread panicked")?;
    let measured = measured?;
    let fast = measured.result;
    let start_ns = fast["publish_start_ns"].as_u64().unwrap_or(0);

    // Drain every slow client, all against one deadline.
    let drained_at = clock::now_ns();
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_s);
    let outcomes: Vec<(Option<u64>, Outcome)> = {
        let handles: Vec<_> = watched
            .stalled
            .into_iter()
            .map(|c| {
                let seen = c.left_established_ns;
                std::thread::spawn(move || (seen, c.drain(deadline)))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    };
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    let mut evict_ms = Vec::new();
    let mut ended_unseen = 0u64;
    let mut open = 0u64;
    for (seen, out) in &outcomes {
        let key = match out {
            Outcome::CloseFrame(Some(c)) => c.to_string(),
            Outcome::CloseFrame(None) => "close-without-code".into(),
            Outcome::Eof => "eof-without-close".into(),
            Outcome::Error(_) => "error".into(),
            Outcome::Open => "open".into(),
        };
        *codes.entry(key).or_default() += 1;
        match (out, seen) {
            (Outcome::Open, _) => open += 1,
            (_, Some(t)) => evict_ms.push(t.saturating_sub(start_ns) as f64 / 1e6),
            (_, None) => ended_unseen += 1,
        }
    }
    let first_error = outcomes.iter().find_map(|(_, o)| match o {
        Outcome::Error(e) => Some(e.clone()),
        _ => None,
    });
    let rss: Vec<u64> = watched.rss.iter().map(|r| r.1).collect();
    let rss_summary = (!rss.is_empty()).then(|| {
        json!({
            "min": rss.iter().min(), "max": rss.iter().max(), "final": rss.last(),
            "samples": watched.rss.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>(),
        })
    });
    let kernel: Vec<u64> = watched.kernel.iter().map(|k| k.1).collect();
    let kernel_summary = (!kernel.is_empty()).then(|| {
        json!({
            "base": kernel_base, "max": kernel.iter().max(), "final": kernel.last(),
            "samples": watched.kernel.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>(),
        })
    });
    // RSS and kernel memory sampled together: their sum at each sample.
    let total_max = watched
        .rss
        .iter()
        .zip(&watched.kernel)
        .map(|((_, r), (_, k))| r + k.saturating_sub(kernel_base.unwrap_or(0)))
        .max();
    // When the server evicted (from its /stats samples) against when each slow client saw
    // its connection end (FIN or RST), both from the publish start, matched in order.
    let offset_ms = watched.start_ns as f64 / 1e6 - start_ns as f64 / 1e6;
    let evicted_ms = eviction_times_ms(&watched.stats, offset_ms);
    let mut ended_ms = evict_ms.clone();
    ended_ms.sort_by(f64::total_cmp);
    let gone_after: Vec<f64> = evicted_ms
        .iter()
        .zip(&ended_ms)
        .map(|(e, g)| (g - e).max(0.0))
        .collect();
    let lost = fast["lost"].as_u64().unwrap_or(0);
    let closed_1013 = codes.get("1013").copied().unwrap_or(0);
    let result = json!({
        "scenario": "slow",
        "url": args.common.url,
        "server_pid": args.common.server_pid,
        "subscribers": args.subscribers,
        "slow_clients": n_slow,
        "slow_connect_failures": slow_failed,
        "slow_rcvbuf": args.slow_rcvbuf,
        "message_size": args.size,
        "rate": args.rate,
        "duration_s": args.duration,
        "fast": {
            "subscribers": n_fast,
            "messages_sent": fast["messages_sent"],
            "deliveries": fast["deliveries"],
            "expected_deliveries": fast["expected_deliveries"],
            "lost": lost,
            "duplicated": fast["duplicated"],
            "reordered": fast["reordered"],
            "subscribers_ended_early": fast["subscribers_ended_early"],
            "first_end_reason": fast["first_end_reason"],
            "latency": fast["latency"],
        },
        "slow": {
            "outcomes": codes,
            "closed_1013": closed_1013,
            "still_open_at_drain": open,
            "first_error": first_error,
            // Seen leaving ESTABLISHED (FIN or RST) while not reading; a close queued behind
            // unread data is only seen at the drain, so those are counted apart.
            "time_to_eviction": percentiles_ms(evict_ms),
            // Server eviction (a /stats sample, so up to sample_ms late) to the client seeing
            // its connection end: the close flush deadline plus the sampling granularity.
            "evicted_to_gone": percentiles_ms(gone_after),
            "ended_seen_only_at_drain": ended_unseen,
            "drain_started_ms_after_publish_start": drained_at.saturating_sub(start_ns) / 1_000_000,
        },
        "server_rss": rss_summary,
        "kernel_tcp": kernel_summary,
        "server_send_queues": {
            "max": watched.server_send_queues.iter().map(|s| s.1).max(),
            "samples": watched.server_send_queues.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>(),
            // Held for the slow clients: max, and at the end of publishing.
            "slow_max": watched.slow_send_queues.iter().map(|s| s.1).max(),
            "slow_final": watched.slow_send_queues.last().map(|s| s.1),
        },
        "rss_plus_kernel_max": total_max,
        "stats_samples": (!watched.stats.is_empty()).then_some(&watched.stats),
        "stats_error": watched.stats_error,
        "client_bound": fast["client_bound"],
        "window_measured": fast["window_measured"],
    });
    let l = &fast["latency"];
    let mb = |v: Option<&u64>| v.map_or("?".into(), |b| format!("{:.1}", *b as f64 / 1048576.0));
    eprintln!(
        "slow {} subscribers ({} never read), {} B at {} msg/s for {} s: fast p50 {:.0}us p99 {:.0}us \
         lost {lost}; slow outcomes {:?}; server RSS max {} MiB final {} MiB",
        args.subscribers,
        n_slow,
        args.size,
        args.rate,
        args.duration,
        l["p50_us"].as_f64().unwrap_or(0.0),
        l["p99_us"].as_f64().unwrap_or(0.0),
        codes,
        mb(rss.iter().max()),
        mb(rss.last()),
    );
    let error = measured
        .error
        .or_else(|| (lost > 0).then(|| format!("fast subscribers lost {lost} messages")));
    Ok((result, error))
}
