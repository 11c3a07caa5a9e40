//! The admin listener: `/health`, `/stats`, `/metrics`, `/histograms`, `/dashboard`.
//!
//! It runs off the shards on one plain thread with a blocking std listener, one request per
//! connection (`Connection: close`), and reads only the shards' atomics and their per-tick
//! histogram copies, so observing the server never slows the data path. Requests go through the
//! data path's own [`RequestParser`] with a small head limit and a read timeout, so a slow or
//! hostile admin client holds the thread for at most [`IO_TIMEOUT`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
use crate::obs::stats::{
    monotonic_ms, Discard, DriverKind, Eviction, Refusal, ShardStats, Snapshot, COUNTED_CLOSE_CODES,
};
use crate::runtime::shutdown::Shutdown;
use crate::{obs::dashboard, obs::metrics};

/// Read and write timeout per admin connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

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
    let state = State {
        stats,
        bridge,
        settings,
        started: Instant::now(),
        started_wall: SystemTime::now(),
    };
    let stop = shutdown.clone();
    let handle = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stop.is_triggered() {
                    break;
                }
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(&state, s) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
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

impl Admin {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop the thread: trigger shutdown (idempotent), then one connection wakes its accept.
    pub fn stop(self) {
        self.shutdown.trigger();
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, IO_TIMEOUT).is_ok() {
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

/// Read one request (bounded, with a timeout), answer it, close.
fn serve(state: &State, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut parser = RequestParser::new(RequestLimits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: 32,
    });
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
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
                &reports(state, &snaps, &capture(state)),
                &process(state),
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
    /// Milliseconds since the shard's last tick.
    pub tick_age_ms: u64,
}

/// Process-wide numbers.
pub struct ProcessReport {
    /// Resident set size in bytes, when /proc is readable.
    pub rss_bytes: Option<u64>,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// TLS certificate reloads (SIGHUP), when wss:// is on.
    pub tls_reloads: Option<crate::tls::reload::ReloadSnapshot>,
}

/// One shard's histograms, copied once per request, so a shard's numbers and the merged totals
/// agree even when the shard publishes in between.
struct Captured {
    latency: [Histogram<u64>; KINDS],
    depth: DepthSample,
}

fn capture(state: &State) -> Vec<Captured> {
    state
        .stats
        .iter()
        .map(|s| Captured {
            latency: LatencyKind::ALL.map(|k| s.latency.clone_of(k)),
            depth: s.queue_depth.clone_of(),
        })
        .collect()
}

fn reports(state: &State, snaps: &[Snapshot], captured: &[Captured]) -> Vec<ShardReport> {
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
            tick_age_ms: now.saturating_sub(snap.last_tick_ms),
        })
        .collect()
}

fn process(state: &State) -> ProcessReport {
    ProcessReport {
        rss_bytes: rss_bytes(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
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
    m
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
    for (i, r) in reports(state, snaps, &captured).iter().enumerate() {
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
