//! A shard's core: everything one shard decides, with no I/O and no clock of its own.
//!
//! [`Core`] holds the shard's connections (plain [`Conn`] structs in a [`Slab`]), its topic
//! table, its end of the mesh, its queue accounting and its share of the ceiling. It is driven
//! as quinn-proto and rustls are: inputs are `handle_*` calls (and the driver-facing
//! [`Handler`] methods), outputs `poll_*` calls, and time is an input
//! ([`handle_time`](Core::handle_time), once per loop turn), so every timeout is tested on a
//! virtual clock. Call order per turn (`shard::run`): `handle_time` → `drain_mesh` → the
//! driver's events → the driver's flush (`poll_io`, `poll_transmit`/`gather`) → `flush_mesh`
//! → `park` → wait at most `poll_timeout`.
//!
//! Where each concern lives: admission and the HTTP phase in `input.rs` (decisions from
//! `conn::admission`, `conn::upgrade`), the WebSocket roles in `input.rs` (`conn::role`),
//! fan-out, the ceiling and eviction in `fanout.rs`, the pause policy across shards in
//! `pause.rs`, the mesh in `mesh.rs`, writing and closing in `io.rs`, heartbeats, deadlines and
//! the tick in `timers.rs`.

pub mod deflate;
pub mod fanout;
pub mod input;
pub mod io;
pub mod mesh;
pub mod pause;
pub mod run;
pub mod seq;
pub mod slab;
pub mod timers;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcast_proto::{encode_frame, OpCode};

use crate::config::Config;
use crate::conn::heartbeat::{HeartbeatConfig, MAX_DURATION_MS};
use crate::conn::state::Conn;
use crate::deflate::ShardDeflate;
use crate::flow::governor::Governor;
use crate::flow::policy::{Policies, Policy};
use crate::flow::queue::{Ledger, QueuedFrame};
use crate::flow::topic::TopicTable;
use crate::mesh::{MeshItem, MeshLink};
use crate::obs::latency::LocalLatency;
use crate::obs::stats::ShardStats;
use crate::obs::tick::Ticker;
use crate::runtime::clock::ShardClock;
use crate::runtime::driver::{ConnId, Handler, IoRequest};
use slab::Slab;

pub use pause::PauseState;

/// How long a flushed, half-closed connection waits for the peer's EOF before it is closed.
pub const CLOSE_LINGER_MS: u32 = 1000;

/// How often a shard retries a mesh backlog (overflow, or publishers waiting for it to
/// drain) while it has nothing else to do: only a flush sees the other shards' progress.
pub const MESH_RETRY_MS: u64 = 1;

/// Most request buffers kept for reuse per shard, and the largest capacity worth keeping:
/// handshakes then do not churn the allocator between idle connections' allocations.
const POOLED_BUFFERS: usize = 256;
const POOLED_CAPACITY: usize = 16 * 1024;

/// One shard's core. See the module docs for the call order.
pub struct Core {
    /// Live topics, each with its policy resolved once when it got its first subscriber. Kept
    /// apart from [`State`] so fan-out can walk a topic's subscribers while it mutates them.
    pub(crate) topics: TopicTable<u32, Policy>,
    /// Live sequenced subscribers (continuity, `shard/seq.rs`): a `seq=1` connection's
    /// topics are here, never in `topics`.
    pub(crate) seq_topics: TopicTable<u32, Policy>,
    pub(crate) st: State,
}

/// Everything of a shard but its topic table.
pub(crate) struct State {
    pub id: usize,
    pub config: Arc<Config>,
    pub all_stats: Arc<[ShardStats]>,
    pub conns: Slab<Conn>,
    pub link: MeshLink<MeshItem>,
    /// The NATS bridge's participant index in the mesh, when the bridge is on.
    pub bridge: Option<usize>,
    pub ledger: Rc<Ledger>,
    pub governor: Governor,
    pub policies: Policies,
    /// Upgraded connections (the base of the slow-client share).
    pub registered: usize,
    /// Connections with `flag::SLOW`.
    pub slow: usize,
    pub pauses: HashMap<Arc<str>, PauseState>,
    /// The mesh backlog went over its share: publishers on this shard are stopped until it is
    /// back at [`Governor::mesh_resume`].
    pub mesh_stalled: bool,
    /// Publishers stopped by the mesh backlog.
    pub mesh_waiters: Vec<ConnId>,
    /// As of the last flush: overflow was pending or publishers were stopped.
    pub mesh_retry: bool,
    /// Items drained by `park` before the loop decided to wait; delivered next turn.
    pub mesh_batch: Vec<MeshItem>,
    /// The 1013 close frame, shared by every eviction so that evicting never adds bytes.
    pub evict_close: Option<Rc<QueuedFrame>>,
    /// Open connections on this shard (handshaking and lingering included).
    pub active: usize,
    /// Open connections over all shards, checked at accept.
    pub global_active: Arc<AtomicUsize>,
    pub shutting_down: bool,
    pub shutdown_deadline: u32,
    /// Until when clients have the `serverShutdown` event before the close (access).
    pub shutdown_notice: Option<u32>,
    /// Request buffers returned by finished handshakes.
    pub buffers: Vec<Vec<u8>>,
    pub latency: LocalLatency,
    pub hb: HeartbeatConfig,
    /// The one ping frame every connection shares.
    pub ping: Bytes,
    pub clock: ShardClock,
    /// This turn's time, as an `Instant` and on the shard clock.
    pub now: Instant,
    pub now_ms: u32,
    /// Connections to flush this turn (each once: `flag::DIRTY`), and how far the flush got.
    pub dirty: Vec<u32>,
    pub dirty_pos: usize,
    pub io: VecDeque<IoRequest>,
    /// Connections with a deadline (`flag::TIMED`).
    pub timed: Vec<ConnId>,
    /// The buffers a send in flight reads, of connections that ended meanwhile (by slot): the
    /// queue let them go at the end, the driver holds no reference (driver contract 3), so
    /// these handles keep them until the completion (`handle_sent`) or the socket's release
    /// (`handle_closed`).
    pub ended_in_flight: HashMap<u32, Vec<Bytes>>,
    /// Connections whose queue's entry array was left mostly spare (`flag::TRIM`): trimmed on
    /// the next tick, not as it drains (a burst empties and refills a queue many times).
    pub trim: Vec<u32>,
    /// Stopped publishers that may go on (their pause or the mesh backlog ended).
    pub resume: Vec<ConnId>,
    pub next_tick: u32,
    pub next_sweep: u32,
    pub ticker: Ticker,
    /// Access policy and per-address limits (issue 14), shared by every shard.
    pub access: Arc<crate::access::Access>,
    /// permessage-deflate: who reads compressed variants, the compressor, the inflater
    /// (`crate::deflate`).
    pub deflate: ShardDeflate,
    /// wss://: the sessions of this shard's TLS connections (`shard/tls.rs`).
    pub tls: Option<crate::tls::ShardTls>,
    /// Continuity: this shard's topic logs (as home shard) and pending sequenced
    /// subscriptions (`shard/seq.rs`).
    pub desk: crate::continuity::desk::Desk,
    /// When the shard started (the desk's non-wrapping clock).
    pub started: Instant,
}

impl Core {
    /// The core of shard `id` of `config.shards`, starting at `now`. `link` is its end of the
    /// mesh (one participant more than there are shards when the NATS bridge is on);
    /// `global_active` counts open connections over every shard.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        all_stats: Arc<[ShardStats]>,
        link: MeshLink<MeshItem>,
        global_active: Arc<AtomicUsize>,
        now: Instant,
    ) -> Core {
        let governor = Governor::new(config.queue_ceiling(), config.shards);
        let s = &all_stats[id];
        s.queue_ceiling_bytes.store(governor.budget as u64, Relaxed);
        s.memory_limit.store(config.memory_limit, Relaxed);
        // The bridge, when on, is the one participant past the shards (server::start).
        let bridge = (link.shards() > config.shards).then_some(config.shards);
        let ms = |v: u64| v.min(MAX_DURATION_MS) as u32;
        let hb = HeartbeatConfig {
            ping_interval: ms(config.ping_interval_ms),
            pong_timeout: ms(config.pong_timeout_ms),
            idle_timeout: ms(config.idle_timeout_ms),
            max_lifetime: ms(config.max_lifetime_ms),
            lifetime_jitter_pct: config.lifetime_jitter_pct.min(100),
            fragment_timeout: ms(config.fragment_timeout_ms),
            token_expiry: false,
        };
        let access = crate::access::Access::new(&config).expect("a validated access configuration");
        let latency = LocalLatency::default();
        latency.set_recording(config.latency_recording);
        let ticker = Ticker::new(
            id,
            config.histogram_log.as_deref(),
            std::time::Duration::from_millis(config.histogram_log_interval_ms),
        );
        let clock = ShardClock::new(now);
        let sweep = hb.sweep_period().as_millis() as u32;
        let config_compression = config.compression();
        let desk = seq::desk(
            id,
            &config,
            governor.budget,
            crate::continuity::epoch::process_seed(),
        );
        Core {
            topics: TopicTable::default(),
            seq_topics: TopicTable::default(),
            st: State {
                id,
                policies: config.policies(),
                config,
                all_stats,
                conns: Slab::default(),
                link,
                bridge,
                ledger: Rc::new(Ledger::default()),
                governor,
                registered: 0,
                slow: 0,
                pauses: HashMap::new(),
                mesh_stalled: false,
                mesh_waiters: Vec::new(),
                mesh_retry: false,
                mesh_batch: Vec::new(),
                evict_close: None,
                active: 0,
                global_active,
                shutting_down: false,
                shutdown_deadline: 0,
                shutdown_notice: None,
                buffers: Vec::new(),
                latency,
                hb,
                ping: encode_frame(OpCode::Ping, b""),
                clock,
                now,
                now_ms: 0,
                dirty: Vec::new(),
                dirty_pos: 0,
                io: VecDeque::new(),
                timed: Vec::new(),
                ended_in_flight: HashMap::new(),
                trim: Vec::new(),
                resume: Vec::new(),
                next_tick: crate::obs::tick::TICK.as_millis() as u32,
                next_sweep: sweep,
                ticker,
                access: Arc::new(access),
                deflate: ShardDeflate::new(config_compression),
                tls: None,
                desk,
                started: now,
            },
        }
        .with_access_policy()
    }

    /// Use the process-wide `access` policy (per-address limits are shared by every shard;
    /// `Core::new` builds one of its own, for tests).
    pub fn with_access(mut self, access: Arc<crate::access::Access>) -> Core {
        self.st.access = access;
        self.with_access_policy()
    }

    /// Tokens that expire on live connections need the heartbeat sweep even when every
    /// heartbeat rule is off.
    fn with_access_policy(mut self) -> Core {
        let st = &mut self.st;
        st.hb.token_expiry = st.access.tokens_expire();
        st.next_sweep = st
            .now_ms
            .wrapping_add(st.hb.sweep_period().as_millis() as u32);
        self
    }

    /// Shard index.
    pub fn id(&self) -> usize {
        self.st.id
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        self.st.stats()
    }

    /// Open connections on this shard (handshaking and closing ones included).
    pub fn active(&self) -> usize {
        self.st.active
    }

    /// The shard's queue accounting.
    pub fn ledger(&self) -> &Ledger {
        &self.st.ledger
    }

    /// Bytes of frames the shard keeps for reuse when no connection holds them (the shared
    /// 1013 close, made at the first eviction): the ledger's floor once every connection is
    /// gone.
    pub fn kept_frame_bytes(&self) -> usize {
        self.st.evict_close.as_ref().map_or(0, |f| f.charge())
    }

    /// The shard's share of the ceiling.
    pub fn governor(&self) -> &Governor {
        &self.st.governor
    }

    /// The shard's latency recorder.
    pub fn latency(&self) -> &LocalLatency {
        &self.st.latency
    }

    /// The shard's end of the mesh.
    pub fn link(&self) -> &MeshLink<MeshItem> {
        &self.st.link
    }

    /// The connection `id`, if it is still there.
    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.st.conns.get(id)
    }

    /// Slow connections on this shard.
    pub fn slow_clients(&self) -> usize {
        self.st.slow
    }

    /// True while this shard takes no publishes because its mesh backlog is over its share.
    pub fn mesh_stalled(&self) -> bool {
        self.st.mesh_stalled
    }

    /// True if some shard holds `topic` paused.
    pub fn is_paused(&self, topic: &str) -> bool {
        self.st.is_paused(topic)
    }

    /// Copy the queue and mesh gauges into the shard's stats (the tick does this).
    pub fn publish_gauges(&self) {
        self.st.publish_gauges();
    }
}

impl State {
    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.all_stats[self.id]
    }

    pub fn publish_gauges(&self) {
        self.ledger.publish(self.stats(), self.link.mesh_bytes());
    }

    /// Bytes charged to this shard's budget: its queued frames, unfinished input (isolation),
    /// its mesh backlog and the history it keeps as home shard (continuity).
    pub fn charged(&self) -> usize {
        self.ledger.charged() + self.link.mesh_bytes() + self.history_bytes()
    }

    /// An empty request buffer from the pool (or a new one).
    pub fn buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    /// Return a request buffer to the pool (kept only if small and the pool is not full).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= POOLED_CAPACITY
            && self.buffers.len() < POOLED_BUFFERS
        {
            buf.clear();
            self.buffers.push(buf);
        }
    }

    /// `close_flush_timeout_ms` on the shard clock (isolation: the longest a close may take).
    pub fn close_flush_ms(&self) -> u32 {
        self.config.close_flush_timeout_ms.min(MAX_DURATION_MS) as u32
    }

    /// Flush `slot` this turn (once, however many frames it gets).
    pub fn mark_dirty(&mut self, slot: u32) {
        if let Some(c) = self.conns.at_mut(slot) {
            if !c.has(crate::conn::state::flag::DIRTY) {
                c.set(crate::conn::state::flag::DIRTY);
                self.dirty.push(slot);
            }
        }
    }

    /// After `slot`'s queue advanced: if its entry array is mostly spare, trim it on the next
    /// tick ([`trim_queues`](Self::trim_queues)).
    pub fn note_spare(&mut self, slot: u32) {
        use crate::conn::state::flag::TRIM;
        if let Some(c) = self.conns.at_mut(slot) {
            if !c.has(TRIM) && c.queue.spare() {
                c.set(TRIM);
                self.trim.push(slot);
            }
        }
    }

    /// Shrink the mostly spare entry arrays noted since the last tick (memory back to the
    /// allocator, the ledger's charge with it).
    pub fn trim_queues(&mut self) {
        use crate::conn::state::flag::TRIM;
        for slot in std::mem::take(&mut self.trim) {
            if let Some(c) = self.conns.at_mut(slot) {
                c.clear(TRIM);
                c.queue.trim(&self.ledger);
            }
        }
    }

    /// Give `id` a deadline at `at` (shard ms) and make sure the timer scan sees it.
    pub fn set_deadline(&mut self, id: ConnId, at: u32) {
        use crate::conn::state::flag::TIMED;
        if let Some(c) = self.conns.get_mut(id) {
            c.deadline = at;
            if !c.has(TIMED) {
                c.set(TIMED);
                self.timed.push(id);
            }
        }
    }
}

/// The core as its driver sees it (see `runtime::driver` for the contract).
impl Handler for Core {
    fn accepted(
        &mut self,
        peer: std::net::SocketAddr,
        via: crate::runtime::driver::Via,
    ) -> crate::runtime::driver::Admit {
        self.handle_accepted_via(peer, via)
    }

    fn received(&mut self, id: ConnId, data: &mut [u8]) {
        self.handle_received(id, data);
    }

    fn read_closed(&mut self, id: ConnId, error: bool) {
        self.handle_read_closed(id, error);
    }

    fn sent(&mut self, id: ConnId, result: std::io::Result<usize>) {
        self.handle_sent(id, result);
    }

    fn kernel_held(&mut self, id: ConnId, bytes: usize) {
        // A TLS connection keeps its ciphertext charge beside the sample (`tls_recharge`;
        // a slot without one, plain connections included, is charged 0).
        let tls = self.st.tls.as_ref().map_or(0, |t| t.charged(id.slot));
        self.st.set_kernel(id, bytes + tls);
    }

    fn closed(&mut self, id: ConnId) {
        self.handle_closed(id);
    }

    fn accept_failed(&mut self, error: &std::io::Error, refuse: &mut dyn FnMut(&[u8]) -> usize) {
        self.handle_accept_failed(error, refuse);
    }

    fn reading(&self, id: ConnId) -> bool {
        self.wants_input(id)
    }

    fn poll_io(&mut self) -> Option<IoRequest> {
        self.st.io.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<ConnId> {
        self.next_transmit()
    }

    fn gather_frames(&self, id: ConnId) -> usize {
        self.gather_bound(id)
    }

    fn gather(&mut self, id: ConnId, out: &mut crate::runtime::driver::Gather<'_>) -> usize {
        self.gather_into(id, out)
    }
}

#[cfg(test)]
mod access_tests;
#[cfg(test)]
pub(crate) mod tests;
