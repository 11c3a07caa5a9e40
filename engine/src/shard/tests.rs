//! Tests of the shard core, driven as a driver would (accepts, request bytes, send completions)
//! on a virtual clock. The hub's and the connection task's tests of engine v1 are here with
//! their intent kept: accounting, policies, the ceiling, pauses across shards, the mesh
//! backlog, the bridge, heartbeats; plus what v2 adds: corking, the close path, slot reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardcast_proto::{
    encode_client_frame, encode_close, encode_frame, CloseCode, MessageKind, OpCode,
};

use super::*;
use crate::conn::closing::AbortReason;
use crate::conn::state::{flag, Phase};
use crate::flow::queue::frame_cost;
use crate::mesh::{Envelope, MeshLink};
use crate::obs::stats::{self, Discard, Eviction};
use crate::runtime::driver::{Admit, CloseMode, Gather};

const LOOPBACK: &str = "127.0.0.1:40000";

/// `shards` cores wired through a real mesh (rings of 64), configured by CLI-style `args`, all
/// starting at `t0`.
pub(crate) fn cores(shards: usize, args: &[&str], t0: Instant) -> Vec<Core> {
    cores_on(crate::mesh::mesh(shards, 64), shards, args, t0)
}

/// `shards` cores plus a NATS-bridge participant (the mesh's last link, returned).
fn bridged(
    shards: usize,
    ring: usize,
    args: &[&str],
    t0: Instant,
) -> (Vec<Core>, MeshLink<MeshItem>) {
    let mut links = crate::mesh::mesh(shards + 1, ring);
    let bridge = links.pop().expect("the bridge's link");
    (cores_on(links, shards, args, t0), bridge)
}

fn cores_on(
    links: Vec<MeshLink<MeshItem>>,
    shards: usize,
    args: &[&str],
    t0: Instant,
) -> Vec<Core> {
    use clap::Parser;
    let shards_arg = shards.to_string();
    let mut argv = vec!["shardcast", "--shards", &shards_arg];
    argv.extend_from_slice(args);
    let config = Arc::new(
        crate::config::Overrides::try_parse_from(argv)
            .unwrap()
            .resolve()
            .unwrap(),
    );
    let stats: Arc<[ShardStats]> = (0..shards).map(|_| ShardStats::default()).collect();
    // One open-connection count over the cores, as `server::start` shares it.
    let global = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    links
        .into_iter()
        .enumerate()
        .map(|(i, link)| {
            let mut c = Core::new(i, config.clone(), stats.clone(), link, global.clone(), t0);
            c.handle_time(t0);
            c
        })
        .collect()
}

pub(crate) fn core(args: &[&str]) -> Core {
    cores(1, args, Instant::now()).pop().unwrap()
}

/// Accept a connection from `peer` and send it `request`.
pub(crate) fn connect(core: &mut Core, peer: &str, request: &[u8]) -> ConnId {
    let Admit::Accept(id) = core.handle_accepted(peer.parse::<SocketAddr>().unwrap()) else {
        panic!("refused")
    };
    core.handle_received(id, &mut request.to_vec());
    id
}

pub(crate) fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

/// An upgraded connection on `path`, its 101 already written.
pub(crate) fn open(core: &mut Core, path: &str) -> ConnId {
    let id = connect(core, LOOPBACK, &upgrade_request(path));
    let head = take(core, id);
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    id
}

/// A registered subscriber of `topics` (the first on its path, the rest by SUBSCRIBE).
fn sub(core: &mut Core, topics: &[&str]) -> ConnId {
    let id = open(core, &format!("/ws/{}", topics[0]));
    for t in &topics[1..] {
        core.subscribe(id.slot, t);
    }
    id
}

/// What `id` still has to send, as whole frames (none partially written).
pub(crate) fn frames(core: &Core, id: ConnId) -> Vec<Vec<u8>> {
    core.conn(id)
        .map(|c| {
            c.queue
                .batch(usize::MAX, usize::MAX)
                .map(|f| f.to_vec())
                .collect()
        })
        .unwrap_or_default()
}

/// One gather of `id` as a driver makes it (a send is in flight from now until `handle_sent`):
/// each iovec's bytes, copied.
pub(crate) fn gathered(core: &mut Core, id: ConnId) -> Vec<Vec<u8>> {
    let mut iov = Vec::new();
    core.gather_into(id, &mut Gather::new(&mut iov));
    iov.iter()
        .map(|v| {
            // SAFETY: the core keeps what it gathered alive until `handle_sent` (driver
            // contract 3), which has not been called yet.
            unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec()
        })
        .collect()
}

/// The client reads `n` bytes: one send of the queued frames completes with `n` written.
fn read(core: &mut Core, id: ConnId, n: usize) {
    if n == 0 {
        return;
    }
    let total: usize = gathered(core, id).iter().map(Vec::len).sum();
    if total == 0 {
        return;
    }
    core.handle_sent(id, Ok(n.min(total)));
}

/// Everything `id` has queued, written and returned (as the peer receives it).
pub(crate) fn take(core: &mut Core, id: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let got = gathered(core, id).concat();
        if got.is_empty() {
            return out;
        }
        core.handle_sent(id, Ok(got.len()));
        out.extend(got);
    }
}

/// A driver's flush, with every send completing at once: returns what each connection got and
/// the closes requested (each reported closed right away).
pub(crate) type Flushed = (HashMap<ConnId, Vec<u8>>, Vec<(ConnId, CloseMode)>);

pub(crate) fn flush(core: &mut Core) -> Flushed {
    let mut out: HashMap<ConnId, Vec<u8>> = HashMap::new();
    let mut closes = Vec::new();
    loop {
        while let Some(req) = core.poll_io() {
            if let IoRequest::Close(id, mode) = req {
                closes.push((id, mode));
                core.handle_closed(id);
            }
        }
        let Some(id) = core.poll_transmit() else {
            break;
        };
        let got = gathered(core, id).concat();
        core.handle_sent(id, Ok(got.len()));
        out.entry(id).or_default().extend(got);
    }
    (out, closes)
}

/// Deliver queued mesh items on every core.
fn pump(cores: &mut [Core]) {
    for c in cores.iter_mut() {
        c.flush_mesh();
    }
    for c in cores.iter_mut() {
        c.drain_mesh();
    }
}

pub(crate) fn closing(core: &Core, id: ConnId) -> bool {
    core.conn(id).is_none_or(|c| c.closing())
}

fn is_evicted(core: &Core, id: ConnId) -> bool {
    closing(core, id)
        && frames(core, id)
            .last()
            .is_some_and(|f| f[..4] == [0x88, 17, 0x03, 0xf5])
}

fn unsent(core: &Core, id: ConnId) -> usize {
    core.conn(id).map_or(0, |c| c.unsent())
}

pub(crate) fn client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_client_frame(&mut b, op, true, payload, [1, 2, 3, 4]);
    b.to_vec()
}

#[test]
fn one_frame_to_ten_thousand_queues_counts_once() {
    let mut c = core(&[]);
    let conns: Vec<ConnId> = (0..10_000).map(|_| sub(&mut c, &["t"])).collect();
    assert_eq!(
        (c.ledger().retained(), c.ledger().queued()),
        (0, 0),
        "101s written"
    );
    let payload = vec![b'x'; 500];
    c.publish(&Arc::from("t"), MessageKind::Binary, &payload);
    let len = encode_frame(OpCode::Binary, &payload).len();
    // Real costs: one shared frame; each queue's entry array stays within its floor.
    let frame = frame_cost(len, true);
    assert_eq!(c.ledger().retained(), frame);
    assert_eq!(c.ledger().queued(), 10_000 * len);
    c.publish_gauges();
    let s = c.stats();
    assert_eq!(stats::get(&s.retained_bytes), frame as u64);
    assert_eq!(stats::get(&s.messages_out), 10_000);
    for &id in &conns[..9_999] {
        read(&mut c, id, len);
    }
    assert_eq!(c.ledger().retained(), frame);
    c.end(conns[9_999], CloseMode::Graceful);
    assert_eq!((c.ledger().retained(), c.ledger().queued()), (0, 0));
}

/// Corking: however many frames a connection gets in a turn, the flush writes it once; a
/// broadcast to N connections is N sends, each connection once.
#[test]
fn a_turn_writes_each_connection_once_with_everything_it_got() {
    let mut c = core(&[]);
    let conns: Vec<ConnId> = (0..1000).map(|_| sub(&mut c, &["t"])).collect();
    for i in 0..10u8 {
        c.publish(&Arc::from("t"), MessageKind::Binary, &[i; 20]);
    }
    let mut sends = HashMap::new();
    while let Some(id) = c.poll_transmit() {
        *sends.entry(id).or_insert(0) += 1;
        let got = gathered(&mut c, id).concat();
        assert_eq!(got.len(), 10 * 22, "one gather with all ten frames");
        c.handle_sent(id, Ok(got.len()));
    }
    assert_eq!(sends.len(), 1000);
    assert!(sends.values().all(|&n| n == 1), "each connection once");
    assert!(conns.iter().all(|&id| unsent(&c, id) == 0));
    assert_eq!(c.poll_transmit(), None);
}

/// The bound a driver sizes its send record from: never below what the gather hands over,
/// at most `MAX_IOVECS`.
#[test]
fn the_gather_bound_covers_the_gather_and_stops_at_the_iovec_limit() {
    use crate::runtime::driver::MAX_IOVECS;
    let mut c = core(&[]);
    let id = sub(&mut c, &["t"]);
    assert_eq!(c.gather_bound(id), 0);
    let mut queued = 0;
    for n in [1usize, 3, MAX_IOVECS + 5] {
        while queued < n {
            c.publish(&Arc::from("t"), MessageKind::Binary, &[7; 20]);
            queued += 1;
        }
        assert_eq!(c.gather_bound(id), n.min(MAX_IOVECS));
    }
    assert_eq!(
        gathered(&mut c, id).len(),
        MAX_IOVECS,
        "the bound is what one gather takes"
    );
    let stale = ConnId {
        slot: id.slot,
        gen: id.gen + 1,
    };
    assert_eq!(c.gather_bound(stale), 0, "another generation has nothing");
}

/// A queue drained in a burst keeps its entry array (no shrink and regrow per send) and gives
/// it back, with its charge, on the next tick.
#[test]
fn a_drained_queue_is_trimmed_on_the_tick_not_as_it_drains() {
    let t0 = Instant::now();
    let mut c = cores(1, &[], t0).pop().unwrap();
    let id = sub(&mut c, &["t"]);
    for round in 0..2 {
        for i in 0..100u8 {
            c.publish(&Arc::from("t"), MessageKind::Binary, &[i; 20]);
        }
        assert_eq!(take(&mut c, id).len(), 100 * 22, "round {round}");
        assert_eq!(c.ledger().frame_bytes(), 0);
        assert!(
            c.ledger().slot_bytes() > 0,
            "kept while the burst may go on"
        );
    }
    let tick = crate::obs::tick::TICK.as_millis() as u64;
    c.handle_time(t0 + Duration::from_millis(tick + 1));
    assert_eq!(c.ledger().retained(), 0, "trimmed on the tick");
    assert!(!c.conn(id).unwrap().has(flag::TRIM));
}

/// Driver contract 3: the driver holds no reference to the frames of a send in flight, so the
/// core keeps them until the send's completion (what io_uring reports after cancelling it) or
/// the socket's release (epoll drops a waiting send at close), even when the connection ends
/// meanwhile: its queue and the ledger let go at the end, as before, and the shard keeps a
/// handle to each buffer the send reads. Releasing them any earlier would let the kernel read
/// freed memory.
#[test]
fn frames_of_a_send_in_flight_outlive_the_connections_end_until_its_completion() {
    for completed in [true, false] {
        let mut c = core(&[]);
        let id = sub(&mut c, &["t"]);
        for i in 0..3u8 {
            c.publish(&Arc::from("t"), MessageKind::Binary, &[i; 20]);
        }
        assert_eq!(c.poll_transmit(), Some(id));
        let mut iov = Vec::new();
        c.gather_into(id, &mut Gather::new(&mut iov));
        assert_eq!(iov.len(), 3);
        assert!(c.ledger().frame_bytes() > 0);
        // The peer is gone: the connection ends with the send still in flight.
        c.end(id, CloseMode::Reset);
        let reqs: Vec<_> = std::iter::from_fn(|| c.poll_io()).collect();
        assert!(reqs.contains(&IoRequest::Close(id, CloseMode::Reset)));
        let l = c.ledger();
        assert_eq!(
            (l.retained(), l.queued(), l.entries()),
            (0, 0, 0),
            "uncharged"
        );
        let held = &c.st.ended_in_flight[&id.slot];
        assert_eq!(held.len(), 3);
        for (i, (v, b)) in iov.iter().zip(held).enumerate() {
            assert_eq!(
                v.iov_base as *const u8,
                b.as_ptr(),
                "a live handle to what it reads"
            );
            assert_eq!((v.iov_len, &b[2..]), (b.len(), &[i as u8; 20][..]));
        }
        if completed {
            c.handle_sent(id, Err(std::io::Error::from_raw_os_error(libc::ECANCELED)));
            assert!(
                c.st.ended_in_flight.is_empty(),
                "released at the completion"
            );
        }
        c.handle_closed(id);
        assert!(
            c.st.ended_in_flight.is_empty(),
            "released with the socket at the latest"
        );
        assert_eq!(c.ledger().retained(), 0);
    }
}

#[test]
fn a_send_in_flight_is_never_offered_again_and_its_frames_stay() {
    let mut c = core(&["--topic-policy", "t=conflate,high_water_bytes=50"]);
    let id = sub(&mut c, &["t"]);
    c.publish(&Arc::from("t"), MessageKind::Binary, &[1; 20]);
    assert_eq!(c.poll_transmit(), Some(id));
    let first = gathered(&mut c, id);
    // More arrives while the send is in flight; conflation must not touch the pinned frame.
    for i in 2..6u8 {
        c.publish(&Arc::from("t"), MessageKind::Binary, &[i; 20]);
    }
    assert_eq!(c.poll_transmit(), None, "one send in flight per socket");
    assert_eq!(
        frames(&c, id)[0],
        first[0],
        "the frame being written stays first"
    );
    c.handle_sent(id, Ok(first[0].len()));
    assert_eq!(c.poll_transmit(), Some(id), "the rest goes next");
    let rest = frames(&c, id);
    assert_eq!(rest.last().unwrap()[2], 5, "the newest survived conflation");
}

#[test]
fn evict_policy_closes_1013_and_keeps_a_started_frame() {
    let mut c = core(&["--high-water-bytes", "1000"]);
    let slow = sub(&mut c, &["t"]);
    let fast = sub(&mut c, &["t"]);
    let t: Arc<str> = Arc::from("t");
    for i in 0..4u8 {
        c.publish(&t, MessageKind::Binary, &[i; 298]); // 302-byte frames
        read(&mut c, fast, 302);
    }
    read(&mut c, slow, 10);
    assert!(
        !closing(&c, slow),
        "906 bytes behind the frame being written"
    );
    c.publish(&t, MessageKind::Binary, &[9; 298]); // 906 + 302 > 1000: evict
    assert!(is_evicted(&c, slow));
    let f = frames(&c, slow);
    assert_eq!(f.len(), 2, "rest of the started frame, then the close");
    assert_eq!(f[0].len(), 292);
    assert_eq!(c.stats().evictions(Eviction::HighWater), 1);
    assert_eq!(frames(&c, fast).len(), 1, "fast subscriber unaffected");
    c.publish(&t, MessageKind::Binary, &[1]);
    assert_eq!(frames(&c, slow).len(), 2, "nothing queued after the close");
}

#[test]
fn each_eviction_records_how_long_the_connection_had_stalled() {
    use crate::obs::latency::LatencyKind;
    let t0 = Instant::now();
    let mut c = cores(1, &["--high-water-bytes", "1000"], t0).pop().unwrap();
    // A 600-byte message to `t` published `at`.
    let msg = |t: &str, at| Envelope::encode(Arc::from(t), MessageKind::Binary, &[0; 600], at);
    let stalls = |c: &Core| {
        c.latency().publish(&c.stats().latency);
        c.stats().latency.clone_of(LatencyKind::EvictionStall)
    };
    let within = |us: u64, secs: u64| us.abs_diff(secs * 1_000_000) <= secs * 20_000;
    let a = sub(&mut c, &["a"]);
    let b = sub(&mut c, &["b"]);
    // 20 s later: a made no progress for 20 s; its oldest frame was published 10 s ago.
    let now = t0 + Duration::from_secs(20);
    c.handle_time(now);
    c.deliver(&msg("a", now - Duration::from_secs(10)));
    c.deliver(&msg("a", now - Duration::from_millis(1)));
    c.deliver(&msg("a", now)); // 1208 > 1000 bytes behind the head: evicted
    assert!(is_evicted(&c, a));
    let h = stalls(&c);
    assert_eq!(h.len(), 1);
    assert!(within(h.max(), 10), "{}", h.max());
    // b: its queue filled only 2 s ago.
    c.deliver(&msg("b", now - Duration::from_secs(2)));
    c.deliver(&msg("b", now - Duration::from_millis(1)));
    c.deliver(&msg("b", now));
    let h = stalls(&c);
    assert!(within(h.min(), 2), "{}", h.min());
    // One message alone over the mark, on an empty queue, is no reason to evict (isolation);
    // evicted for the ceiling right away, it had not stalled at all.
    let d = sub(&mut c, &["d"]);
    c.publish(&Arc::from("d"), MessageKind::Binary, &[0; 2000]);
    assert!(!closing(&c, d), "a frame alone never makes a client slow");
    c.st.evict(d.slot, Eviction::Ceiling);
    assert!(is_evicted(&c, d));
    c.st.evict(d.slot, Eviction::Ceiling); // already closing: not evicted (or recorded) twice
    let h = stalls(&c);
    assert_eq!(h.len(), 3, "one sample per eviction");
    assert_eq!(h.min(), 1, "a zero stall is recorded as the 1 µs floor");
    assert_eq!(c.stats().evictions(Eviction::HighWater), 2);
    let _ = b;
}

#[test]
fn conflate_keeps_newest_per_topic_and_counts() {
    let mut c = core(&["--topic-policy", "tick.*=conflate,high_water_bytes=100"]);
    let id = sub(&mut c, &["tick.a", "tick.b"]);
    for i in 0..10u8 {
        c.publish(&Arc::from("tick.a"), MessageKind::Binary, &[i; 30]);
        c.publish(&Arc::from("tick.b"), MessageKind::Binary, &[100 + i; 30]);
    }
    let last: Vec<u8> = frames(&c, id).iter().map(|f| f[2]).collect();
    assert_eq!(last, vec![9, 109]);
    assert_eq!(c.stats().dropped(Discard::Conflated), 18);
    assert!(!closing(&c, id));
}

#[test]
fn drop_oldest_keeps_exactly_the_newest_n() {
    let mut c = core(&[
        "--topic-policy",
        "d=drop-oldest,high_water_bytes=100,keep=3",
    ]);
    let id = sub(&mut c, &["d", "other"]);
    c.publish(&Arc::from("other"), MessageKind::Binary, &[200; 30]);
    for i in 0..20u8 {
        c.publish(&Arc::from("d"), MessageKind::Binary, &[i; 30]);
    }
    let got: Vec<u8> = frames(&c, id).iter().map(|f| f[2]).collect();
    assert_eq!(got, vec![200, 17, 18, 19], "other topics untouched");
    assert_eq!(c.stats().dropped(Discard::DropOldest), 17);
}

#[test]
fn pause_spans_shards_and_releases_below_low_water_or_on_disconnect() {
    let args = [
        "--topic-policy",
        "p=pause,high_water_bytes=100,low_water_bytes=40",
    ];
    let mut cs = cores(2, &args, Instant::now());
    let a = sub(&mut cs[0], &["p"]);
    let b = sub(&mut cs[0], &["p"]);
    let p: Arc<str> = Arc::from("p");
    // 32-byte frames; the one being written does not count (isolation): 4 fit under 100.
    for _ in 0..4 {
        cs[1].publish(&p, MessageKind::Binary, &[1; 30]);
    }
    pump(&mut cs);
    assert!(!cs[1].is_paused("p"));
    cs[1].publish(&p, MessageKind::Binary, &[1; 30]);
    pump(&mut cs);
    assert!(cs[0].is_paused("p"), "local subscribers hold it");
    pump(&mut cs);
    assert!(cs[1].is_paused("p"), "the notice crossed the mesh");
    assert!(!cs[1].is_paused("q"), "other topics unaffected");
    assert_eq!(frames(&cs[0], a).len(), 5, "pause drops nothing");
    assert_eq!(stats::get(&cs[0].stats().pauses_total), 2);
    read(&mut cs[0], a, 60); // a: 96 behind its head > 40: still holds
    pump(&mut cs);
    assert!(cs[1].is_paused("p"));
    read(&mut cs[0], a, 60); // a: 32 behind its head: released; b still holds
    pump(&mut cs);
    assert!(cs[1].is_paused("p"));
    cs[0].end(b, CloseMode::Graceful); // a paused subscriber that leaves releases its pause
    pump(&mut cs);
    assert!(!cs[0].is_paused("p") && !cs[1].is_paused("p"));
    assert_eq!(stats::get(&cs[1].stats().paused_topics), 0);
}

/// A publisher on a paused topic is stopped within one message of the pause even though its
/// whole burst arrived at once; the rest waits, undecoded, and is published in order when the
/// subscriber drains (the client sends nothing more). Its reads stop and restart.
#[test]
fn paused_publisher_overshoots_by_at_most_one_message_and_resumes() {
    let mut c = core(&[
        "--topic-policy",
        "t=pause,high_water_bytes=300,low_water_bytes=0",
    ]);
    let s = sub(&mut c, &["t"]);
    let p = open(&mut c, "/pub/t");
    let mut burst = Vec::new();
    for i in 0..200u32 {
        let mut m = [0u8; 100];
        m[..4].copy_from_slice(&i.to_be_bytes());
        burst.extend(client_frame(OpCode::Binary, &m));
    }
    c.handle_received(p, &mut burst);
    // 102-byte frames: three fit under 300 (the one being written does not count); the
    // fourth pauses and is the only overshoot.
    assert_eq!(c.ledger().queued(), 4 * 102);
    assert!(c.conn(p).unwrap().has(flag::STOPPED));
    let mut reqs = Vec::new();
    while let Some(r) = c.poll_io() {
        reqs.push(r);
    }
    assert!(reqs.contains(&IoRequest::StopRead(p)), "{reqs:?}");
    let mut got = Vec::new();
    for _ in 0..1000 {
        for f in frames(&c, s) {
            got.push(u32::from_be_bytes(f[2..6].try_into().unwrap()));
        }
        let n = unsent(&c, s);
        read(&mut c, s, n);
        c.drain_mesh(); // runs the resumes
        if got.len() == 200 {
            break;
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert!(!c.conn(p).unwrap().has(flag::STOPPED));
    let mut reqs = Vec::new();
    while let Some(r) = c.poll_io() {
        reqs.push(r);
    }
    assert!(
        reqs.contains(&IoRequest::Read(p)),
        "reads restart: {reqs:?}"
    );
}

#[test]
fn ceiling_is_never_exceeded_and_evicts_largest_first() {
    // 64 MiB at 5% over 1 shard: 3,355,443 bytes.
    let mut c = core(&["--memory-limit", "64MiB", "--high-water-bytes", "100MiB"]);
    let budget = c.governor().budget;
    assert_eq!(budget, 3_355_443);
    let conns: Vec<ConnId> = (0..40)
        .map(|i| sub(&mut c, &[["a", "b", "c", "d"][i % 4]]))
        .collect();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut evicted = 0usize;
    for step in 0..4000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let topic = ["a", "b", "c", "d"][(x % 4) as usize];
        let size = 1000 + (x >> 8) as usize % 60_000;
        let before: Vec<(usize, bool)> = conns
            .iter()
            .map(|&id| (unsent(&c, id), closing(&c, id)))
            .collect();
        c.publish(&Arc::from(topic), MessageKind::Binary, &vec![0; size]);
        assert!(
            c.ledger().retained() <= budget,
            "step {step}: over the ceiling"
        );
        let newly: Vec<usize> = (0..conns.len())
            .filter(|&i| !before[i].1 && closing(&c, conns[i]))
            .collect();
        if let Some(min_evicted) = newly.iter().map(|&i| before[i].0).min() {
            let max_kept = (0..conns.len())
                .filter(|&i| !closing(&c, conns[i]))
                .map(|i| before[i].0)
                .max()
                .unwrap_or(0);
            assert!(min_evicted >= max_kept, "step {step}: not largest first");
            evicted += newly.len();
        }
        if step % 7 == 0 {
            let id = conns[(x >> 20) as usize % conns.len()];
            let n = unsent(&c, id).min(5000);
            read(&mut c, id, n);
            assert!(c.ledger().retained() <= budget);
        }
    }
    assert!(c.stats().evictions(Eviction::Ceiling) > 0);
    assert_eq!(c.stats().evictions(Eviction::Ceiling), evicted as u64);
}

#[test]
fn close_all_shares_one_counted_close_frame() {
    let mut c = core(&[]);
    let conns: Vec<ConnId> = (0..1000).map(|_| sub(&mut c, &["t"])).collect();
    let close = encode_close(CloseCode::GOING_AWAY, "");
    c.close_all(&close);
    assert_eq!(
        (c.ledger().frame_bytes(), c.ledger().retained()),
        (frame_cost(close.len(), true), frame_cost(close.len(), true)),
        "one frame, one slot per connection"
    );
    for &id in &conns {
        assert!(closing(&c, id));
        assert_eq!(frames(&c, id), vec![close.to_vec()]);
    }
    for &id in &conns {
        read(&mut c, id, close.len());
    }
    assert_eq!(c.ledger().retained(), 0);
}

/// A publisher on shard 0 keeps publishing while shard 1 does not drain: the backlog is
/// charged to shard 0, which never goes over its budget; the publisher is stopped (and
/// counted) instead of anything being dropped, resumes once shard 1 catches up, and every
/// message arrives in order.
#[test]
fn mesh_backlog_stops_the_publisher_within_budget_and_loses_nothing() {
    let args = ["--memory-limit", "64MiB", "--high-water-bytes", "100MiB"];
    let mut cs = cores(2, &args, Instant::now());
    let budget = cs[0].governor().budget;
    let hog = sub(&mut cs[0], &["t"]);
    let local = sub(&mut cs[0], &["t"]);
    let remote = sub(&mut cs[1], &["t"]);
    let t: Arc<str> = Arc::from("t");
    let seq = |f: &[u8]| u32::from_be_bytes(f[4..8].try_into().unwrap());
    let take_seqs = |c: &mut Core, id: ConnId, got: &mut Vec<u32>| {
        let f = frames(c, id);
        got.extend(f.iter().map(|f| seq(f)));
        read(c, id, f.iter().map(Vec::len).sum());
    };
    let (mut got_local, mut got_remote) = (Vec::new(), Vec::new());
    let (mut published, mut stops, mut max_mesh) = (0u32, 0u64, 0usize);
    const N: u32 = 3000;
    while published < N {
        if cs[0].mesh_stalled() {
            stops += 1;
            cs[0].flush_mesh();
            assert!(
                cs[0].mesh_stalled(),
                "nothing drained shard 1: still stalled"
            );
            for _ in 0..1000 {
                if !cs[0].mesh_stalled() {
                    break;
                }
                pump(&mut cs);
                take_seqs(&mut cs[1], remote, &mut got_remote);
            }
            continue;
        }
        let mut payload = vec![0u8; 1000];
        payload[..4].copy_from_slice(&published.to_be_bytes());
        cs[0].publish(&t, MessageKind::Binary, &payload);
        published += 1;
        if published % 16 == 0 {
            cs[0].flush_mesh(); // once per turn
        }
        let mesh = cs[0].link().mesh_bytes();
        max_mesh = max_mesh.max(mesh);
        assert!(
            cs[0].ledger().retained() + mesh <= budget,
            "{published}: over the budget"
        );
        assert!(
            mesh <= cs[0].governor().mesh_limit + 1100,
            "{published}: gate missed"
        );
        take_seqs(&mut cs[0], local, &mut got_local);
    }
    for _ in 0..1000 {
        pump(&mut cs);
        take_seqs(&mut cs[1], remote, &mut got_remote);
        if got_remote.len() == N as usize {
            break;
        }
    }
    cs[0].flush_mesh();
    assert_eq!(
        got_remote,
        (0..N).collect::<Vec<_>>(),
        "in order, nothing lost"
    );
    assert_eq!(got_local, (0..N).collect::<Vec<_>>());
    assert!(
        max_mesh > cs[0].governor().mesh_limit,
        "the backlog reached the gate"
    );
    assert!(stops >= 2, "stopped {stops} times");
    assert_eq!(cs[0].link().mesh_bytes(), 0);
    assert!(
        closing(&cs[0], hog),
        "the never-reading local subscriber made room"
    );
    assert!(cs[0].stats().evictions(Eviction::Ceiling) >= 1);
}

/// Shard 1 drains only between turns: shard 0's mesh backlog stops a WebSocket publisher
/// mid-read within one message of its share; it is counted, resumed by the drain, and every
/// message arrives in order.
#[test]
fn mesh_backlog_stops_the_publisher_mid_read_and_resumes_it() {
    let mut cs = cores(2, &["--memory-limit", "1MiB"], Instant::now());
    let s = sub(&mut cs[1], &["t"]);
    let p = open(&mut cs[0], "/pub/t");
    let mut burst = Vec::new();
    for i in 0..400u32 {
        let mut m = [0u8; 100];
        m[..4].copy_from_slice(&i.to_be_bytes());
        burst.extend(client_frame(OpCode::Binary, &m));
    }
    cs[0].handle_received(p, &mut burst);
    let one = MeshLink::<MeshItem>::broadcast_charge(102, 1);
    let mut got = Vec::new();
    let mut most = 0;
    for _ in 0..5000 {
        let mesh = cs[0].link().mesh_bytes();
        most = most.max(mesh);
        assert!(cs[0].ledger().retained() + mesh <= cs[0].governor().budget);
        pump(&mut cs);
        for f in frames(&cs[1], s) {
            got.push(u32::from_be_bytes(f[2..6].try_into().unwrap()));
        }
        let n = unsent(&cs[1], s);
        read(&mut cs[1], s, n);
        if got.len() == 400 {
            break;
        }
    }
    assert_eq!(got, (0..400).collect::<Vec<_>>());
    let limit = cs[0].governor().mesh_limit;
    assert!(most <= limit + one, "{most} > {limit} + {one}");
    assert!(
        stats::get(&cs[0].stats().mesh_stalls_total) >= 1,
        "never stopped"
    );
}

#[test]
fn too_many_slow_clients_evicts_the_slowest() {
    let mut c = core(&[
        "--topic-policy",
        "*=drop-oldest,high_water_bytes=100,keep=100",
    ]);
    let conns: Vec<ConnId> = (0..20).map(|_| sub(&mut c, &["t"])).collect();
    // Ten slow clients of 20 connections: the limit is max(0.5%, 8) = 8.
    c.publish(&Arc::from("t"), MessageKind::Binary, &[0; 98]);
    for &id in &conns[10..] {
        read(&mut c, id, 100);
    }
    for (i, &id) in conns[..10].iter().enumerate() {
        read(&mut c, id, i); // client i is i bytes ahead: lower i = slower
    }
    c.publish(&Arc::from("t"), MessageKind::Binary, &[0; 98]);
    assert_eq!(
        c.slow_clients(),
        0,
        "100 behind the head: at the mark, not over"
    );
    c.publish(&Arc::from("t"), MessageKind::Binary, &[0; 98]);
    assert_eq!(c.slow_clients(), 8);
    let evicted: Vec<usize> = (0..20).filter(|&i| closing(&c, conns[i])).collect();
    assert_eq!(evicted, vec![0, 1], "the two slowest");
    assert_eq!(c.stats().evictions(Eviction::SlowClients), 2);
}

/// With a bridge participant, a shard tells it about its first and last subscriber of a topic,
/// and forwards local publishes but not what it receives from the mesh.
#[test]
fn bridge_gets_interest_transitions_and_local_publishes_only() {
    let (mut cs, mut bridge) = bridged(2, 64, &[], Instant::now());
    let seen = |cs: &mut [Core], bridge: &mut MeshLink<MeshItem>| {
        for c in cs.iter_mut() {
            c.flush_mesh();
        }
        let mut out = Vec::new();
        bridge.try_drain(|i| {
            out.push(match i {
                MeshItem::Interest { topic, shard, on } => format!("{shard}:{topic}:{on}"),
                MeshItem::Publish(e) => format!("pub:{}", e.topic),
                // Continuity: local publishes reach the bridge from their topic's home shard.
                MeshItem::Numbered(b) => format!("pub:{}", b.0.topic),
                MeshItem::Pause(t) | MeshItem::Resume(t) => format!("pause:{t}"),
                MeshItem::Deflate { topic, on, .. } => format!("deflate:{topic}:{on}"),
                other => format!("other:{other:?}"),
            })
        });
        out
    };
    let a = sub(&mut cs[0], &["t", "u"]);
    let b = sub(&mut cs[0], &["t"]);
    let c = sub(&mut cs[1], &["t"]);
    assert_eq!(
        seen(&mut cs, &mut bridge),
        ["0:t:true", "0:u:true", "1:t:true"]
    );
    cs[0].unsubscribe(a.slot, "t"); // b still holds t on shard 0
    cs[0].unsubscribe(a.slot, "t"); // not subscribed any more: nothing
    assert!(seen(&mut cs, &mut bridge).is_empty());
    cs[0].publish(&Arc::from("t"), MessageKind::Text, b"1");
    pump(&mut cs); // shard 1 delivers it; it does not forward it again
    assert_eq!(seen(&mut cs, &mut bridge), ["pub:t"]);
    assert_eq!(frames(&cs[1], c).len(), 1);
    cs[0].end(b, CloseMode::Graceful);
    cs[0].end(a, CloseMode::Graceful);
    cs[1].unsubscribe(c.slot, "t");
    assert_eq!(
        seen(&mut cs, &mut bridge),
        ["0:t:false", "0:u:false", "1:t:false"]
    );
}

/// Forwards to a bridge that does not drain stop at its ring plus one ring's worth of
/// overflow, counted; other shards still get everything.
#[test]
fn forwards_to_a_stuck_bridge_are_bounded_and_counted() {
    let (mut cs, mut bridge) = bridged(2, 4, &["--ring-capacity", "4"], Instant::now());
    // Local publishes reach the bridge from the topic's home shard (continuity numbers them
    // there): publish on it, subscribe on the other.
    let h = crate::continuity::home_shard("t", 2);
    let c = sub(&mut cs[1 - h], &["t"]);
    cs[1 - h].flush_mesh();
    let mut notices = 0;
    bridge.try_drain(|_| notices += 1);
    assert_eq!(notices, 1, "shard 1's interest in t");
    for i in 0..20u8 {
        cs[h].publish(&Arc::from("t"), MessageKind::Binary, &[i]);
        pump(&mut cs);
    }
    assert_eq!(
        frames(&cs[1 - h], c).len(),
        20,
        "the other shard lost nothing"
    );
    assert_eq!(stats::get(&cs[h].stats().bridge_dropped), 12);
    let mut forwarded = 0;
    cs[h].flush_mesh();
    bridge.try_drain(|_| forwarded += 1);
    cs[h].flush_mesh();
    bridge.try_drain(|_| forwarded += 1);
    assert_eq!(forwarded, 8, "ring (4) + overflow (4)");
}

#[test]
fn fan_out_shares_one_frame_and_wraps_for_streams() {
    let mut c = core(&[]);
    let plain = open(&mut c, "/ws/t");
    let stream = open(&mut c, "/stream?streams=t");
    c.publish(&Arc::from("t"), MessageKind::Text, b"1");
    assert_eq!(&frames(&c, plain)[0][2..], b"1");
    assert_eq!(&frames(&c, stream)[0][2..], br#"{"stream":"t","data":1}"#);
    c.publish(&Arc::from("t"), MessageKind::Binary, b"\x00");
    assert_eq!(frames(&c, plain).len(), 2);
    assert_eq!(
        frames(&c, stream).len(),
        2,
        "binary goes unwrapped to streams"
    );
    c.end(plain, CloseMode::Graceful);
    c.publish(&Arc::from("t"), MessageKind::Binary, b"\x01");
    assert!(frames(&c, plain).is_empty(), "ended: queue released");
    assert_eq!(frames(&c, stream).len(), 3);
}

#[test]
fn heartbeat_sweep_pings_shared_and_closes_with_counts_on_a_virtual_clock() {
    let t0 = Instant::now();
    let args = [
        "--ping-interval-ms",
        "100",
        "--pong-timeout-ms",
        "30",
        "--idle-timeout-ms",
        "1000",
        "--max-lifetime-ms",
        "5000",
        "--lifetime-jitter-pct",
        "0",
        // A pong every 10 ms below is over the default inbound rate limit (5/s).
        "--subscriber-rate",
        "0",
    ];
    let mut c = cores(1, &args, t0).pop().unwrap();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let conns: Vec<ConnId> = (0..3).map(|_| sub(&mut c, &["t"])).collect();
    c.handle_time(at(100));
    let s = c.stats();
    assert_eq!(stats::get(&s.pings_sent_total), 3);
    let pings: Vec<Vec<u8>> = conns.iter().map(|&id| frames(&c, id)[0].clone()).collect();
    assert!(
        pings.iter().all(|p| p[..] == [0x89, 0x00]),
        "empty ping frames"
    );
    // conn 0 answers (any frame); conn 2 stays silent.
    for &id in &conns {
        take(&mut c, id);
    }
    c.handle_received(conns[0], &mut client_frame(OpCode::Pong, b""));
    c.handle_time(at(130));
    assert_eq!(stats::get(&c.stats().heartbeat_timeouts_total), 2);
    assert!(!closing(&c, conns[0]));
    assert!(
        closing(&c, conns[2]) && c.conn(conns[2]).unwrap().has(flag::ABORT),
        "dead: abort"
    );
    assert_eq!(
        frames(&c, conns[2]),
        vec![encode_close(CloseCode::GOING_AWAY, "pong timeout").to_vec()]
    );
    // The abort ends without a linger once its close is written, reset if the kernel still
    // holds bytes for the silent peer.
    let (_, closes) = flush(&mut c);
    assert!(
        closes.contains(&(conns[2], CloseMode::ResetIfUnsent)),
        "{closes:?}"
    );
    assert!(c.conn(conns[2]).is_none(), "slot freed");
    // The freed slot left every topic: its next occupant gets nothing published to them.
    let e = open(&mut c, "/echo");
    assert_eq!(e.slot, conns[2].slot);
    c.publish(&Arc::from("t"), MessageKind::Text, b"not yours");
    assert!(frames(&c, e).is_empty());
    c.end(e, CloseMode::Graceful);
    // conn 0 silent from 130 on, and no sweep runs until 1200: idle, an orderly close.
    take(&mut c, conns[0]);
    c.handle_time(at(1200));
    assert_eq!(stats::get(&c.stats().idle_timeouts_total), 1);
    assert!(closing(&c, conns[0]) && !c.conn(conns[0]).unwrap().has(flag::ABORT));
    // A new connection active until just before its lifetime ends.
    let late = sub(&mut c, &["t"]);
    let mut t = 1200;
    while t < 6190 {
        t += 10;
        c.handle_time(at(t));
        take(&mut c, late);
        c.handle_received(late, &mut client_frame(OpCode::Pong, b""));
    }
    assert!(!closing(&c, late));
    c.handle_time(at(6200));
    assert_eq!(stats::get(&c.stats().lifetime_closes_total), 1);
    assert_eq!(
        frames(&c, late).last().unwrap()[..],
        encode_close(CloseCode::GOING_AWAY, "max connection lifetime")[..]
    );
}

/// The close path on a virtual clock: a request not complete in time gets 408 and lingers; a
/// final frame that cannot be written in time ends the connection; an orderly close
/// half-closes, lingers until EOF, then closes; the slot is reused with a new generation and
/// a stale id reaches nothing.
#[test]
fn close_path_and_slot_reuse_on_a_virtual_clock() {
    let t0 = Instant::now();
    let mut c = cores(1, &["--handshake-timeout-ms", "500"], t0)
        .pop()
        .unwrap();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // Slowloris: half a request, then nothing.
    let slow = connect(&mut c, LOOPBACK, b"GET /ws/t HTTP/1.1\r\nHost:");
    c.handle_time(at(400));
    assert_eq!(c.conn(slow).unwrap().phase, Phase::Http);
    c.handle_time(at(600));
    let head = take(&mut c, slow);
    assert!(
        head.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(
        c.stats()
            .refused(crate::obs::stats::Refusal::HandshakeTimeout),
        1
    );
    let mut reqs = Vec::new();
    while let Some(r) = c.poll_io() {
        reqs.push(r);
    }
    assert!(
        reqs.contains(&IoRequest::ShutdownWrite(slow)),
        "flushed: half-close {reqs:?}"
    );
    assert_eq!(c.conn(slow).unwrap().phase, Phase::Linger);
    c.handle_read_closed(slow, false); // the peer's EOF ends the linger
    assert_eq!(
        c.poll_io(),
        Some(IoRequest::Close(slow, CloseMode::Graceful))
    );
    assert_eq!(c.active(), 1, "counted until the driver reports it closed");
    c.handle_closed(slow);
    assert_eq!(c.active(), 0);
    // The slot is reused; the stale id reaches nothing.
    let next = open(&mut c, "/ws/t");
    assert_eq!(next.slot, slow.slot);
    assert_ne!(next.gen, slow.gen);
    c.handle_received(slow, &mut client_frame(OpCode::Ping, b"x"));
    c.handle_sent(slow, Ok(10));
    assert!(
        frames(&c, next).is_empty(),
        "nothing reached the new occupant"
    );
    // A client that never reads: its close frame cannot go out; the flush deadline resets it
    // (isolation: its fd and kernel buffers are freed at once), counted as an abort.
    c.handle_time(at(1000));
    c.st.close_with_bytes(next.slot, encode_close(CloseCode::NORMAL, ""));
    assert_eq!(c.poll_transmit(), Some(next));
    gathered(&mut c, next);
    let flush = c.st.close_flush_ms();
    c.handle_time(at(1000 + u64::from(flush) - 100));
    let early: Vec<_> = std::iter::from_fn(|| c.poll_io()).collect();
    assert!(
        !early.iter().any(|r| matches!(r, IoRequest::Close(..))),
        "not before the deadline: {early:?}"
    );
    c.handle_time(at(1000 + u64::from(flush) + 100));
    let mut reqs = Vec::new();
    while let Some(r) = c.poll_io() {
        reqs.push(r);
    }
    assert!(
        reqs.contains(&IoRequest::Close(next, CloseMode::Reset)),
        "{reqs:?}"
    );
    assert_eq!(c.stats().aborts(AbortReason::CloseTimeout), 1);
    c.handle_sent(next, Err(std::io::ErrorKind::Interrupted.into())); // the cancelled send
    c.handle_closed(next);
    assert_eq!((c.active(), c.ledger().retained()), (0, 0));
}

#[test]
fn max_connections_is_one_count_over_the_shards() {
    // A limit of 3 over 2 shards: one shard may hold all 3 (no per-shard share), the fourth is
    // refused whichever shard accepts it, and a close anywhere makes room everywhere.
    let mut c = cores(2, &["--max-connections", "3"], Instant::now());
    let held: Vec<ConnId> = (0..3).map(|_| sub(&mut c[0], &["t"])).collect();
    for core in c.iter_mut() {
        let Admit::Refuse(r) = core.handle_accepted(LOOPBACK.parse().unwrap()) else {
            panic!("over the global limit")
        };
        assert!(r.starts_with(b"HTTP/1.1 503"));
        assert_eq!(
            core.stats()
                .refused(crate::obs::stats::Refusal::MaxConnections),
            1
        );
    }
    c[0].handle_closed(held[0]);
    sub(&mut c[1], &["t"]);
}

#[test]
fn admission_refuses_over_the_shard_limit_and_requests_are_routed() {
    let mut c = core(&["--max-connections-per-shard", "1"]);
    let ok = connect(&mut c, LOOPBACK, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    let Admit::Refuse(r) = c.handle_accepted(LOOPBACK.parse().unwrap()) else {
        panic!("over the limit")
    };
    assert!(r.starts_with(b"HTTP/1.1 503"));
    assert!(take(&mut c, ok).starts_with(b"HTTP/1.1 404"));
    assert_eq!(c.stats().refused(crate::obs::stats::Refusal::NotFound), 1);
    // An HTTP publish arriving in pieces: head, then the body in two reads.
    let mut c = core(&[]);
    let s = sub(&mut c, &["t"]);
    let p = connect(
        &mut c,
        LOOPBACK,
        b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhe",
    );
    assert!(frames(&c, s).is_empty(), "body incomplete");
    c.handle_received(p, &mut b"llo".to_vec());
    assert_eq!(&frames(&c, s)[0][2..], b"hello");
    assert!(take(&mut c, p).starts_with(b"HTTP/1.1 204"));
}

#[test]
fn an_idle_connection_keeps_no_buffer_or_decoder() {
    let mut c = core(&[]);
    let id = sub(&mut c, &["t"]);
    let conn = c.conn(id).unwrap();
    assert!(conn.http.is_none() && conn.rx.is_none() && conn.paused.is_none());
    // Half a frame keeps a decoder and the partial bytes; the rest releases both.
    let f = client_frame(OpCode::Text, br#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#);
    c.handle_received(id, &mut f[..5].to_vec());
    assert!(c.conn(id).unwrap().rx.is_some());
    c.handle_received(id, &mut f[5..].to_vec());
    assert!(c.conn(id).unwrap().rx.is_none());
    assert_eq!(&take(&mut c, id)[2..], br#"{"result":["t"],"id":1}"#);
}

/// Engine v1 needed activity "pokes" because its runtime fired the backlog retry timer only when
/// nothing else ran. The loop flushes the mesh every turn; an idle shard with a backlog waits at
/// most `MESH_RETRY_MS`, and one with nothing pending until its next timer.
#[test]
fn a_mesh_backlog_caps_the_wait_and_an_idle_shard_sleeps_until_its_timer() {
    let mut cs = cores(2, &["--memory-limit", "1MiB"], Instant::now());
    cs[0].flush_mesh();
    let idle = cs[0].poll_timeout();
    assert!(idle > Duration::from_millis(MESH_RETRY_MS), "{idle:?}");
    let t: Arc<str> = Arc::from("t");
    while !cs[0].mesh_stalled() {
        cs[0].publish(&t, MessageKind::Binary, &[0; 100]);
    }
    cs[0].flush_mesh();
    assert!(cs[0].poll_timeout() <= Duration::from_millis(MESH_RETRY_MS));
    // Shard 1 catches up: the backlog releases and the cap goes away.
    for _ in 0..100 {
        pump(&mut cs);
        if !cs[0].mesh_stalled() {
            break;
        }
    }
    cs[0].flush_mesh();
    assert!(!cs[0].mesh_stalled());
    assert!(cs[0].poll_timeout() > Duration::from_millis(MESH_RETRY_MS));
}

/// Isolation: what a socket's kernel send buffer holds (reported by the driver after a large
/// send) counts toward the high-water mark, and toward the ceiling only while the connection
/// is slow; it goes with the connection.
#[test]
fn kernel_send_buffer_bytes_count_toward_the_mark_and_while_slow_the_ceiling() {
    let mut c = core(&["--high-water-bytes", "1000"]);
    let a = sub(&mut c, &["t"]);
    let b = sub(&mut c, &["t"]);
    let t: Arc<str> = Arc::from("t");
    c.publish(&t, MessageKind::Binary, &[0; 298]); // 302-byte frames
    read(&mut c, a, 302);
    read(&mut c, b, 302);
    c.kernel_held(a, 900);
    assert_eq!(unsent(&c, a), 900);
    assert_eq!((c.ledger().kernel(), c.ledger().kernel_charged()), (900, 0));
    c.publish(&t, MessageKind::Binary, &[1; 298]); // the frame in progress: exempt
    assert!(!closing(&c, a));
    c.publish(&t, MessageKind::Binary, &[2; 298]); // 900 + 302 behind the head: evicted
    assert!(closing(&c, a), "the kernel's bytes are part of its backlog");
    assert!(!closing(&c, b), "b's kernel buffer is empty");
    // Slow (over a drop-oldest mark): charged to the ceiling until it is no longer slow.
    let mut c = core(&["--topic-policy", "d=drop-oldest,high_water_bytes=1000"]);
    let d = sub(&mut c, &["d"]);
    let dt: Arc<str> = Arc::from("d");
    c.publish(&dt, MessageKind::Binary, &[0; 298]);
    c.kernel_held(d, 800);
    c.publish(&dt, MessageKind::Binary, &[0; 298]);
    assert_eq!(c.slow_clients(), 1);
    assert_eq!(c.ledger().kernel_charged(), 800);
    c.end(d, CloseMode::Reset);
    assert_eq!((c.ledger().kernel(), c.ledger().kernel_charged()), (0, 0));
}

/// An upgraded connection on `path` that negotiated permessage-deflate (as Chromium offers it),
/// its 101 already written.
fn open_deflate(core: &mut Core, path: &str) -> ConnId {
    let mut request = upgrade_request(path);
    request.truncate(request.len() - 2);
    request.extend_from_slice(
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    let id = connect(core, LOOPBACK, &request);
    let head = String::from_utf8(take(core, id)).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    id
}

/// Compressed once per message for the whole process: the publishing shard builds the
/// compressed variants the other shards' subscribers want (learnt from their notices), the
/// others deliver them without compressing, and plain subscribers get plain frames. Idle, a
/// connection that negotiated compression keeps no more than one that did not.
#[test]
fn compressed_once_on_the_publishing_shard_only() {
    let mut cs = cores(2, &["--compression-min-bytes", "16"], Instant::now());
    let z = open_deflate(&mut cs[1], "/ws/t");
    let zs = open_deflate(&mut cs[1], "/stream?streams=t");
    let plain = sub(&mut cs[1], &["t"]);
    let local_plain = sub(&mut cs[0], &["t"]);
    let conn = cs[1].conn(z).unwrap();
    assert!(conn.deflate.is_on() && conn.rx.is_none() && conn.http.is_none());
    pump(&mut cs); // the interest notices reach shard 0
    let msg = br#"{"e":"trade","p":"97000.10","q":"0.001","p2":"97000.10"}"#;
    cs[0].publish(&Arc::from("t"), MessageKind::Text, msg);
    pump(&mut cs);
    let compressed = |c: &Core, id| frames(c, id).iter().all(|f| f[0] == 0xC1);
    assert!(compressed(&cs[1], z) && compressed(&cs[1], zs));
    assert_eq!(
        frames(&cs[1], plain),
        [encode_frame(OpCode::Text, msg).to_vec()]
    );
    assert_eq!(frames(&cs[0], local_plain), frames(&cs[1], plain));
    let inflate = |f: &[u8]| {
        let mut out = Vec::new();
        shardcast_proto::deflate::Inflater::new(false)
            .inflate(&f[2..], 1 << 20, &mut out)
            .unwrap();
        out
    };
    assert_eq!(inflate(&frames(&cs[1], z)[0]), msg);
    let wrapped = inflate(&frames(&cs[1], zs)[0]);
    assert!(wrapped.starts_with(br#"{"stream":"t","data":{"e":"trade""#));
    let c0 = cs[0].stats().compression.snapshot();
    let c1 = cs[1].stats().compression.snapshot();
    assert_eq!((c0.compressed_messages, c1.compressed_messages), (2, 0));
    assert_eq!((c0.compressed_deliveries, c1.compressed_deliveries), (0, 2));
    assert!(c1.bytes_saved > 0);
    assert_eq!((c0.connections, c1.connections), (0, 2));
    // Binary messages: /stream readers get the plain frame's compressed form; below the
    // threshold nothing is compressed.
    cs[0].publish(&Arc::from("t"), MessageKind::Binary, &[b'x'; 64]);
    cs[0].publish(&Arc::from("t"), MessageKind::Text, b"short");
    pump(&mut cs);
    assert_eq!(frames(&cs[1], zs)[1][0], 0xC2);
    assert_eq!(frames(&cs[1], zs)[2][0], 0x81);
    assert_eq!(cs[0].stats().compression.snapshot().compressed_messages, 3);
    // The last compressing subscribers leave: shard 0 stops compressing.
    cs[1].end(z, CloseMode::Graceful);
    cs[1].end(zs, CloseMode::Graceful);
    pump(&mut cs);
    cs[0].publish(&Arc::from("t"), MessageKind::Text, msg);
    assert_eq!(cs[0].stats().compression.snapshot().compressed_messages, 3);
    assert_eq!(cs[1].stats().compression.snapshot().connections, 0);
    assert_eq!(cs[0].stats().compression.snapshot().topics, 0);
}

/// Compressed messages from a publisher are inflated with the limit enforced (1009), compressed
/// echo replies go out for a connection that negotiated it, and RSV1 without the extension is
/// a 1002.
#[test]
fn inbound_compressed_messages_are_inflated_within_the_limit() {
    let mut c = core(&[
        "--max-message-bytes",
        "1000",
        "--compression-min-bytes",
        "16",
    ]);
    let reader = sub(&mut c, &["t"]);
    let publisher = open_deflate(&mut c, "/pub/t");
    let compressed = |payload: &[u8]| {
        let f = shardcast_proto::deflate::Deflater::new(1)
            .encode_frame(OpCode::Text, payload)
            .unwrap();
        let mut b = BytesMut::new();
        encode_client_frame(&mut b, OpCode::Text, true, &f[2..], [1, 2, 3, 4]);
        b[0] |= 0x40; // RSV1
        b.to_vec()
    };
    let ok = vec![b'a'; 900];
    c.handle_received(publisher, &mut compressed(&ok));
    assert_eq!(&frames(&c, reader)[0][4..], &ok[..]);
    assert_eq!(c.stats().compression.snapshot().inflated_messages, 1);
    c.handle_received(publisher, &mut compressed(&[b'a'; 1001]));
    let close = frames(&c, publisher);
    assert_eq!(close.last().unwrap()[2..4], 1009u16.to_be_bytes());
    // Echo, compressed back; a plain echo connection sending RSV1 gets 1002.
    let echo = open_deflate(&mut c, "/echo");
    let text = br#"{"echo":"echo echo echo echo echo echo echo echo echo echo echo echo echo"}"#;
    c.handle_received(echo, &mut compressed(text));
    let reply = frames(&c, echo);
    assert_eq!(reply[0][0], 0xC1);
    let mut out = Vec::new();
    shardcast_proto::deflate::Inflater::new(false)
        .inflate(&reply[0][2..], 1 << 20, &mut out)
        .unwrap();
    assert_eq!(out, text);
    let plain_echo = open(&mut c, "/echo");
    c.handle_received(plain_echo, &mut compressed(text));
    assert_eq!(frames(&c, plain_echo)[0][2..4], 1002u16.to_be_bytes());
}

/// Continuity (`shard/seq.rs`): the JSON of every text frame queued on `id` (small frames).
fn seq_messages(core: &Core, id: ConnId) -> Vec<serde_json::Value> {
    frames(core, id)
        .iter()
        .map(|f| {
            assert!(f[1] < 126, "small text frames only");
            serde_json::from_slice(&f[2..]).unwrap()
        })
        .collect()
}

/// The numbers of the data messages in `msgs`, checking that each carries its own payload
/// order: contiguous from `after + 1`, none twice.
fn contiguous_after(msgs: &[serde_json::Value], after: u64) -> Vec<u64> {
    let seqs: Vec<u64> = msgs
        .iter()
        .filter(|m| m.get("data").is_some())
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (after + 1..after + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "{msgs:?}");
    seqs
}

/// Continuity: a resume on a shard that is not the topic's home, with publishes from both
/// shards in flight at the switch-over, gets its notice, the replay and then live messages,
/// every number once; a fresh sequenced subscriber sees the same numbers.
#[test]
fn sequenced_resume_switches_to_live_without_gap_or_duplicate() {
    let mut cs = cores(2, &[], Instant::now());
    let t: Arc<str> = Arc::from("t");
    let h = crate::continuity::home_shard("t", 2);
    let c = 1 - h;
    let fresh = open(&mut cs[c], "/ws/t?seq=1");
    pump(&mut cs);
    pump(&mut cs);
    let first = seq_messages(&cs[c], fresh);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["seq"], 0);
    let epoch = first[0]["epoch"].as_str().unwrap().to_owned();
    let mut n = 0u32;
    let mut publish = |cs: &mut Vec<Core>, on: usize| {
        n += 1;
        cs[on].publish(&t, MessageKind::Text, n.to_string().as_bytes());
    };
    for i in 0..5 {
        publish(&mut cs, i % 2);
    }
    pump(&mut cs);
    pump(&mut cs);
    let resumed = open(&mut cs[c], &format!("/ws/t?seq=1&since=t:2&epoch={epoch}"));
    // In flight while the ask travels: publishes on both shards, before any pump.
    publish(&mut cs, c);
    publish(&mut cs, h);
    publish(&mut cs, c);
    for _ in 0..3 {
        pump(&mut cs);
    }
    publish(&mut cs, c);
    pump(&mut cs);
    pump(&mut cs);
    let all = seq_messages(&cs[c], fresh);
    assert_eq!(contiguous_after(&all[1..], 0), (1..=9).collect::<Vec<_>>());
    let got = seq_messages(&cs[c], resumed);
    assert_eq!(
        got[0],
        serde_json::json!({"stream": "t", "epoch": epoch, "seq": 2}),
        "the notice first, at the position asked"
    );
    assert_eq!(contiguous_after(&got[1..], 2), (3..=9).collect::<Vec<_>>());
    // The same message has the same number for both subscribers.
    for m in &got[1..] {
        assert!(all.contains(m), "{m}");
    }
}

/// Continuity: numbering adds no size to the mesh's ring slots (allocated at start, per ring
/// entry).
#[test]
fn continuity_items_fit_a_ring_slot() {
    assert!(
        std::mem::size_of::<MeshItem>() <= std::mem::size_of::<crate::mesh::Envelope>() + 8,
        "{}",
        std::mem::size_of::<MeshItem>()
    );
}

/// Continuity: history is charged to the shard's budget and, under memory pressure, halved
/// before any connection is evicted (history is a cache).
#[test]
fn history_is_halved_before_any_connection_is_evicted() {
    let mut c = core(&[
        "--memory-limit",
        "10MiB",
        "--queue-ceiling-pct",
        "10",
        "--topic-history",
        "h=messages=100000,bytes=1MiB",
    ]);
    let id = sub(&mut c, &["x"]);
    c.publish(&Arc::from("x"), MessageKind::Binary, &[0; 1000]);
    for _ in 0..5000 {
        c.publish(&Arc::from("h"), MessageKind::Binary, &[7; 100]);
    }
    let held = c.st.history_bytes();
    assert!(held > 0 && held <= c.st.desk.logs.budget(), "{held}");
    assert!(c.st.charged() >= held + 1000);
    // Room that exists only if history gives up at least half of what it holds.
    let room = c.st.governor.budget - c.st.charged() + held / 2;
    assert!(c.st.make_room(room));
    assert!(c.st.history_bytes() <= held / 2 + held / 8, "{held}");
    assert!(!is_evicted(&c, id), "nobody evicted for history");
    assert_eq!(frames(&c, id).len(), 1, "its frame is still queued");
}

/// A subscriber evicted before anything of its queue was written, then gone, leaves the
/// ledger at its floor: only the shard's shared 1013 close, kept for the next eviction.
#[test]
fn an_evicted_subscriber_that_hangs_up_leaves_only_the_shared_close() {
    let mut c = core(&["--high-water-bytes", "16KiB", "--send-buffer-bytes", "4096"]);
    let id = sub(&mut c, &["t"]);
    let t: Arc<str> = Arc::from("t");
    for _ in 0..20 {
        c.publish(&t, MessageKind::Binary, &[0; 1000]);
    }
    assert!(is_evicted(&c, id));
    c.handle_read_closed(id, true);
    let (_, closes) = flush(&mut c);
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(c.active(), 0);
    assert!(c.kept_frame_bytes() > 0, "the 1013 is kept");
    assert_eq!(c.ledger().retained(), c.kept_frame_bytes());
}

/// The ceiling evicts stragglers, not a reader that keeps up: once the round is back within
/// the budget, what keeps the shard above `evict_to` is the heads the evicted were writing
/// (pinned until they go or the socket is reset), which no further eviction releases. A
/// subscriber a few frames behind the head survives; before, the round went on to it.
#[test]
fn a_ceiling_round_stops_at_readers_that_keep_up() {
    // 20 MiB at 5% over 1 shard: a 1 MiB budget, evict_to 80%.
    let mut c = core(&["--memory-limit", "20MiB", "--high-water-bytes", "1GiB"]);
    let budget = c.governor().budget;
    let t: Arc<str> = Arc::from("t");
    let payload = vec![0u8; 60_000];
    // Nine slow subscribers, each stuck in the middle of a different frame.
    let mut slow = Vec::new();
    for _ in 0..9 {
        let id = sub(&mut c, &["t"]);
        c.publish(&t, MessageKind::Binary, &payload);
        read(&mut c, id, 100);
        slow.push(id);
    }
    // A fast subscriber that stays at most 5 frames behind.
    let fast = sub(&mut c, &["t"]);
    let mut published = 0;
    while slow.iter().any(|&id| !closing(&c, id)) {
        c.publish(&t, MessageKind::Binary, &payload);
        published += 1;
        assert!(published < 100, "the ceiling never evicted");
        assert!(c.ledger().retained() <= budget);
        while frames(&c, fast).len() > 5 {
            let head = frames(&c, fast)[0].len();
            read(&mut c, fast, head);
        }
    }
    // Still over evict_to by the pinned heads, yet within the budget: the fast reader stays.
    assert!(!closing(&c, fast), "a reader that keeps up is not evicted");
    assert!(
        c.ledger().retained() > c.governor().evict_to,
        "the case under test"
    );
    assert_eq!(c.stats().evictions(Eviction::Ceiling), 9);
}
