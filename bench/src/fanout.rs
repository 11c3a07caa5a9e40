//! `fanout`: one publisher (`/pub/<topic>`) to N subscribers (`/ws/<topic>`), either as fast as
//! the slowest subscriber keeps up (a window of W messages not yet received by everyone) or at
//! a fixed rate with per-delivery latency.

use crate::common::{self, CommonArgs};
use crate::dial::WsConn;
use crate::report::{self, Latency, Meter, Window};
use crate::scan::{Scanner, Stamp, STAMP_LEN};
use crate::seqcheck::SeqTrack;
use crate::{clock, process, recv, workers};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;
use serde_json::json;
use shardcast_proto::encode::encode_client_frame;
use shardcast_proto::frame::OpCode;
use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// `fanout` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Message size in bytes (at least 16: timestamp and sequence).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Fixed publish rate in messages/s; without it, publish as fast as the window allows.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Maximum-rate mode: messages not yet received by every subscriber.
    #[arg(long, default_value_t = 64)]
    pub(crate) window: u64,
    /// Upper bound on messages published.
    #[arg(long, default_value_t = 100_000_000)]
    pub(crate) messages: u64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Wait after the last subscriber connected before publishing (subscriptions settle), ms.
    #[arg(long, default_value_t = 200)]
    pub(crate) settle_ms: u64,
    /// Write the latency distribution here as CSV (`percentile,latency_us`), for `plot`.
    #[arg(long)]
    pub(crate) percentiles: Option<std::path::PathBuf>,
    /// Publish on this server instead of `--url` (`ws://IP:PORT`): subscribers on one host,
    /// the publisher on another joined to it through NATS (cross-host fan-out).
    #[arg(long)]
    pub(crate) publish_url: Option<String>,
    /// Subscribe with `seq=1` (continuity: numbered messages; the binary prefix is skipped).
    #[arg(long)]
    pub(crate) seq: bool,
}

/// A finished fan-out run: the JSON result and whether the run itself failed.
pub struct Measured {
    /// The result document.
    pub result: serde_json::Value,
    /// Why the run failed (the result is still worth keeping).
    pub error: Option<String>,
}

/// State shared by every generator thread.
struct Shared {
    subscribers: usize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Subscribers that must receive a message before it counts as done.
    live: AtomicUsize,
    /// Per-message receive counts, indexed by sequence modulo the ring size.
    slots: Box<[AtomicU32]>,
    completed: AtomicU64,
    publisher: Mutex<Option<Waker>>,
    stop: AtomicBool,
}

impl Shared {
    /// Counts one delivery of message `n`; the last subscriber to get it completes it.
    fn delivered(&self, n: u64) {
        let slot = &self.slots[(n % self.slots.len() as u64) as usize];
        let live = self.live.load(Ordering::Relaxed) as u32;
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == live {
            slot.store(0, Ordering::Release);
            self.completed.fetch_add(1, Ordering::AcqRel);
            if let Some(w) = self.publisher.lock().expect("waker lock").take() {
                w.wake();
            }
        }
    }
}

/// Resolves once at least `need` messages are complete.
struct Completed<'a> {
    shared: &'a Shared,
    need: u64,
}

impl Future for Completed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let done = || self.shared.completed.load(Ordering::Acquire) >= self.need;
        if done() {
            return Poll::Ready(());
        }
        *self.shared.publisher.lock().expect("waker lock") = Some(cx.waker().clone());
        // Re-check: a completion between the first check and storing the waker took no waker.
        if done() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[derive(Default)]
struct SubStats {
    received: u64,
    track: SeqTrack,
    short: u64,
    end: Option<String>,
}

struct PubStats {
    sent: u64,
    window: Window,
    start_ns: u64,
    error: Option<String>,
}

struct WorkerOut {
    subs: Vec<SubStats>,
    hist: Histogram<u64>,
    publisher: Option<PubStats>,
    shards: Vec<Option<u32>>,
}

/// Runs the scenario and prints its result.
pub fn run(args: FanoutArgs) -> Result<(), String> {
    let m = measure(args.clone())?;
    report::emit(&m.result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    m.error.map_or(Ok(()), Err)
}

/// Runs the scenario and returns its result without printing the JSON.
pub fn measure(args: FanoutArgs) -> Result<Measured, String> {
    if args.size < STAMP_LEN {
        return Err(format!("--size must be at least {STAMP_LEN}"));
    }
    let target = args.common.target()?;
    let pub_target = match &args.publish_url {
        Some(url) => crate::dial::Target::from_url(url, args.common.source_addrs)?
            .with_tls(args.common.ca.as_deref(), args.common.resume)?,
        None => target.clone(),
    };
    let cpus = args.common.cpus()?;
    let ring = match args.rate {
        None => args.window.max(1),
        // Fixed rate: the ring only bounds how far subscribers may fall behind.
        Some(_) => 1 << 16,
    };
    let shared = Arc::new(Shared {
        subscribers: args.subscribers,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        live: AtomicUsize::new(usize::MAX),
        slots: (0..ring).map(|_| AtomicU32::new(0)).collect(),
        completed: AtomicU64::new(0),
        publisher: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let n_workers = cpus.len();
    let a = args.clone();
    let sh = shared.clone();
    let outs = workers::run(&cpus, move |w| {
        let targets = (target.clone(), pub_target.clone());
        worker(w, n_workers, a.clone(), targets, sh.clone(), ring)
    });
    summarise(&args, &shared, outs)
}

/// `targets`: where subscribers connect, where the publisher connects.
async fn worker(
    w: usize,
    n_workers: usize,
    args: FanoutArgs,
    targets: (crate::dial::Target, crate::dial::Target),
    sh: Arc<Shared>,
    ring: u64,
) -> WorkerOut {
    let (target, pub_target) = targets;
    let c = &args.common;
    let deadline = Instant::now() + Duration::from_secs_f64(c.timeout);
    let path = match args.seq {
        true => format!("/ws/{}?seq=1", c.topic),
        false => format!("/ws/{}", c.topic),
    };
    let conns = common::connect_share(
        &target,
        c,
        &path,
        args.subscribers,
        w,
        n_workers,
        &sh.connected,
        &sh.failed,
    )
    .await;
    let hist = Rc::new(RefCell::new(report::latency_histogram()));
    let mut fds = Vec::with_capacity(conns.len());
    let mut shards = Vec::with_capacity(conns.len());
    let mut tasks = Vec::with_capacity(conns.len());
    for (_, conn) in conns {
        // A duplicate, so the number cannot be reused before the shutdown below; without a
        // descriptor to spare, the bare number (the receiver must be stopped either way).
        let raw = conn.stream.as_raw_fd();
        fds.push(process::dup_socket(raw).map_err(|_| raw));
        shards.push(conn.shard);
        let prefix = args.seq.then_some(10 + c.topic.len());
        tasks.push(monoio::spawn(receive(
            conn,
            sh.clone(),
            hist.clone(),
            prefix,
        )));
    }
    let publisher = (w == 0).then(|| {
        let (args, sh) = (args.clone(), sh.clone());
        monoio::spawn(async move { publish(&args, &pub_target, &sh, ring, deadline).await })
    });
    while !sh.stop.load(Ordering::Acquire) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    sh.stop.store(true, Ordering::Release);
    let publisher = match publisher {
        Some(p) => Some(p.await),
        None => None,
    };
    // Receivers are parked in reads; shutting the sockets ends those reads.
    fds.iter().for_each(|fd| {
        process::shutdown_socket(fd.as_ref().map_or_else(|&raw| raw, |d| d.as_raw_fd()))
    });
    let mut subs = Vec::with_capacity(tasks.len());
    for t in tasks {
        subs.push(t.await);
    }
    let hist = hist.borrow().clone();
    WorkerOut {
        subs,
        hist,
        publisher,
        shards,
    }
}

/// `seq_prefix`: the binary prefix of a sequenced subscriber (`--seq`), skipped.
async fn receive(
    conn: WsConn,
    sh: Arc<Shared>,
    hist: Rc<RefCell<Histogram<u64>>>,
    seq_prefix: Option<usize>,
) -> SubStats {
    let WsConn {
        mut stream,
        leftover,
        ..
    } = conn;
    let mut st = SubStats::default();
    let mut scanner = Scanner::default();
    scanner.seq_prefix = seq_prefix;
    st.end = recv::receive(&mut stream, leftover, &mut scanner, &sh.stop, |sc, buf| {
        let now = clock::now_ns();
        let mut h = hist.borrow_mut();
        sc.scan(buf, |s: Stamp| {
            // Latency is clamped at 1 ns: the histogram's lowest bucket.
            let _ = h.record(now.saturating_sub(s.sent_ns).max(1));
            let n = s.seq & 0xFFFF_FFFF;
            st.track.observe(n as u32);
            st.received += 1;
            sh.delivered(n);
        })
    })
    .await;
    st.short = scanner.short;
    st
}

/// A cheap per-frame mask key (xorshift); masking only has to be unpredictable to proxies.
fn next_mask(state: &mut u32) -> [u8; 4] {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    state.to_le_bytes()
}

async fn publish(
    args: &FanoutArgs,
    target: &crate::dial::Target,
    sh: &Shared,
    ring: u64,
    deadline: Instant,
) -> PubStats {
    let all = |sh: &Shared| {
        sh.connected.load(Ordering::Acquire) + sh.failed.load(Ordering::Acquire) >= sh.subscribers
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let mut stats = PubStats {
        sent: 0,
        window: Meter::start(None).finish(1),
        start_ns: 0,
        error: None,
    };
    if !common::wait_until(left, || all(sh)).await {
        stats.error = Some("subscribers did not finish connecting in time".into());
        sh.stop.store(true, Ordering::Release);
        return stats;
    }
    sh.live
        .store(sh.connected.load(Ordering::Acquire), Ordering::Release);
    let path = format!("/pub/{}", args.common.topic);
    let mut stream = match crate::dial::connect(target, u64::MAX, &path).await {
        Ok(c) => c.stream,
        Err(e) => {
            stats.error = Some(format!("publisher: {e}"));
            sh.stop.store(true, Ordering::Release);
            return stats;
        }
    };
    monoio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let meter = Meter::start(args.common.server_pid);
    let start = Instant::now();
    stats.start_ns = clock::now_ns();
    let end = (start + Duration::from_secs_f64(args.duration)).min(deadline);
    let interval_ns = args.rate.map(|r| (1e9 / r.max(1e-3)) as u64);
    let mut payload = vec![0u8; args.size];
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut mask_state = 0x9E37_79B9u32;
    let mut sent = 0u64;
    while sent < args.messages && Instant::now() < end {
        let free = sh.completed.load(Ordering::Acquire) + ring - sent;
        if free == 0 {
            let wait = Completed {
                shared: sh,
                need: sent + 1 - ring,
            };
            let left = end.saturating_duration_since(Instant::now());
            if monoio::time::timeout(left, wait).await.is_err() {
                break;
            }
            continue;
        }
        let due = match interval_ns {
            None => free,
            Some(iv) => {
                let elapsed = start.elapsed().as_nanos() as u64;
                let due = (elapsed / iv + 1).saturating_sub(sent);
                if due == 0 {
                    let next = start + Duration::from_nanos(sent * iv);
                    monoio::time::sleep(next.saturating_duration_since(Instant::now())).await;
                    continue;
                }
                due.min(free)
            }
        };
        let batch = due.min(args.messages - sent).min(256);
        out.clear();
        let now = clock::now_ns();
        for i in 0..batch {
            Stamp {
                sent_ns: now,
                seq: sent + i,
            }
            .write(&mut payload);
            encode_client_frame(
                &mut out,
                OpCode::Binary,
                true,
                &payload,
                next_mask(&mut mask_state),
            );
        }
        let (res, back) = stream.write_all(out).await;
        out = back;
        if let Err(e) = res {
            stats.error = Some(format!("publisher write: {e}"));
            break;
        }
        sent += batch;
    }
    // Drain: wait (bounded) until every subscriber has every message.
    let drain = Duration::from_secs(3).min(deadline.saturating_duration_since(Instant::now()));
    let _ = monoio::time::timeout(
        drain,
        Completed {
            shared: sh,
            need: sent,
        },
    )
    .await;
    stats.window = meter.finish(args.common.cpus().map_or(1, |c| c.len()));
    stats.sent = sent;
    sh.stop.store(true, Ordering::Release);
    stats
}

fn summarise(args: &FanoutArgs, sh: &Shared, outs: Vec<WorkerOut>) -> Result<Measured, String> {
    let mut hist = report::latency_histogram();
    let mut subs = Vec::new();
    let mut publisher = None;
    let mut shards = std::collections::BTreeMap::<String, u64>::new();
    for o in outs {
        hist.add(&o.hist).map_err(|e| e.to_string())?;
        subs.extend(o.subs);
        publisher = publisher.or(o.publisher);
        for s in o.shards {
            *shards
                .entry(s.map_or("none".into(), |s| s.to_string()))
                .or_default() += 1;
        }
    }
    let p = publisher.ok_or("no publisher result")?;
    if let Some(e) = &p.error {
        eprintln!("fanout: {e}");
    }
    let deliveries: u64 = subs.iter().map(|s| s.received).sum();
    let lost: Vec<u64> = subs.iter().map(|s| s.track.lost(p.sent)).collect();
    let dup: u64 = subs.iter().map(|s| s.track.duplicated).sum();
    let reord: u64 = subs.iter().map(|s| s.track.reordered).sum();
    let ended: Vec<&String> = subs.iter().filter_map(|s| s.end.as_ref()).collect();
    let w = &p.window;
    let server_us_per_delivery = w
        .server_cpu
        .map(|s| s.total_us() as f64 / deliveries.max(1) as f64);
    let split = |f: fn(&report::CpuUse) -> u64| {
        w.server_cpu
            .map(|s| f(&s) as f64 / deliveries.max(1) as f64)
    };
    let result = json!({
        "scenario": "fanout",
        "mode": if args.rate.is_some() { "fixed-rate" } else { "max-rate" },
        "url": args.common.url,
        "publish_url": args.publish_url,
        "server_pid": args.common.server_pid,
        "subscribers": args.subscribers,
        "subscribers_connected": sh.connected.load(Ordering::Acquire),
        "connect_failures": sh.failed.load(Ordering::Acquire),
        "message_size": args.size,
        "rate": args.rate,
        "window": args.rate.is_none().then_some(args.window),
        "messages_sent": p.sent,
        "deliveries": deliveries,
        "expected_deliveries": p.sent * subs.len() as u64,
        "messages_per_s": p.sent as f64 / w.wall_s,
        "deliveries_per_s": deliveries as f64 / w.wall_s,
        "lost": lost.iter().sum::<u64>(),
        "subscribers_with_loss": lost.iter().filter(|&&l| l > 0).count(),
        "max_lost_per_subscriber": lost.iter().max().copied().unwrap_or(0),
        "duplicated": dup,
        "reordered": reord,
        "short_messages": subs.iter().map(|s| s.short).sum::<u64>(),
        "subscribers_ended_early": ended.len(),
        "first_end_reason": ended.first(),
        "publisher_error": p.error,
        "publish_start_ns": p.start_ns,
        "latency": Latency::from_hist(&hist),
        "server_cpu_us_per_delivery": server_us_per_delivery,
        "server_user_us_per_delivery": split(|c| c.user_us),
        "server_sys_us_per_delivery": split(|c| c.sys_us),
        "shards": shards,
        "client_bound": w.client_bound,
        "window_measured": w,
    });
    let l = Latency::from_hist(&hist);
    eprintln!(
        "fanout 1->{} {}B {}: {:.0} deliveries/s ({} msgs, {} deliveries, lost {}, dup {}, \
         reordered {}) latency p50 {:.0}us p99 {:.0}us p99.9 {:.0}us max {:.0}us; {}{}",
        args.subscribers,
        args.size,
        args.rate
            .map_or("max-rate".to_string(), |r| format!("{r} msg/s")),
        deliveries as f64 / w.wall_s,
        p.sent,
        deliveries,
        lost.iter().sum::<u64>(),
        dup,
        reord,
        l.p50_us,
        l.p99_us,
        l.p999_us,
        l.max_us,
        report::cpu_line(w),
        server_us_per_delivery.map_or(String::new(), |u| format!("; server {u:.3} us/delivery")),
    );
    if let Some(path) = &args.percentiles {
        report::write_percentiles(&hist, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let error = match &p.error {
        Some(e) => Some(format!("run failed: {e}")),
        None if subs.is_empty() => Some("no subscriber connected".into()),
        None => None,
    };
    Ok(Measured { result, error })
}
