//! The admin listener: `/health`, `/stats`, `/metrics`, `/histograms`, `/dashboard`.
//!
//! It runs off the shards: one plain thread accepts (a blocking std listener) and each
//! connection is served on a thread of its own, at most [`MAX_CONNECTIONS`] at once (more get
//! an immediate 503), one request per connection (`Connection: close`). It reads only the
//! shards' atomics and their per-tick histogram copies, so observing the server never slows
//! the data path. Requests go through the data path's own [`RequestParser`] with a small head
//! limit, and the whole exchange (request in, response out) has one deadline,
//! [`REQUEST_DEADLINE`], not a timeout per read: a client trickling a byte at a time holds one
//! slot for at most that long and never blocks `/health` for anyone else. Shutdown stops the
//! accepting thread only; connection threads end by their deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use shardcast_proto::http::{write_response, Parse, Request, RequestLimits, RequestParser, Status};

use crate::bridge::stats::{BridgeSnapshot, BridgeStats};
use crate::obs::depth::{DepthSample, DepthSummary};
use crate::obs::health::{overloaded, OVERLOAD_PCT};
use crate::obs::latency::{merged_summary, LatencyKind, Summary, KINDS};
use crate::obs::procstat::{self, ProcessStats};
use crate::obs::promhist::{latency_bounds, Buckets};
use crate::obs::stats::{
    monotonic_ms, AbortReason, AcceptErrorReason, Discard, DriverKind, Eviction, Refusal,
    ShardStats, Snapshot, COUNTED_CLOSE_CODES,
};
use crate::runtime::shutdown::Shutdown;
use crate::{obs::dashboard, obs::metrics};

/// The most an admin exchange (reading the request, writing the response) may take.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Admin connections served at once; more are answered 503 at once and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// How long [`Admin::stop`] waits to connect to its own listener to wake the accepting thread.
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a closing connection waits for the client to finish sending.
const LINGER: Duration = Duration::from_millis(200);

/// Most bytes discarded while lingering.
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// Largest admin request head (admin requests are a request line and a few headers).
const MAX_HEAD_BYTES: usize = 4096;

/// Admin behaviour knobs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A shard whose last tick is older than this is reported stalled by /health.
    pub stall_ms: u64,
    /// wss://: the TLS context, for its process-wide reload counters.
    pub tls: Option<crate::tls::TlsContext>,
}

/// A running admin listener.
pub struct Admin {
    addr: SocketAddr,
    shutdown: Arc<Shutdown>,
    handle: JoinHandle<()>,
}

/// Start the admin thread on `listener`; `bridge` is the NATS bridge's counters when it is on.
pub fn spawn(
    listener: TcpListener,
    stats: Arc<[ShardStats]>,
    bridge: Option<Arc<BridgeStats>>,
    shutdown: Arc<Shutdown>,
    settings: Settings,
) -> io::Result<Admin> {
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        stats,
        bridge,
        settings,
        started: Instant::now(),
        started_wall: SystemTime::now(),
    });
    let stop = shutdown.clone();
    let busy = Arc::new(AtomicUsize::new(0));
    let handle = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stop.is_triggered() {
                    break;
                }
                match stream {
                    Ok(s) => dispatch(&state, &busy, s),
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
    Ok(Admin {
        addr,
        shutdown,
        handle,
    })
}

/// One admin connection's slot: released when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `stream` on a thread of its own if a slot is free, else answer 503 at once.
fn dispatch(state: &Arc<State>, busy: &Arc<AtomicUsize>, stream: TcpStream) {
    if busy.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        busy.fetch_sub(1, Ordering::Relaxed);
        let mut out = Vec::new();
        write_response(
            &mut out,
            Status::ServiceUnavailable,
            &[("Retry-After", "1"), ("Cache-Control", "no-store")],
            "text/plain; charset=utf-8",
            b"admin listener busy\n",
        );
        // Never wait on this client: one nonblocking write, then close.
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write(&out);
        return;
    }
    let slot = Slot(busy.clone());
    let state = state.clone();
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || {
            let _slot = slot;
            if let Err(e) = serve(&state, stream) {
                tracing::debug!(error = %e, "admin request failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start an admin connection thread");
    }
}

/// Time left before `deadline`, or a timeout error once it passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "admin request deadline",
        ));
    }
    Ok(left)
}

impl Admin {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting: trigger shutdown (idempotent), then one connection wakes the accepting
    /// thread, which is joined. Connection threads are not waited for: each ends by its
    /// [`REQUEST_DEADLINE`], or with the process.
    pub fn stop(self) {
        self.shutdown.trigger();
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, WAKE_TIMEOUT).is_ok() {
            let _ = self.handle.join();
        }
    }
}

/// What the admin thread reads from.
struct State {
    stats: Arc<[ShardStats]>,
    bridge: Option<Arc<BridgeStats>>,
    settings: Settings,
    started: Instant,
    started_wall: SystemTime,
}

/// A response before encoding.
#[derive(Debug, PartialEq)]
pub struct Response {
    /// Status.
    pub status: Status,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    fn text(status: Status, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// Read one request (bounded in size and, with the response, in time), answer it, close.
fn serve(state: &State, mut stream: TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut parser = RequestParser::new(RequestLimits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: 32,
    });
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parser.parse(&buf) {
            Ok(Parse::Partial) => continue,
            Ok(Parse::Complete { request, .. }) => break respond(state, &request),
            Err(e) => break Response::text(e.status, e.reason),
        }
    };
    let mut out = Vec::with_capacity(response.body.len() + 256);
    let allow: &[(&str, &str)] = if response.status == Status::MethodNotAllowed {
        &[("Allow", "GET"), ("Cache-Control", "no-store")]
    } else {
        &[("Cache-Control", "no-store")]
    };
    write_response(
        &mut out,
        response.status,
        allow,
        response.content_type,
        &response.body,
    );
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream.write_all(&out)?;
    // Half-close, then discard what the client still sends (bounded in bytes and time):
    // closing with unread input would reset the connection and could destroy the response.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    stream.set_read_timeout(Some(LINGER))?;
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Route one parsed request.
fn respond(state: &State, request: &Request<'_>) -> Response {
    let path = request.path();
    if !matches!(
        path,
        "/health" | "/stats" | "/metrics" | "/histograms" | "/dashboard"
    ) {
        return Response::text(Status::NotFound, "no such admin endpoint\n");
    }
    if request.method() != "GET" {
        return Response::text(Status::MethodNotAllowed, "only GET\n");
    }
    if path == "/dashboard" {
        return Response {
            status: Status::Ok,
            content_type: dashboard::CONTENT_TYPE,
            body: dashboard::HTML.as_bytes().to_vec(),
        };
    }
    let snaps: Vec<Snapshot> = state.stats.iter().map(ShardStats::snapshot).collect();
    let bridge = state.bridge.as_ref().map(|b| b.snapshot(monotonic_ms()));
    match path {
        "/health" => {
            let reasons = unhealthy_reasons(&snaps, monotonic_ms(), state.settings.stall_ms);
            // The bridge is a detail, never a reason: with NATS down the host still serves its
            // own traffic, and a 503 from every host at once would empty the load balancer.
            let detail = bridge.map(|b| b.health_detail() + "\n").unwrap_or_default();
            if reasons.is_empty() {
                Response::text(Status::Ok, "ok\n".to_owned() + &detail)
            } else {
                Response::text(
                    Status::ServiceUnavailable,
                    reasons.join("\n") + "\n" + &detail,
                )
            }
        }
        "/stats" => Response {
            status: Status::Ok,
            content_type: "application/json",
            body: stats_json(state, &snaps, bridge.as_ref())
                .to_string()
                .into_bytes(),
        },
        "/metrics" => Response {
            status: Status::Ok,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(
                &reports(state, &snaps, &capture(state), Buckets::of),
                &ProcessReport {
                    // Only here: it lists /proc/self/fd, one entry per connection.
                    process: procstat::read(),
                    ..process(state)
                },
                bridge.as_ref(),
            )
            .into_bytes(),
        },
        _ => histogram_log(
            state,
            request.query_param("shard"),
            request.query_param("kind"),
        ),
    }
}

/// Why the process is unhealthy, one human-readable reason each; empty when healthy. Time is an
/// input (`now_ms` on the [`monotonic_ms`] clock) so the rules are testable without waiting:
/// a shard whose loop has not ticked for more than `stall_ms`, and a shard whose queued frames
/// and mesh backlog (`retained_bytes`) hold more than [`OVERLOAD_PCT`]% of its share of the
/// queue ceiling (evictions are about to start, or are running: a load balancer should stop
/// sending new clients here).
pub fn unhealthy_reasons(snaps: &[Snapshot], now_ms: u64, stall_ms: u64) -> Vec<String> {
    let mut reasons = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        let age = now_ms.saturating_sub(s.last_tick_ms);
        if age > stall_ms {
            reasons.push(format!(
                "shard {i} stalled: loop has not ticked for {age} ms"
            ));
        }
        if overloaded(s.retained_bytes, s.queue_ceiling_bytes) {
            reasons.push(format!(
                "shard {i} overloaded: queues and mesh backlog hold {} of its {} byte ceiling share (> {OVERLOAD_PCT}%)",
                s.retained_bytes, s.queue_ceiling_bytes
            ));
        }
    }
    reasons
}

/// One shard's numbers for /stats and /metrics.
pub struct ShardReport {
    /// Counters.
    pub snap: Snapshot,
    /// Driver.
    pub driver: DriverKind,
    /// Latency summaries, indexed like [`LatencyKind::ALL`].
    pub latency: [Summary; KINDS],
    /// The latest queue depth sample.
    pub depth: DepthSummary,
    /// Latency histograms in Prometheus buckets, indexed like [`LatencyKind::ALL`] (empty in
    /// the reports /stats builds).
    pub latency_buckets: [Buckets; KINDS],
    /// Every queue depth sample so far in buckets: [messages, bytes].
    pub depth_buckets: [Buckets; 2],
    /// Connections accepted + closed per second over the last 10 s.
    pub churn_per_second: f64,
    /// Milliseconds since the shard's last tick.
    pub tick_age_ms: u64,
}

impl ShardReport {
    /// Queued frames and mesh backlog over the shard's share of the ceiling (1.0: evictions
    /// start); 0 while no ceiling is known.
    pub fn buffer_fill_ratio(&self) -> f64 {
        fill_ratio(self.snap.retained_bytes, self.snap.queue_ceiling_bytes)
    }
}

/// `retained` over `ceiling`, 0 when there is no ceiling.
pub fn fill_ratio(retained: u64, ceiling: u64) -> f64 {
    if ceiling == 0 {
        0.0
    } else {
        retained as f64 / ceiling as f64
    }
}

/// Process-wide numbers.
pub struct ProcessReport {
    /// Resident set size in bytes, when /proc is readable.
    pub rss_bytes: Option<u64>,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// The `process_*` figures, when /proc is readable.
    pub process: Option<ProcessStats>,
    /// TLS certificate reloads (SIGHUP), when wss:// is on.
    pub tls_reloads: Option<crate::tls::reload::ReloadSnapshot>,
}

/// One shard's histograms, copied once per request, so a shard's numbers and the merged totals
/// agree even when the shard publishes in between.
struct Captured {
    latency: [Histogram<u64>; KINDS],
    depth: DepthSample,
    depth_buckets: [Buckets; 2],
}

fn capture(state: &State) -> Vec<Captured> {
    state
        .stats
        .iter()
        .map(|s| Captured {
            latency: LatencyKind::ALL.map(|k| s.latency.clone_of(k)),
            depth: s.queue_depth.clone_of(),
            depth_buckets: s.queue_depth.cumulative(),
        })
        .collect()
}

/// `buckets` folds a latency histogram into its bounds: [`Buckets::of`] for /metrics; /stats,
/// which shows none, skips the walk with `|_, b| Buckets::empty(b)`.
fn reports(
    state: &State,
    snaps: &[Snapshot],
    captured: &[Captured],
    buckets: fn(&Histogram<u64>, &[u64]) -> Buckets,
) -> Vec<ShardReport> {
    let now = monotonic_ms();
    state
        .stats
        .iter()
        .zip(snaps)
        .zip(captured)
        .map(|((s, snap), c)| ShardReport {
            snap: *snap,
            driver: s.driver(),
            latency: c.latency.each_ref().map(Summary::of),
            depth: c.depth.summary(),
            latency_buckets: LatencyKind::ALL
                .map(|k| buckets(&c.latency[k as usize], latency_bounds(k))),
            depth_buckets: c.depth_buckets.clone(),
            churn_per_second: s.churn.get(),
            tick_age_ms: now.saturating_sub(snap.last_tick_ms),
        })
        .collect()
}

fn process(state: &State) -> ProcessReport {
    ProcessReport {
        rss_bytes: rss_bytes(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        process: None,
        tls_reloads: state.settings.tls.as_ref().map(|t| t.reload_stats()),
    }
}

/// VmRSS from /proc/self/status, in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The counters of one snapshot as JSON (the part that is summed into the totals).
fn counters_json(snap: &Snapshot) -> Map<String, Value> {
    let Value::Object(mut m) = serde_json::to_value(snap).expect("plain numbers serialize") else {
        unreachable!("a struct serializes to an object")
    };
    let refused: Map<String, Value> = Refusal::ALL
        .iter()
        .map(|r| (r.name().to_owned(), snap.refused[*r as usize].into()))
        .collect();
    let codes = COUNTED_CLOSE_CODES
        .iter()
        .map(|c| c.to_string())
        .chain(["other".to_owned()]);
    let errors: Map<String, Value> = codes
        .zip(snap.protocol_errors)
        .map(|(c, n)| (c, n.into()))
        .collect();
    m.insert("refused".into(), refused.into());
    m.insert("protocol_errors".into(), errors.into());
    let evictions: Map<String, Value> = Eviction::ALL
        .iter()
        .map(|e| (e.name().to_owned(), snap.evictions[*e as usize].into()))
        .collect();
    let discarded: Map<String, Value> = Discard::ALL
        .iter()
        .map(|d| (d.name().to_owned(), snap.discarded[*d as usize].into()))
        .collect();
    m.insert("evictions".into(), evictions.into());
    m.insert("discarded".into(), discarded.into());
    let aborts: Map<String, Value> = AbortReason::ALL
        .iter()
        .map(|a| (a.name().to_owned(), snap.aborts[*a as usize].into()))
        .collect();
    m.insert("aborts".into(), aborts.into());
    let accept_errors: Map<String, Value> = AcceptErrorReason::ALL
        .iter()
        .map(|a| (a.name().to_owned(), snap.accept_errors[*a as usize].into()))
        .collect();
    m.insert("accept_errors".into(), accept_errors.into());
    // The seed names: slow clients, and closed connections (every accepted one no longer open).
    m.insert("slow_client_count".into(), snap.slow_clients.into());
    m.insert("connections_closed".into(), connections_closed(snap).into());
    m
}

/// Connections accepted and no longer open (refused at accept included).
pub fn connections_closed(snap: &Snapshot) -> u64 {
    snap.accepted.saturating_sub(snap.active_connections)
}

/// Add every number of `v` into `total`, recursing into objects.
fn sum_into(total: &mut Map<String, Value>, v: &Map<String, Value>) {
    for (k, x) in v {
        match (total.get_mut(k), x) {
            (Some(Value::Object(t)), Value::Object(x)) => sum_into(t, x),
            (Some(Value::Number(t)), Value::Number(x)) => {
                *t = (t.as_u64().unwrap_or(0) + x.as_u64().unwrap_or(0)).into()
            }
            (None, x) => {
                total.insert(k.clone(), x.clone());
            }
            _ => {}
        }
    }
}

/// The headline distribution fields of /stats (percentiles, so never summed): broadcast latency
/// in µs, eviction stall in ms, queue depth in entries and bytes (with the number of
/// connections the depth sample covered).
fn percentiles_json(
    m: &mut Map<String, Value>,
    broadcast: &Summary,
    stall: &Summary,
    depth: &DepthSummary,
) {
    let b = broadcast;
    m.insert("broadcast_latency_p50_us".into(), b.p50.into());
    m.insert("broadcast_latency_p99_us".into(), b.p99.into());
    m.insert("broadcast_latency_p999_us".into(), b.p999.into());
    let e = stall;
    let ms = |us: u64| us.saturating_add(500) / 1000;
    m.insert("eviction_stall_p50_ms".into(), ms(e.p50).into());
    m.insert("eviction_stall_p99_ms".into(), ms(e.p99).into());
    m.insert("eviction_stall_max_ms".into(), ms(e.max).into());
    m.insert("queue_depth_connections".into(), depth.connections.into());
    let [_, p95, p99] = depth.frames;
    m.insert("p95_queue_depth".into(), p95.into());
    m.insert("p99_queue_depth".into(), p99.into());
    m.insert("max_queue_depth".into(), depth.max_frames.into());
    let [_, p95, p99] = depth.bytes;
    m.insert("p95_queue_depth_bytes".into(), p95.into());
    m.insert("p99_queue_depth_bytes".into(), p99.into());
    m.insert("max_queue_depth_bytes".into(), depth.max_bytes.into());
}

fn stats_json(state: &State, snaps: &[Snapshot], bridge: Option<&BridgeSnapshot>) -> Value {
    let mut totals = Map::new();
    let mut shards = Vec::with_capacity(snaps.len());
    let captured = capture(state);
    let mut churn = 0.0;
    let no_buckets = |_: &Histogram<u64>, b: &[u64]| Buckets::empty(b);
    for (i, r) in reports(state, snaps, &captured, no_buckets)
        .iter()
        .enumerate()
    {
        let mut m = counters_json(&r.snap);
        sum_into(&mut totals, &m);
        let latency = |k: LatencyKind| &r.latency[k as usize];
        percentiles_json(
            &mut m,
            latency(LatencyKind::Broadcast),
            latency(LatencyKind::EvictionStall),
            &r.depth,
        );
        m.insert("shard".into(), i.into());
        m.insert("buffer_fill_ratio".into(), r.buffer_fill_ratio().into());
        m.insert(
            "connection_churn_per_second".into(),
            r.churn_per_second.into(),
        );
        churn += r.churn_per_second;
        m.insert("driver".into(), r.driver.name().into());
        m.insert("tick_age_ms".into(), r.tick_age_ms.into());
        let latency: Map<String, Value> = LatencyKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), json!(r.latency[*k as usize])))
            .collect();
        m.insert("latency_us".into(), latency.into());
        shards.push(Value::Object(m));
    }
    // The memory limit is one process-wide number (each shard reports it), not a sum; the
    // summed queue_ceiling_bytes is the process ceiling.
    if let Some(first) = snaps.first() {
        totals.insert("memory_limit".into(), first.memory_limit.into());
    }
    // Ratios and rates are not summed: the process's fill is all retained over all ceilings.
    let sum = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    let fill = fill_ratio(sum(|s| s.retained_bytes), sum(|s| s.queue_ceiling_bytes));
    totals.insert("buffer_fill_ratio".into(), fill.into());
    totals.insert("connection_churn_per_second".into(), churn.into());
    // Merged only for the kinds the totals show: merging walks whole histograms.
    let merged =
        |k: LatencyKind| merged_summary(k, captured.iter().map(|c| &c.latency[k as usize]));
    let mut depth = DepthSample::default();
    for c in &captured {
        depth.add(&c.depth);
    }
    percentiles_json(
        &mut totals,
        &merged(LatencyKind::Broadcast),
        &merged(LatencyKind::EvictionStall),
        &depth.summary(),
    );
    let p = process(state);
    let mut out = json!({
        "uptime_seconds": p.uptime_seconds,
        "memory_usage": p.rss_bytes,
        "totals": totals,
        "shards": shards,
    });
    if let Some(r) = p.tls_reloads {
        out["tls_reloads"] = r.reloads.into();
        out["tls_reload_failures"] = r.reload_failures.into();
    }
    if let Some(b) = bridge {
        out["bridge"] = json!(b);
        let origin = state.bridge.as_ref().and_then(|s| s.origin());
        out["bridge"]["origin"] = json!(origin);
    }
    out
}

/// `/histograms?shard=N&kind=K`: the shard's cumulative histogram as an HdrHistogram V2 interval
/// log (one interval: start to now, values in µs).
fn histogram_log(state: &State, shard: Option<&str>, kind: Option<&str>) -> Response {
    let Some(kind) = kind.and_then(LatencyKind::from_name) else {
        return Response::text(
            Status::BadRequest,
            "kind must be handshake, ring_transit, broadcast or eviction_stall\n",
        );
    };
    let Some(shard) = shard.and_then(|s| s.parse::<usize>().ok()) else {
        return Response::text(Status::BadRequest, "shard must be a shard index\n");
    };
    let Some(stats) = state.stats.get(shard) else {
        return Response::text(Status::NotFound, "no such shard\n");
    };
    let hist = stats.latency.clone_of(kind);
    let mut body = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let tag = format!("shard{shard}_{}", kind.name());
    let written = IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "shardcast shard {shard} {}, values in microseconds",
            kind.name()
        ))
        .with_start_time(state.started_wall)
        .with_base_time(state.started_wall)
        .begin_log_with(&mut body, &mut serializer)
        .map_err(|e| e.to_string())
        .and_then(|mut w| {
            w.write_histogram(
                &hist,
                Duration::ZERO,
                state.started.elapsed(),
                Tag::new(&tag),
            )
            .map_err(|e| format!("{e:?}"))
        });
    match written {
        Ok(()) => Response {
            status: Status::Ok,
            content_type: "text/plain; charset=utf-8",
            body,
        },
        Err(e) => {
            tracing::warn!(error = %e, "histogram log failed");
            Response::text(Status::InternalServerError, "histogram log failed\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_reason_from_tick_age() {
        let fresh = Snapshot {
            last_tick_ms: 10_000,
            ..Snapshot::default()
        };
        let stale = Snapshot {
            last_tick_ms: 7_000,
            ..Snapshot::default()
        };
        assert!(unhealthy_reasons(&[fresh, fresh], 12_000, 2000).is_empty());
        assert!(
            unhealthy_reasons(&[stale], 9_000, 2000).is_empty(),
            "exactly at the threshold is healthy"
        );
        let r = unhealthy_reasons(&[fresh, stale], 12_000, 2000);
        assert_eq!(r, vec!["shard 1 stalled: loop has not ticked for 5000 ms"]);
        assert!(
            unhealthy_reasons(&[fresh], 5_000, 2000).is_empty(),
            "a tick newer than now is not a stall"
        );
    }

    #[test]
    fn overload_reason_above_90_percent_of_the_ceiling_share() {
        let at = |retained: u64| Snapshot {
            last_tick_ms: 10_000,
            retained_bytes: retained,
            queue_ceiling_bytes: 1_000,
            ..Snapshot::default()
        };
        assert!(
            unhealthy_reasons(&[at(900)], 10_000, 2000).is_empty(),
            "90% is still healthy"
        );
        assert_eq!(
            unhealthy_reasons(&[at(0), at(901)], 10_000, 2000),
            vec![
                "shard 1 overloaded: queues and mesh backlog hold 901 of its 1000 byte ceiling share (> 90%)"
            ]
        );
        let no_ceiling = Snapshot {
            retained_bytes: u64::MAX,
            ..at(0)
        };
        let unset = Snapshot {
            queue_ceiling_bytes: 0,
            ..no_ceiling
        };
        assert!(
            unhealthy_reasons(&[unset], 10_000, 2000).is_empty(),
            "no ceiling known yet"
        );
    }

    #[test]
    fn totals_sum_nested_counters() {
        let mut a = Snapshot {
            messages_in: 3,
            ..Snapshot::default()
        };
        a.refused[Refusal::NotFound as usize] = 2;
        let mut b = a;
        b.protocol_errors[6] = 1;
        let mut t = Map::new();
        sum_into(&mut t, &counters_json(&a));
        sum_into(&mut t, &counters_json(&b));
        assert_eq!(t["messages_in"], 6);
        assert_eq!(t["refused"]["not_found"], 4);
        assert_eq!(t["protocol_errors"]["other"], 1);
        assert_eq!(t["protocol_errors"]["1002"], 0);
    }
}
