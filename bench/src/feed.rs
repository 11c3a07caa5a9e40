//! `feed`: a realistic JSON market-data feed (`marketdata.rs`: trades, book tickers, 24 h
//! tickers, depth updates; 100 B – 4 KB, ~500 B on average) from one publisher (`/pub/<topic>`)
//! to N subscribers (`/ws/<topic>`) at a fixed rate, with or without permessage-deflate: bytes
//! on the wire and server CPU per delivery.
//!
//! With `--deflate` every subscriber offers permessage-deflate as browsers do
//! (`permessage-deflate; client_max_window_bits`) and the run records what the server
//! answered. Every subscriber counts frames, compressed frames and the bytes it read from its
//! socket (frame headers included); every `--inflate-every`-th one also decodes every message,
//! inflates it (keeping the window between messages when the server did not answer
//! `server_no_context_takeover`, as per-connection compressors such as Node's `ws` do) and
//! compares it with what was published. Inflating at every subscriber would make the
//! generator, not the server, the bottleneck: the sample proves the bytes are right, the
//! counts prove every subscriber got every message.

use crate::common::{self, CommonArgs};
use crate::dial::WsConn;
use crate::marketdata::Feed;
use crate::report::{self, Meter, Window};
use crate::{process, workers};
use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use serde_json::json;
use shardcast_proto::deflate::Inflater;
use shardcast_proto::encode::encode_client_frame;
use shardcast_proto::frame::{parse_header_with, OpCode, Role, RSV1};
use shardcast_proto::{Decoder, DecoderConfig, Event};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What subscribers offer with `--deflate` (Chromium's offer).
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// `feed` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FeedArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Subscribers offer permessage-deflate.
    #[arg(long)]
    pub(crate) deflate: bool,
    /// Every Nth subscriber decodes, inflates and checks every message.
    #[arg(long, default_value_t = 100)]
    pub(crate) inflate_every: usize,
    /// Seed of the feed (the same seed publishes the same bytes).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Wait after the last subscriber connected before publishing, ms.
    #[arg(long, default_value_t = 300)]
    pub(crate) settle_ms: u64,
}

/// State shared by every generator thread.
struct Shared {
    subscribers: usize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    delivered: AtomicU64,
    stop: AtomicBool,
    /// The messages, generated before the run (the sample checks against them).
    messages: Vec<String>,
}

#[derive(Default)]
struct SubStats {
    frames: u64,
    compressed: u64,
    wire_bytes: u64,
    /// Sampled subscribers only: messages decoded and compared, and mismatches.
    checked: u64,
    mismatched: u64,
    end: Option<String>,
}

struct PubStats {
    sent: u64,
    payload_bytes: u64,
    window: Option<Window>,
    error: Option<String>,
}

struct WorkerOut {
    subs: Vec<SubStats>,
    publisher: Option<PubStats>,
    negotiated: Vec<Option<String>>,
}

/// Runs the scenario and prints its result.
pub fn run(args: FeedArgs) -> Result<(), String> {
    let (result, error) = measure(args.clone())?;
    report::emit(&result, args.common.json.as_deref()).map_err(|e| e.to_string())?;
    error.map_or(Ok(()), Err)
}

/// Runs the scenario; the JSON result and why it failed, if it did.
pub fn measure(args: FeedArgs) -> Result<(serde_json::Value, Option<String>), String> {
    let offer = args.deflate.then_some(OFFER);
    let target = args.common.target()?.with_extensions(offer);
    let publisher_target = args.common.target()?;
    let cpus = args.common.cpus()?;
    let total = (args.rate * args.duration).ceil() as usize;
    let mut feed = Feed::new(args.seed);
    let shared = Arc::new(Shared {
        subscribers: args.subscribers,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        messages: (0..total).map(|_| feed.mixed()).collect(),
    });
    let n_workers = cpus.len();
    let (a, sh) = (args.clone(), shared.clone());
    let outs = workers::run(&cpus, move |w| {
        let targets = (target.clone(), publisher_target.clone());
        worker(w, n_workers, a.clone(), targets, sh.clone())
    });
    summarise(&args, &shared, outs)
}

async fn worker(
    w: usize,
    n_workers: usize,
    args: FeedArgs,
    targets: (crate::dial::Target, crate::dial::Target),
    sh: Arc<Shared>,
) -> WorkerOut {
    let (target, pub_target) = targets;
    let c = &args.common;
    let deadline = Instant::now() + Duration::from_secs_f64(c.timeout);
    let path = format!("/ws/{}", c.topic);
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
    let mut fds = Vec::with_capacity(conns.len());
    let mut tasks = Vec::with_capacity(conns.len());
    let mut negotiated = Vec::new();
    for (id, conn) in conns {
        let raw = conn.stream.as_raw_fd();
        fds.push(process::dup_socket(raw).map_err(|_| raw));
        if negotiated.len() < 4 {
            negotiated.push(conn.extensions.clone());
        }
        let sample = args.inflate_every > 0 && (id as usize).is_multiple_of(args.inflate_every);
        tasks.push(monoio::spawn(receive(conn, sh.clone(), sample)));
    }
    let publisher = (w == 0).then(|| {
        let (args, sh) = (args.clone(), sh.clone());
        monoio::spawn(async move { publish(&args, &pub_target, &sh, deadline).await })
    });
    while !sh.stop.load(Ordering::Acquire) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    sh.stop.store(true, Ordering::Release);
    let publisher = match publisher {
        Some(p) => Some(p.await),
        None => None,
    };
    fds.iter().for_each(|fd| {
        process::shutdown_socket(fd.as_ref().map_or_else(|&raw| raw, |d| d.as_raw_fd()))
    });
    let mut subs = Vec::with_capacity(tasks.len());
    for t in tasks {
        subs.push(t.await);
    }
    WorkerOut {
        subs,
        publisher,
        negotiated,
    }
}

/// Read until the stream ends: count frames and bytes; when `sample`, decode, inflate and
/// check every message. Pings are answered (the server's heartbeat).
async fn receive(conn: WsConn, sh: Arc<Shared>, sample: bool) -> SubStats {
    let WsConn {
        mut stream,
        leftover,
        extensions,
        ..
    } = conn;
    let mut st = SubStats {
        wire_bytes: leftover.len() as u64,
        ..SubStats::default()
    };
    let deflate = extensions
        .as_deref()
        .is_some_and(|e| e.starts_with("permessage-deflate"));
    // Keep the window unless the server promised not to use it across messages.
    let takeover = !extensions
        .as_deref()
        .is_some_and(|e| e.contains("server_no_context_takeover"));
    let mut decoder = sample.then(|| {
        let mut d = Decoder::new(DecoderConfig {
            role: Role::Client,
            max_message_size: 1 << 24,
        });
        d.set_permessage_deflate(deflate);
        d
    });
    let mut inflater = Inflater::new(takeover);
    let mut inflated = Vec::new();
    let mut skip = 0u64;
    let mut pongs = BytesMut::new();
    let mut buf = leftover;
    let mut mask = 0x5A3C_96E1u32;
    loop {
        let used = match decoder.as_mut() {
            Some(d) => {
                let mut off = 0;
                loop {
                    let r = d.decode(&mut buf[off..]);
                    let consumed = r.consumed;
                    match r.result {
                        Ok(Some(Event::Message(m))) => {
                            st.frames += 1;
                            let bytes = if m.compressed {
                                st.compressed += 1;
                                inflated.clear();
                                if inflater
                                    .inflate(m.payload.as_bytes(), 1 << 24, &mut inflated)
                                    .is_err()
                                {
                                    st.mismatched += 1;
                                }
                                &inflated[..]
                            } else {
                                m.payload.as_bytes()
                            };
                            let expect = sh.messages.get(st.checked as usize);
                            if expect.map(String::as_bytes) != Some(bytes) {
                                st.mismatched += 1;
                            }
                            st.checked += 1;
                            sh.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(Event::Ping(p))) => {
                            mask = mask.rotate_left(7) ^ 0x9E37_79B9;
                            let m = mask.to_le_bytes();
                            encode_client_frame(&mut pongs, OpCode::Pong, true, p, m);
                        }
                        Ok(Some(Event::Close(_))) => {
                            st.end = Some("server sent close".into());
                        }
                        Ok(_) => {}
                        Err(e) => st.end = Some(format!("protocol: {}", e.reason)),
                    }
                    off += consumed;
                    if consumed == 0 || st.end.is_some() {
                        break off;
                    }
                }
            }
            None => count(&buf, &mut skip, &mut st, &sh, &mut pongs, &mut mask),
        };
        buf.drain(..used);
        if st.end.is_some() {
            return st;
        }
        if !pongs.is_empty() {
            if let Err(e) = stream.write_all(pongs.split().freeze()).await.0 {
                st.end = Some(format!("pong: {e}"));
                return st;
            }
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(32 * 1024);
        }
        let len = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => {
                if !sh.stop.load(Ordering::Acquire) {
                    st.end = Some("server closed the connection".into());
                }
                return st;
            }
            Ok(n) => st.wire_bytes += n as u64,
            Err(e) => {
                if !sh.stop.load(Ordering::Acquire) {
                    st.end = Some(e.to_string());
                }
                return st;
            }
        }
    }
}

/// Count frames in `buf` without looking at payloads; returns the bytes consumed.
fn count(
    buf: &[u8],
    skip: &mut u64,
    st: &mut SubStats,
    sh: &Shared,
    pongs: &mut BytesMut,
    mask: &mut u32,
) -> usize {
    let mut pos = 0;
    loop {
        if *skip > 0 {
            let n = (*skip).min((buf.len() - pos) as u64);
            pos += n as usize;
            *skip -= n;
            if *skip > 0 {
                return pos;
            }
        }
        let h = match parse_header_with(&buf[pos..], Role::Client, RSV1) {
            Ok(Some(h)) => h,
            Ok(None) => return pos,
            Err(e) => {
                st.end = Some(format!("protocol: {}", e.reason));
                return pos;
            }
        };
        let body = pos + h.header_len;
        match h.opcode {
            OpCode::Text | OpCode::Binary => {
                st.frames += 1;
                st.compressed += u64::from(h.rsv & RSV1 != 0);
                sh.delivered.fetch_add(1, Ordering::Relaxed);
            }
            OpCode::Ping => {
                let end = body + h.payload_len as usize;
                if buf.len() < end {
                    return pos;
                }
                *mask = mask.rotate_left(7) ^ 0x9E37_79B9;
                encode_client_frame(
                    pongs,
                    OpCode::Pong,
                    true,
                    &buf[body..end],
                    mask.to_le_bytes(),
                );
            }
            OpCode::Close => {
                st.end = Some("server sent close".into());
                return pos;
            }
            _ => {}
        }
        pos = body;
        *skip = h.payload_len;
    }
}

async fn publish(
    args: &FeedArgs,
    target: &crate::dial::Target,
    sh: &Shared,
    deadline: Instant,
) -> PubStats {
    let mut stats = PubStats {
        sent: 0,
        payload_bytes: 0,
        window: None,
        error: None,
    };
    let all = |sh: &Shared| {
        sh.connected.load(Ordering::Acquire) + sh.failed.load(Ordering::Acquire) >= sh.subscribers
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if !common::wait_until(left, || all(sh)).await {
        stats.error = Some("subscribers did not finish connecting in time".into());
        sh.stop.store(true, Ordering::Release);
        return stats;
    }
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
    let live = sh.connected.load(Ordering::Acquire) as u64;
    let meter = Meter::start(args.common.server_pid);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1e-3));
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut mask = 0x9E37_79B9u32;
    for (i, m) in sh.messages.iter().enumerate() {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            monoio::time::sleep(due - now).await;
        }
        if Instant::now() >= deadline {
            stats.error = Some("run timed out while publishing".into());
            break;
        }
        out.clear();
        mask = mask.rotate_left(5) ^ 0x85EB_CA6B;
        encode_client_frame(
            &mut out,
            OpCode::Text,
            true,
            m.as_bytes(),
            mask.to_le_bytes(),
        );
        let (res, back) = stream.write_all(out).await;
        out = back;
        if let Err(e) = res {
            stats.error = Some(format!("publisher write: {e}"));
            break;
        }
        stats.sent += 1;
        stats.payload_bytes += m.len() as u64;
    }
    // Drain: until every subscriber has every message (bounded).
    let want = stats.sent * live;
    let drain = Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()));
    common::wait_until(drain, || sh.delivered.load(Ordering::Relaxed) >= want).await;
    stats.window = Some(meter.finish(args.common.cpus().map_or(1, |c| c.len())));
    sh.stop.store(true, Ordering::Release);
    stats
}

fn summarise(
    args: &FeedArgs,
    sh: &Shared,
    outs: Vec<WorkerOut>,
) -> Result<(serde_json::Value, Option<String>), String> {
    let mut subs = Vec::new();
    let mut publisher = None;
    let mut negotiated = Vec::new();
    for o in outs {
        subs.extend(o.subs);
        publisher = publisher.or(o.publisher);
        negotiated.extend(o.negotiated);
    }
    let p = publisher.ok_or("no publisher result")?;
    let w = p
        .window
        .clone()
        .ok_or_else(|| p.error.clone().unwrap_or_default())?;
    let deliveries: u64 = subs.iter().map(|s| s.frames).sum();
    let compressed: u64 = subs.iter().map(|s| s.compressed).sum();
    let wire: u64 = subs.iter().map(|s| s.wire_bytes).sum();
    let expected = p.sent * subs.len() as u64;
    let checked: u64 = subs.iter().map(|s| s.checked).sum();
    let mismatched: u64 = subs.iter().map(|s| s.mismatched).sum();
    let ended: Vec<&String> = subs.iter().filter_map(|s| s.end.as_ref()).collect();
    let per = |x: u64| x as f64 / deliveries.max(1) as f64;
    let server_us = w.server_cpu.map(|s| per(s.total_us()));
    let plain_bytes_per_delivery = p.payload_bytes as f64 / p.sent.max(1) as f64;
    let result = json!({
        "scenario": "feed",
        "url": args.common.url,
        "server_pid": args.common.server_pid,
        "subscribers": args.subscribers,
        "subscribers_connected": sh.connected.load(Ordering::Acquire),
        "connect_failures": sh.failed.load(Ordering::Acquire),
        "deflate_offered": args.deflate,
        "negotiated": negotiated.first().cloned().flatten(),
        "rate": args.rate,
        "messages_sent": p.sent,
        "payload_bytes_per_message": plain_bytes_per_delivery,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "compressed_deliveries": compressed,
        "wire_bytes": wire,
        "wire_bytes_per_delivery": per(wire),
        "wire_vs_payload": per(wire) / plain_bytes_per_delivery.max(1e-9),
        "sampled_messages_checked": checked,
        "sampled_mismatches": mismatched,
        "subscribers_ended_early": ended.len(),
        "first_end_reason": ended.first(),
        "publisher_error": p.error,
        "server_cpu_us_per_delivery": server_us,
        "server_user_us_per_delivery": w.server_cpu.map(|s| per(s.user_us)),
        "server_sys_us_per_delivery": w.server_cpu.map(|s| per(s.sys_us)),
        "client_bound": w.client_bound,
        "window_measured": w,
    });
    eprintln!(
        "feed 1->{} {} msg/s {}: {} msgs, {}/{} deliveries ({} compressed), {:.1} wire B/delivery \
         ({:.3} of payload), sample {} checked {} mismatched; {}{}",
        args.subscribers,
        args.rate,
        if args.deflate {
            "deflate offered"
        } else {
            "no offer"
        },
        p.sent,
        deliveries,
        expected,
        compressed,
        per(wire),
        per(wire) / plain_bytes_per_delivery.max(1e-9),
        checked,
        mismatched,
        report::cpu_line(&w),
        server_us.map_or(String::new(), |u| format!("; server {u:.3} us/delivery")),
    );
    let error = if let Some(e) = &p.error {
        Some(format!("run failed: {e}"))
    } else if mismatched > 0 {
        Some(format!(
            "{mismatched} sampled messages did not match what was published"
        ))
    } else if deliveries < expected {
        Some(format!("{} deliveries missing", expected - deliveries))
    } else {
        None
    };
    Ok((result, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_proto::frame::write_header_rsv;

    /// The frame counter sees every frame and its RSV1 bit wherever reads split the stream,
    /// and answers pings.
    #[test]
    fn counts_frames_across_any_split() {
        let mut wire = Vec::new();
        for (rsv, op, len) in [
            (RSV1, OpCode::Text, 3usize),
            (0, OpCode::Binary, 300),
            (RSV1, OpCode::Binary, 70_000),
        ] {
            write_header_rsv(&mut wire, true, rsv, op, None, len as u64);
            wire.extend(std::iter::repeat_n(7u8, len));
        }
        write_header_rsv(&mut wire, true, 0, OpCode::Ping, None, 2);
        wire.extend_from_slice(b"hb");
        let sh = Shared {
            subscribers: 1,
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            messages: Vec::new(),
        };
        for chunk in [1, 5, 4096, wire.len()] {
            let (mut skip, mut st, mut pongs, mut mask) =
                (0, SubStats::default(), BytesMut::new(), 1);
            let mut pending: Vec<u8> = Vec::new();
            for piece in wire.chunks(chunk) {
                pending.extend_from_slice(piece);
                let used = count(&pending, &mut skip, &mut st, &sh, &mut pongs, &mut mask);
                pending.drain(..used);
            }
            assert_eq!((st.frames, st.compressed), (3, 2), "chunk {chunk}");
            assert!(st.end.is_none());
            assert_eq!(pongs.len(), 2 + 4 + 2, "one masked pong");
        }
    }
}
