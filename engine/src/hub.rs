//! A shard's hub: its connections, its topic table and its end of the mesh. Single-threaded
//! (owned by one shard's runtime, shared between that shard's tasks through `Rc`), so plain
//! `Cell`/`RefCell` and no locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Waker};

use bytes::Bytes;
use shardcast_proto::deflate::Agreed;
use shardcast_proto::{encode_close, CloseCode, MessageKind};

use crate::config::Config;
use crate::deflate::ShardDeflate;
use crate::governor::Governor;
use crate::heartbeat::{Liveness, ShardHeartbeat};
use crate::latency::LocalLatency;
use crate::mesh::{Envelope, MeshItem, MeshLink, MeshPayload};
use crate::policy::{Action, Policies, Policy};
use crate::queue::{Ledger, QueuedFrame, SendQueue, SLOT_BYTES};
use crate::stats::{self, Discard, Eviction, ShardStats};
use crate::topic::TopicTable;

/// Per-connection state shared between the connection task and fan-out.
#[derive(Default)]
pub struct Conn {
    /// The shard's ledger: frames this connection queues itself (replies, pongs, close) are
    /// counted there too.
    pub ledger: Rc<Ledger>,
    /// Set while the queue is above a high-water mark: the low-water mark that ends it.
    pub slow_low: Cell<Option<usize>>,
    /// Topics this connection holds paused (`pause` policy), each with the low-water mark
    /// that releases it.
    pub paused: RefCell<Vec<(Arc<str>, usize)>>,
    /// Frames waiting to be written.
    pub queue: RefCell<SendQueue>,
    /// The connection task's waker, taken (and woken) when a frame is queued.
    pub waker: Cell<Option<Waker>>,
    /// A close frame is queued: flush, then close; queue nothing more.
    pub closing: Cell<bool>,
    /// `/stream` connection: text messages arrive wrapped with their topic.
    pub stream_mode: bool,
    /// permessage-deflate, as negotiated in the handshake (`deflate.rs`); fixed for life.
    pub deflate: Option<Agreed>,
    /// Subscribed topics, in subscription order.
    pub topics: RefCell<Vec<Arc<str>>>,
    /// Heartbeat and timeout state, driven by the shard's sweep (`heartbeat.rs`).
    pub liveness: Cell<Liveness>,
    /// Close without waiting: write what fits now, skip the linger (the peer is presumed dead).
    pub abort: Cell<bool>,
    /// Shard clock (ms, `ShardHeartbeat`) of the last write that made progress, or of the
    /// registration: how long an evicted connection had stalled (`conn::record_eviction_stall`).
    pub write_progress: Cell<u32>,
    /// A publisher stopped decoding (paused topic or mesh backlog) with whole frames left in
    /// its read leftover: they are decoded as soon as publishing may go on, before any new
    /// read. (Kept here, in `Conn`'s padding, rather than in the task state idle
    /// connections keep.)
    pub held_input: Cell<bool>,
}

impl Conn {
    /// Queue a frame of this connection's own (counted in the shard's ledger, no topic) and
    /// wake the writer (no-op once closing). Data frames go through [`Hub::deliver`] or
    /// [`Hub::push_own`], which enforce the limits.
    pub fn push(&self, frame: Bytes) {
        if self.closing.get() || frame.is_empty() {
            return;
        }
        self.push_frame(self.ledger.frame(frame, None, None));
    }

    /// Queue a shared frame and wake the writer (no-op once closing).
    pub fn push_frame(&self, frame: Rc<QueuedFrame>) {
        if self.closing.get() {
            return;
        }
        self.queue.borrow_mut().push(frame);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queue a final close frame (once) and wake the writer.
    pub fn close_with(&self, frame: Bytes) {
        if self.closing.get() {
            return;
        }
        self.push(frame);
        self.closing.set(true);
    }

    fn close_with_frame(&self, frame: Rc<QueuedFrame>) {
        if self.closing.get() {
            return;
        }
        self.push_frame(frame);
        self.closing.set(true);
    }

    /// Logical unsent bytes.
    pub fn unsent(&self) -> usize {
        self.queue.borrow().len_bytes()
    }
}

/// A topic paused on this shard: by its own subscribers (`local`) and by how many shards
/// (this one included) hold it paused; publishers waiting for it to resume.
#[derive(Default)]
struct PauseState {
    local: usize,
    shards: usize,
    waiters: Vec<Waker>,
}

/// Everything one shard owns.
pub struct Hub {
    /// Shard index.
    pub id: usize,
    /// Effective configuration.
    pub config: Arc<Config>,
    all_stats: Arc<[ShardStats]>,
    conns: RefCell<Vec<Option<Rc<Conn>>>>,
    free: RefCell<Vec<u32>>,
    /// Live topics, each with its policy resolved once when it got its first subscriber.
    topics: RefCell<TopicTable<u32, Policy>>,
    link: RefCell<MeshLink<MeshItem>>,
    /// The NATS bridge's participant index in the mesh, when the bridge is on.
    bridge: Option<usize>,
    ledger: Rc<Ledger>,
    governor: Governor,
    policies: Policies,
    /// Registered (upgraded) connections.
    registered: Cell<usize>,
    /// Connections with `slow_low` set.
    slow: Cell<usize>,
    pauses: RefCell<HashMap<Arc<str>, PauseState>>,
    /// The mesh backlog went over its share: publishers on this shard are stopped until it is
    /// back at [`Governor::mesh_resume`].
    mesh_stalled: Cell<bool>,
    /// Publishers stopped by the mesh backlog, woken when it drains.
    mesh_waiters: RefCell<Vec<Waker>>,
    /// The mesh drain task's waker while it waits, so that a backlog that needs retrying
    /// (overflow, or stopped publishers) gets retried: see [`Hub::poke_mesh`].
    drain_waker: Cell<Option<Waker>>,
    /// As of the last flush: overflow was pending or publishers were stopped.
    mesh_retry: Cell<bool>,
    /// The 1013 close frame, shared by every eviction so that evicting never adds bytes.
    evict_close: RefCell<Option<Rc<QueuedFrame>>>,
    /// Per-shard read buffer: connections read into it and keep only partial frames.
    pub scratch: RefCell<Vec<u8>>,
    /// Per-shard iovec scratch for gather writes.
    pub iovecs: RefCell<Vec<libc::iovec>>,
    /// Open connections on this shard (including ones still in the handshake).
    pub active: Cell<usize>,
    /// Open connections over all shards, checked at accept.
    pub global_active: Arc<AtomicUsize>,
    /// Graceful shutdown has begun.
    pub shutting_down: Cell<bool>,
    /// Handshake buffers returned by finished handshakes, reused so that handshakes do not
    /// churn the allocator between the long-lived allocations of idle connections.
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Latency samples recorded since the last tick.
    pub latency: LocalLatency,
    /// Heartbeat settings, shard clock and the shared ping frame.
    pub heartbeat: ShardHeartbeat,
    /// permessage-deflate: compressing subscribers per topic, the compressor, the inflater.
    pub deflate: ShardDeflate,
}

/// Most handshake buffers kept for reuse per shard.
const POOLED_BUFFERS: usize = 256;

/// Largest buffer capacity worth keeping in the pool.
const POOLED_CAPACITY: usize = 16 * 1024;

/// A handshake buffer borrowed from the hub's pool; returned on drop.
pub struct PooledBuf<'h> {
    hub: &'h Hub,
    buf: Vec<u8>,
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut pool = self.hub.buffers.borrow_mut();
        if buf.capacity() > 0 && buf.capacity() <= POOLED_CAPACITY && pool.len() < POOLED_BUFFERS {
            buf.clear();
            pool.push(buf);
        }
    }
}

/// Size of the per-shard read scratch buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

impl Hub {
    /// A hub for shard `id`.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        all_stats: Arc<[ShardStats]>,
        link: MeshLink<MeshItem>,
        global_active: Arc<AtomicUsize>,
    ) -> Self {
        let heartbeat = ShardHeartbeat::new(&config);
        let deflate = ShardDeflate::new(config.compression());
        let governor = Governor::new(config.queue_ceiling(), config.shards);
        let s = &all_stats[id];
        s.queue_ceiling_bytes.store(governor.budget as u64, Relaxed);
        s.memory_limit.store(config.memory_limit, Relaxed);
        // The bridge, when on, is the one participant past the shards (server::start).
        let bridge = (link.shards() > config.shards).then_some(config.shards);
        Hub {
            bridge,
            ledger: Rc::new(Ledger::default()),
            governor,
            policies: config.policies(),
            registered: Cell::new(0),
            slow: Cell::new(0),
            pauses: RefCell::new(HashMap::new()),
            mesh_stalled: Cell::new(false),
            mesh_waiters: RefCell::new(Vec::new()),
            drain_waker: Cell::new(None),
            mesh_retry: Cell::new(false),
            evict_close: RefCell::new(None),
            id,
            config,
            all_stats,
            conns: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            topics: RefCell::new(TopicTable::default()),
            link: RefCell::new(link),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            iovecs: RefCell::new(Vec::with_capacity(crate::sockio::MAX_IOVECS)),
            active: Cell::new(0),
            global_active,
            shutting_down: Cell::new(false),
            buffers: RefCell::new(Vec::new()),
            latency: LocalLatency::default(),
            heartbeat,
            deflate,
        }
    }

    /// An empty buffer from the pool (or a new one).
    pub fn buffer(&self) -> PooledBuf<'_> {
        let buf = self.buffers.borrow_mut().pop().unwrap_or_default();
        PooledBuf { hub: self, buf }
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.all_stats[self.id]
    }

    /// This shard's queue accounting (give it to every [`Conn`] of this shard).
    pub fn ledger(&self) -> &Rc<Ledger> {
        &self.ledger
    }

    /// This shard's share of the ceiling.
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    /// Register an upgraded connection; returns its id.
    pub fn register(&self, conn: Rc<Conn>) -> u32 {
        self.registered.set(self.registered.get() + 1);
        if conn.deflate.is_some() {
            stats::add(&self.stats().compression.connections, 1);
        }
        let mut conns = self.conns.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(id) => {
                conns[id as usize] = Some(conn);
                id
            }
            None => {
                conns.push(Some(conn));
                (conns.len() - 1) as u32
            }
        }
    }

    /// Remove a connection and all its subscriptions; release its queue and its pauses.
    pub fn unregister(&self, id: u32) {
        let Some(conn) = self.conns.borrow_mut()[id as usize].take() else {
            return;
        };
        self.registered.set(self.registered.get() - 1);
        if conn.deflate.is_some() {
            stats::sub(&self.stats().compression.connections, 1);
        }
        conn.queue.borrow_mut().clear();
        self.unslow(&conn);
        self.release_pauses(&conn, usize::MAX);
        let mut gone = Vec::new();
        {
            let mut topics = self.topics.borrow_mut();
            for t in conn.topics.borrow_mut().drain(..) {
                self.deflate_interest(&conn, &t, false);
                if topics.unsubscribe(&t, id) && topics.name(&t).is_none() {
                    gone.push(t);
                }
            }
        }
        for t in gone {
            self.interest(t, false);
        }
        self.free.borrow_mut().push(id);
    }

    /// Subscribe connection `id` to `topic`.
    pub fn subscribe(&self, id: u32, conn: &Conn, topic: &str) {
        let first = {
            let mut table = self.topics.borrow_mut();
            let first = table.name(topic).is_none();
            if !table.subscribe_with(topic, id, |t| *self.policies.lookup(t)) {
                return;
            }
            let name = table.name(topic).expect("just subscribed");
            conn.topics.borrow_mut().push(name.clone());
            self.deflate_interest(conn, &name, true);
            first.then_some(name)
        };
        if let Some(name) = first {
            self.interest(name, true);
        }
    }

    /// Unsubscribe connection `id` from `topic`.
    pub fn unsubscribe(&self, id: u32, conn: &Conn, topic: &str) {
        let gone = {
            let mut table = self.topics.borrow_mut();
            if !table.unsubscribe(topic, id) {
                return;
            }
            table.name(topic).is_none()
        };
        let mut topics = conn.topics.borrow_mut();
        let pos = topics.iter().position(|t| &**t == topic);
        let name = pos.map(|p| topics.remove(p));
        drop(topics);
        if let Some(name) = &name {
            self.deflate_interest(conn, name, false);
        }
        if let (true, Some(name)) = (gone, name) {
            self.interest(name, false);
        }
    }

    /// Tell the NATS bridge (if on) that this shard got its first subscriber of `topic`
    /// (`on`) or lost its last one; the bridge subscribes the topic's subject while any shard
    /// is interested.
    fn interest(&self, topic: Arc<str>, on: bool) {
        if let Some(bridge) = self.bridge {
            self.link.borrow_mut().send(
                bridge,
                MeshItem::Interest {
                    topic,
                    shard: self.id,
                    on,
                },
            );
            self.flush_mesh();
        }
    }

    /// A subscriber that negotiated permessage-deflate joined (`on`) or left `topic`: when
    /// that changes this shard's interest, tell every other participant (`deflate::interest`).
    fn deflate_interest(&self, conn: &Conn, topic: &Arc<str>, on: bool) {
        if conn.deflate.is_none() {
            return;
        }
        if let Some(variant) = self.deflate.subscription(topic, conn.stream_mode, on) {
            self.deflate_topics();
            self.notify(|| MeshItem::Deflate {
                topic: topic.clone(),
                variant,
                on,
            });
        }
    }

    fn deflate_topics(&self) {
        let n = self.deflate.topics() as u64;
        self.stats().compression.topics.store(n, Relaxed);
    }

    /// Publish a message: encode the frame (and, for text, the `/stream` wrapper, and the
    /// compressed variants some connection in the process wants) once, queue clones to local
    /// subscribers and send one envelope to every other shard. Call
    /// [`flush_mesh`](Self::flush_mesh) after a batch.
    pub fn publish(&self, topic: &Arc<str>, kind: MessageKind, payload: &[u8]) {
        let mut env = Envelope::encode(topic.clone(), kind, payload);
        self.deflate
            .compress(&mut env, kind, payload.len(), &self.stats().compression);
        self.deliver(&env);
        // Every other participant: the other shards, and the NATS bridge when it is on (it
        // forwards local publishes only; what arrives from NATS is delivered, never re-sent).
        // Toward the bridge the overflow is bounded (one ring's worth): a bridge that cannot
        // keep up loses forwards, counted, instead of growing this shard's memory.
        let (participants, full_bridge) = {
            let link = self.link.borrow();
            let full = self
                .bridge
                .filter(|&b| link.pending(b) >= self.config.ring_capacity);
            (link.shards(), full)
        };
        if full_bridge.is_some() {
            stats::add(&self.stats().bridge_dropped, 1);
        }
        let dests = (0..participants).filter(|&d| d != self.id && Some(d) != full_bridge);
        let fanout = dests.clone().count();
        if fanout == 0 {
            return;
        }
        let item = MeshItem::Publish(env);
        // The backlog is charged to this shard's budget like a local frame. The message was
        // already read, so it goes out even if no room can be made (the gate below then stops
        // further reads).
        let charge = MeshLink::<MeshItem>::broadcast_charge(item.payload_bytes(), fanout);
        self.make_room(charge, &self.conns.borrow());
        let mut link = self.link.borrow_mut();
        link.broadcast(dests, item);
        if !self.mesh_stalled.get() && self.governor.mesh_over(link.mesh_bytes()) {
            // Only a fresh look at what consumers took can tell a real backlog from a stale one.
            link.reconcile();
            if self.governor.mesh_over(link.mesh_bytes()) {
                self.mesh_stalled.set(true);
                self.mesh_retry.set(true);
                self.poke_mesh();
            }
        }
    }

    /// Queue a published message to this shard's subscribers of its topic, applying the
    /// topic's policy and the shard's ceiling. Each connection gets the wire variant it reads
    /// ([`crate::deflate::variant`]: plain, `/stream`, or their compressed forms); each
    /// variant is wrapped (and counted) once, however many queues take it. The envelope's
    /// `published_at` (when the publish was accepted) travels with the frame for the broadcast
    /// latency.
    pub fn deliver(&self, env: &Envelope) {
        let topics = self.topics.borrow();
        let Some((name, subs, policy)) = topics.lookup(&env.topic) else {
            return;
        };
        let conns = self.conns.borrow();
        let mut slots: [Option<Rc<QueuedFrame>>; 4] = Default::default();
        let mut per_variant = [0u64; 4];
        let mut queued = 0u64;
        for &id in subs {
            let Some(conn) = &conns[id as usize] else {
                continue;
            };
            if conn.closing.get() {
                continue;
            }
            let (v, bytes) = crate::deflate::variant(env, conn.stream_mode, conn.deflate);
            let slot = &mut slots[v];
            if slot.is_none() {
                if !self.make_room(bytes.len() + SLOT_BYTES, &conns) {
                    self.evict(conn, Eviction::Ceiling);
                    continue;
                }
                *slot = Some(self.ledger.frame(
                    bytes.clone(),
                    Some(name.clone()),
                    Some(env.published_at),
                ));
            }
            let qf = slot.as_ref().expect("just set");
            if self.offer(&conns, conn, qf, name, policy) {
                queued += 1;
                per_variant[v] += 1;
            }
        }
        let s = self.stats();
        stats::add(&s.messages_out, queued);
        if per_variant[2] + per_variant[3] > 0 {
            let d = env.deflated.as_deref().expect("a compressed slot was used");
            let saved = |plain: Option<&Bytes>, z: &Option<Bytes>| {
                plain.map_or(0, Bytes::len) - z.as_ref().map_or(0, Bytes::len)
            };
            let c = &s.compression;
            c.delivered(per_variant[2], saved(Some(&env.frame), &d.frame));
            c.delivered(
                per_variant[3],
                saved(env.stream_frame.as_ref(), &d.stream_frame),
            );
        }
    }

    /// Queue one frame to one connection under `policy`; false if it was not queued (the
    /// connection was evicted).
    fn offer(
        &self,
        conns: &[Option<Rc<Conn>>],
        conn: &Conn,
        qf: &Rc<QueuedFrame>,
        topic: &str,
        policy: &Policy,
    ) -> bool {
        if !self.make_room(SLOT_BYTES, conns) {
            self.evict(conn, Eviction::Ceiling);
        }
        if conn.closing.get() {
            return false;
        }
        if conn.unsent() + qf.len() > policy.high_water_bytes {
            let s = self.stats();
            match policy.policy {
                Action::Evict => {
                    self.evict(conn, Eviction::HighWater);
                    return false;
                }
                Action::Conflate => {
                    let n = conn.queue.borrow_mut().keep_newest(topic, 0);
                    s.drop_messages(Discard::Conflated, n as u64);
                }
                Action::DropOldest => {
                    let n = conn.queue.borrow_mut().keep_newest(topic, policy.keep - 1);
                    s.drop_messages(Discard::DropOldest, n as u64);
                }
                Action::Pause => self.hold_pause(conn, topic, policy.low_water_bytes),
            }
        }
        conn.push_frame(qf.clone());
        if conn.unsent() > policy.high_water_bytes {
            self.mark_slow(conns, conn, policy.low_water_bytes);
        }
        !conn.closing.get()
    }

    /// Queue a frame of the connection's own (control reply, echo, pong) under the ceiling
    /// and the default high-water mark; there is no topic to conflate, so above the mark the
    /// connection is evicted.
    pub fn push_own(&self, conn: &Conn, frame: Bytes) {
        if conn.closing.get() || frame.is_empty() {
            return;
        }
        let conns = self.conns.borrow();
        if !self.make_room(frame.len() + SLOT_BYTES, &conns) {
            self.evict(conn, Eviction::Ceiling);
            return;
        }
        if conn.unsent() + frame.len() > self.policies.default_policy().high_water_bytes {
            self.evict(conn, Eviction::HighWater);
            return;
        }
        conn.push(frame);
    }

    /// Make room for `extra` more charged bytes: if they would not fit in the shard's
    /// budget, evict the connections with the most unsent bytes until the charge (queues +
    /// mesh backlog) is at most [`Governor::evict_to`] and `extra` fits. Evicting releases only
    /// local queues: when the backlog alone leaves no room for `extra`, nobody is evicted, and
    /// when it alone is above `evict_to`, eviction stops once `extra` fits. False if there is
    /// no room.
    fn make_room(&self, extra: usize, conns: &[Option<Rc<Conn>>]) -> bool {
        if self.governor.fits(self.charged(), extra) {
            return true;
        }
        let mesh = self.link.borrow().mesh_bytes();
        if !self.governor.fits(mesh, extra) {
            return false;
        }
        let target_fits_only = mesh > self.governor.evict_to;
        let candidates = conns
            .iter()
            .enumerate()
            .filter_map(|(id, c)| {
                let c = c.as_ref()?;
                let q = c.queue.borrow();
                // Only connections that have something to release (not just a started head).
                let droppable = q.len_frames() > usize::from(q.head_started());
                (!c.closing.get() && droppable).then(|| (q.len_bytes(), id))
            })
            .collect();
        for id in Governor::order(candidates) {
            let charged = self.charged();
            if self.governor.relieved(charged, extra)
                || (target_fits_only && self.governor.fits(charged, extra))
            {
                break;
            }
            if let Some(c) = &conns[id] {
                self.evict(c, Eviction::Ceiling);
            }
        }
        self.governor.fits(self.charged(), extra)
    }

    /// Bytes charged to this shard's budget: its queued frames plus its mesh backlog.
    pub fn charged(&self) -> usize {
        self.ledger.retained() + self.link.borrow().mesh_bytes()
    }

    /// Copy the queue and mesh gauges into the shard's stats (the tick calls this).
    pub fn publish_gauges(&self) {
        self.ledger
            .publish(self.stats(), self.link.borrow().mesh_bytes());
    }

    /// Close a connection with 1013 "try again later": its unstarted frames are released at
    /// once and the close goes out right after a partially written frame, if any.
    pub fn evict(&self, conn: &Conn, why: Eviction) {
        if conn.closing.get() {
            return;
        }
        crate::conn::record_eviction_stall(self, conn);
        conn.queue.borrow_mut().clear_unstarted();
        self.unslow(conn);
        self.release_pauses(conn, usize::MAX);
        self.stats().evict(why);
        let close = self
            .evict_close
            .borrow_mut()
            .get_or_insert_with(|| {
                self.ledger.frame(
                    encode_close(CloseCode::TRY_AGAIN_LATER, "try again later"),
                    None,
                    None,
                )
            })
            .clone();
        conn.close_with_frame(close);
    }

    /// Mark a connection slow (above a high-water mark until below `low`); if slow clients
    /// now exceed [`Governor::slow_limit`], evict the slowest (most unsent bytes) first.
    fn mark_slow(&self, conns: &[Option<Rc<Conn>>], conn: &Conn, low: usize) {
        if conn.slow_low.get().is_none() {
            self.slow.set(self.slow.get() + 1);
            self.stats()
                .slow_clients
                .store(self.slow.get() as u64, Relaxed);
        }
        conn.slow_low.set(Some(low));
        let limit = Governor::slow_limit(self.registered.get());
        if self.slow.get() <= limit {
            return;
        }
        let candidates = conns
            .iter()
            .enumerate()
            .filter_map(|(id, c)| {
                let c = c.as_ref()?;
                (c.slow_low.get().is_some() && !c.closing.get()).then(|| (c.unsent(), id))
            })
            .collect();
        for id in Governor::order(candidates) {
            if self.slow.get() <= limit {
                break;
            }
            if let Some(c) = &conns[id] {
                self.evict(c, Eviction::SlowClients);
            }
        }
    }

    fn unslow(&self, conn: &Conn) {
        if conn.slow_low.take().is_some() {
            self.slow.set(self.slow.get() - 1);
            self.stats()
                .slow_clients
                .store(self.slow.get() as u64, Relaxed);
        }
    }

    /// After a write: a connection back below its low-water mark is no longer slow and
    /// releases the topics it held paused.
    pub fn after_write(&self, conn: &Conn) {
        let unsent = conn.unsent();
        if conn.slow_low.get().is_some_and(|low| unsent <= low) {
            self.unslow(conn);
        }
        if !conn.paused.borrow().is_empty() {
            self.release_pauses(conn, unsent);
        }
    }

    /// Slow connections on this shard.
    pub fn slow_clients(&self) -> usize {
        self.slow.get()
    }

    fn hold_pause(&self, conn: &Conn, topic: &str, low: usize) {
        if conn.paused.borrow().iter().any(|(t, _)| &**t == topic) {
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        conn.paused.borrow_mut().push((name.clone(), low));
        stats::add(&self.stats().pauses_total, 1);
        let first = {
            let mut map = self.pauses.borrow_mut();
            let e = map.entry(name.clone()).or_default();
            e.local += 1;
            if e.local == 1 {
                e.shards += 1;
            }
            let first = e.local == 1;
            self.stats().paused_topics.store(map.len() as u64, Relaxed);
            first
        };
        if first {
            self.notify(|| MeshItem::Pause(name.clone()));
        }
    }

    /// Release the pauses `conn` holds whose low-water mark is at least `unsent`.
    fn release_pauses(&self, conn: &Conn, unsent: usize) {
        let released: Vec<Arc<str>> = {
            let mut held = conn.paused.borrow_mut();
            let mut out = Vec::new();
            held.retain(|(t, low)| {
                let keep = unsent != usize::MAX && unsent > *low;
                if !keep {
                    out.push(t.clone());
                }
                keep
            });
            out
        };
        for t in released {
            let last = {
                let mut map = self.pauses.borrow_mut();
                let e = map.get_mut(&t).expect("held pause is in the table");
                e.local -= 1;
                e.local == 0
            };
            if last {
                self.pause_count(&t, false);
                self.notify(|| MeshItem::Resume(t.clone()));
            }
        }
    }

    /// One more (`up`) or one fewer shard holds `topic` paused; at zero, wake its publishers.
    fn pause_count(&self, topic: &Arc<str>, up: bool) {
        let mut map = self.pauses.borrow_mut();
        let e = map.entry(topic.clone()).or_default();
        if up {
            e.shards += 1;
        } else {
            e.shards = e.shards.saturating_sub(1);
        }
        if e.shards == 0 && e.local == 0 {
            for w in map.remove(topic).expect("present").waiters {
                w.wake();
            }
        }
        self.stats().paused_topics.store(map.len() as u64, Relaxed);
    }

    fn notify(&self, item: impl Fn() -> MeshItem) {
        {
            let mut link = self.link.borrow_mut();
            for dest in (0..link.shards()).filter(|&d| d != self.id) {
                link.send(dest, item());
            }
        }
        self.flush_mesh();
    }

    /// True if some shard holds `topic` paused.
    pub fn is_paused(&self, topic: &str) -> bool {
        self.pauses
            .borrow()
            .get(topic)
            .is_some_and(|e| e.shards > 0)
    }

    /// True if `topic` is paused, in which case the task of `cx` is woken when it resumes.
    pub fn poll_paused(&self, topic: &str, cx: &mut Context<'_>) -> bool {
        let mut map = self.pauses.borrow_mut();
        let Some(e) = map.get_mut(topic).filter(|e| e.shards > 0) else {
            return false;
        };
        if !e.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            e.waiters.push(cx.waker().clone());
        }
        true
    }

    /// True while this shard takes no publishes because its mesh backlog is over its share.
    pub fn mesh_stalled(&self) -> bool {
        self.mesh_stalled.get()
    }

    /// True if a publisher of `topic` on this shard must not publish now: the topic is
    /// paused, or the mesh backlog is over its share. Cheap enough to ask per message.
    pub fn publish_stopped(&self, topic: &str) -> bool {
        self.mesh_stalled.get() || self.is_paused(topic)
    }

    /// [`publish_stopped`](Self::publish_stopped), registering the task of `cx` to be woken
    /// when publishing may go on. Each publisher stopped by the mesh backlog is counted once
    /// per episode (`mesh_stalls_total`).
    pub fn poll_publish_stopped(&self, topic: &str, cx: &mut Context<'_>) -> bool {
        if self.mesh_stalled.get() {
            let mut waiters = self.mesh_waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
                stats::add(&self.stats().mesh_stalls_total, 1);
            }
            return true;
        }
        self.poll_paused(topic, cx)
    }

    /// True while only retrying [`flush_mesh`](Self::flush_mesh) can make progress:
    /// envelopes wait in overflow, or publishers wait for the backlog to drain. The drain task
    /// then retries on a timer instead of parking.
    pub fn mesh_needs_retry(&self) -> bool {
        self.mesh_stalled.get() || self.link.borrow().overflow_len() > 0
    }

    /// Remember the waiting mesh drain task, to be woken by [`poke_mesh`](Self::poke_mesh).
    pub fn park_drain(&self, waker: &Waker) {
        match self.drain_waker.take() {
            Some(w) if w.will_wake(waker) => self.drain_waker.set(Some(w)),
            _ => self.drain_waker.set(Some(waker.clone())),
        }
    }

    /// True while the drain task waits with its waker registered (no poke since).
    pub fn drain_parked(&self) -> bool {
        let w = self.drain_waker.take();
        let parked = w.is_some();
        self.drain_waker.set(w);
        parked
    }

    /// While a backlog needs retrying, wake the waiting drain task so it flushes. Called by
    /// every flush and, because monoio fires timers only when a shard has nothing else to
    /// run, by shard activity (each accept, each connection wake-up): on a busy shard the
    /// drain task's retry timer alone could starve. One `Cell` read when there is no
    /// backlog; at most one wake-up per drain task turn (the poke takes the waker).
    pub fn poke_mesh(&self) {
        if self.mesh_retry.get() {
            if let Some(w) = self.drain_waker.take() {
                w.wake();
            }
        }
    }

    /// Handle whatever other shards have sent so far, from inside another task. A publisher
    /// calls this between reads: a firehose publisher must see a pause notice promptly even
    /// when the shard's mesh drain task does not get scheduled in between (observed with the
    /// epoll driver: the notice arrived only after the whole burst had been read).
    pub fn drain_now(&self) {
        let mut items = Vec::new();
        self.link.borrow_mut().try_drain(|i| items.push(i));
        for i in items {
            self.receive(i);
        }
    }

    /// Handle one item from another shard.
    pub fn receive(&self, item: MeshItem) {
        match item {
            MeshItem::Publish(env) => self.deliver(&env),
            MeshItem::Pause(t) => self.pause_count(&t, true),
            MeshItem::Resume(t) => self.pause_count(&t, false),
            MeshItem::Deflate { topic, variant, on } => {
                self.deflate.remote(&topic, variant, on);
                self.deflate_topics();
            }
            // Interest notices are addressed to the bridge only; shards never receive them.
            MeshItem::Interest { .. } => {}
        }
    }

    /// Signal other shards about envelopes sent since the last flush, release what they
    /// consumed and retry overflow; returns the overflow still pending. Publishers stopped
    /// by the mesh backlog are woken once it is back at [`Governor::mesh_resume`]; while
    /// overflow is pending or publishers are stopped, the waiting drain task is poked to
    /// retry.
    pub fn flush_mesh(&self) -> usize {
        let (pending, mesh) = {
            let mut link = self.link.borrow_mut();
            let pending = link.flush();
            let s = self.stats();
            s.ring_overflow_total.store(link.overflow_total(), Relaxed);
            s.overflow_len.store(pending as u64, Relaxed);
            (pending, link.mesh_bytes())
        };
        if self.mesh_stalled.get() && mesh <= self.governor.mesh_resume {
            self.mesh_stalled.set(false);
            for w in self.mesh_waiters.take() {
                w.wake();
            }
        }
        self.mesh_retry.set(pending > 0 || self.mesh_stalled.get());
        self.poke_mesh();
        pending
    }

    /// The mesh link, for the drain task.
    pub fn link(&self) -> &RefCell<MeshLink<MeshItem>> {
        &self.link
    }

    /// Queue `frame` as the final close frame on every connection (graceful shutdown). One
    /// counted frame is shared by all of them, so this adds the frame once plus one queue
    /// slot per connection, outside the ceiling check (shutdown must not turn into 1013s).
    pub fn close_all(&self, frame: &Bytes) {
        let close = self.ledger.frame(frame.clone(), None, None);
        for conn in self.conns.borrow().iter().flatten() {
            conn.close_with_frame(close.clone());
        }
    }

    /// Visit every registered connection with its id (the heartbeat sweep). `f` must not
    /// register or unregister connections.
    pub fn for_each_conn(&self, f: impl FnMut(u32, &Conn)) {
        self.for_each_conn_in(0..usize::MAX, f);
    }

    /// Visit the registered connections whose slot is in `slots` (the queue depth sampler
    /// spreads one pass over several ticks). `f` must not register or unregister connections.
    pub fn for_each_conn_in(&self, slots: std::ops::Range<usize>, mut f: impl FnMut(u32, &Conn)) {
        let conns = self.conns.borrow();
        let slots = slots.start.min(conns.len())..slots.end.min(conns.len());
        for (id, conn) in conns[slots.clone()].iter().enumerate() {
            if let Some(conn) = conn {
                f((slots.start + id) as u32, conn);
            }
        }
    }

    /// Connection slots (registered connections plus free slots).
    pub fn conn_slots(&self) -> usize {
        self.conns.borrow().len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shardcast_proto::{encode_frame, OpCode};

    fn hub() -> Hub {
        let config = crate::config::Overrides::default().resolve().unwrap();
        let stats: Arc<[ShardStats]> = vec![ShardStats::default()].into();
        let link = crate::mesh::mesh(1, 4).pop().unwrap();
        Hub::new(0, Arc::new(config), stats, link, Default::default())
    }

    /// `shards` hubs wired through a real mesh (rings of 64), configured by CLI-style `args`.
    pub(crate) fn hubs(shards: usize, args: &[&str]) -> Vec<Hub> {
        hubs_on(crate::mesh::mesh(shards, 64), shards, args)
    }

    /// `shards` hubs plus a NATS-bridge participant (the mesh's last link, returned), with
    /// rings of `ring` entries.
    fn bridged_hubs(shards: usize, ring: usize, args: &[&str]) -> (Vec<Hub>, MeshLink<MeshItem>) {
        let mut links = crate::mesh::mesh(shards + 1, ring);
        let bridge = links.pop().expect("the bridge's link");
        (hubs_on(links, shards, args), bridge)
    }

    /// One hub per shard link, configured by CLI-style `args`.
    fn hubs_on(links: Vec<MeshLink<MeshItem>>, shards: usize, args: &[&str]) -> Vec<Hub> {
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
        links
            .into_iter()
            .enumerate()
            .map(|(i, link)| Hub::new(i, config.clone(), stats.clone(), link, Default::default()))
            .collect()
    }

    /// A registered connection of `hub` subscribed to `topics`.
    fn sub(hub: &Hub, topics: &[&str]) -> (u32, Rc<Conn>) {
        let conn = Rc::new(Conn {
            ledger: hub.ledger().clone(),
            ..Conn::default()
        });
        let id = hub.register(conn.clone());
        for t in topics {
            hub.subscribe(id, &conn, t);
        }
        (id, conn)
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Relaxed);
        }
    }

    /// Deliver queued mesh items on every hub.
    fn pump(hubs: &[Hub]) {
        for h in hubs {
            h.flush_mesh();
        }
        for h in hubs {
            let mut items = Vec::new();
            h.link().borrow_mut().try_drain(|i| items.push(i));
            for i in items {
                h.receive(i);
            }
        }
    }

    /// What a connection still has to send, as whole frames (none partially written).
    fn frames(c: &Conn) -> Vec<Vec<u8>> {
        c.queue
            .borrow()
            .batch(usize::MAX, usize::MAX)
            .map(|f| f.to_vec())
            .collect()
    }

    /// Simulate the client reading `n` bytes.
    fn read(hub: &Hub, c: &Conn, n: usize) {
        c.queue.borrow_mut().advance(n);
        hub.after_write(c);
    }

    fn is_evicted(c: &Conn) -> bool {
        c.closing.get()
            && frames(c)
                .last()
                .is_some_and(|f| f[..4] == [0x88, 17, 0x03, 0xf5])
    }

    #[test]
    fn one_frame_to_ten_thousand_queues_counts_once() {
        let hub = &hubs(1, &[])[0];
        let conns: Vec<_> = (0..10_000).map(|_| sub(hub, &["t"])).collect();
        let payload = vec![b'x'; 500];
        hub.publish(&Arc::from("t"), MessageKind::Binary, &payload);
        let len = encode_frame(OpCode::Binary, &payload).len();
        assert_eq!(hub.ledger().retained(), len + 10_000 * SLOT_BYTES);
        assert_eq!(hub.ledger().queued(), 10_000 * len);
        let s = hub.stats();
        hub.publish_gauges(); // what the shard's tick does
        assert_eq!(
            stats::get(&s.retained_bytes),
            (len + 10_000 * SLOT_BYTES) as u64
        );
        assert_eq!(stats::get(&s.total_queued_bytes), (10_000 * len) as u64);
        assert_eq!(stats::get(&s.messages_out), 10_000);
        for (_, c) in &conns[..9_999] {
            read(hub, c, len);
        }
        assert_eq!(hub.ledger().retained(), len + SLOT_BYTES);
        hub.unregister(conns[9_999].0);
        assert_eq!((hub.ledger().retained(), hub.ledger().queued()), (0, 0));
    }

    #[test]
    fn evict_policy_closes_1013_and_keeps_a_started_frame() {
        let hub = &hubs(1, &["--high-water-bytes", "1000"])[0];
        let (_, slow) = sub(hub, &["t"]);
        let (_, fast) = sub(hub, &["t"]);
        let t: Arc<str> = Arc::from("t");
        for i in 0..3u8 {
            hub.publish(&t, MessageKind::Binary, &[i; 298]); // 302-byte frames
            read(hub, &fast, 302);
        }
        read(hub, &slow, 10);
        assert!(!slow.closing.get());
        hub.publish(&t, MessageKind::Binary, &[9; 298]); // 896 + 302 > 1000: evict
        assert!(is_evicted(&slow));
        let f = frames(&slow);
        assert_eq!(f.len(), 2, "rest of the started frame, then the close");
        assert_eq!(f[0].len(), 292);
        assert_eq!(hub.stats().evictions(Eviction::HighWater), 1);
        assert_eq!(frames(&fast).len(), 1, "fast subscriber unaffected");
        hub.publish(&t, MessageKind::Binary, &[1]);
        assert_eq!(frames(&slow).len(), 2, "nothing queued after the close");
    }

    #[test]
    fn each_eviction_records_how_long_the_connection_had_stalled() {
        use crate::latency::LatencyKind;
        use std::time::Duration;
        let hub = &hubs(1, &["--high-water-bytes", "1000"])[0];
        let ago = |s| std::time::Instant::now() - Duration::from_secs(s);
        // A 600-byte message to `t` published `at`.
        let msg = |t: &str, at| Envelope {
            published_at: at,
            ..Envelope::encode(Arc::from(t), MessageKind::Binary, &[0; 600])
        };
        let stalls = || {
            hub.latency.publish(&hub.stats().latency);
            hub.stats().latency.clone_of(LatencyKind::EvictionStall)
        };
        let within = |us: u64, secs: u64| us.abs_diff(secs * 1_000_000) <= secs * 20_000;
        // No write progress for 5 s, oldest unsent frame published 10 s ago: stalled 5 s.
        let (_, a) = sub(hub, &["a"]);
        a.write_progress.set(hub.heartbeat.now().wrapping_sub(5000));
        hub.deliver(&msg("a", ago(10)));
        hub.deliver(&msg("a", ago(0))); // 1208 > 1000 bytes: evicted
        assert!(is_evicted(&a));
        let h = stalls();
        assert_eq!(h.len(), 1);
        assert!(within(h.max(), 5), "{}", h.max());
        // Progress 5 s ago, but the queue only filled 2 s ago: stalled 2 s.
        let (_, b) = sub(hub, &["b"]);
        b.write_progress.set(hub.heartbeat.now().wrapping_sub(5000));
        hub.deliver(&msg("b", ago(2)));
        hub.deliver(&msg("b", ago(0)));
        let h = stalls();
        assert_eq!(h.len(), 2);
        assert!(within(h.min(), 2), "{}", h.min());
        // One message alone over the mark, on an empty queue: no stall at all.
        let (_, c) = sub(hub, &["c"]);
        hub.publish(&Arc::from("c"), MessageKind::Binary, &[0; 2000]);
        assert!(is_evicted(&c));
        hub.evict(&c, Eviction::Ceiling); // already closing: not evicted (or recorded) twice
        let h = stalls();
        assert_eq!(h.len(), 3, "one sample per eviction");
        assert_eq!(h.min(), 1, "a zero stall is recorded as the 1 µs floor");
        assert_eq!(hub.stats().evictions(Eviction::HighWater), 3);
    }

    #[test]
    fn conflate_keeps_newest_per_topic_and_counts() {
        let hub = &hubs(
            1,
            &["--topic-policy", "tick.*=conflate,high_water_bytes=100"],
        )[0];
        let (_, c) = sub(hub, &["tick.a", "tick.b"]);
        for i in 0..10u8 {
            hub.publish(&Arc::from("tick.a"), MessageKind::Binary, &[i; 30]);
            hub.publish(&Arc::from("tick.b"), MessageKind::Binary, &[100 + i; 30]);
        }
        let f = frames(&c);
        let last: Vec<u8> = f.iter().map(|f| f[2]).collect();
        // Over 100 bytes each new message replaces the queued one of its topic.
        assert_eq!(last, vec![9, 109]);
        assert_eq!(hub.stats().dropped(Discard::Conflated), 18);
        assert!(!c.closing.get());
    }

    #[test]
    fn drop_oldest_keeps_exactly_the_newest_n() {
        let args = [
            "--topic-policy",
            "d=drop-oldest,high_water_bytes=100,keep=3",
        ];
        let hub = &hubs(1, &args)[0];
        let (_, c) = sub(hub, &["d", "other"]);
        hub.publish(&Arc::from("other"), MessageKind::Binary, &[200; 30]);
        for i in 0..20u8 {
            hub.publish(&Arc::from("d"), MessageKind::Binary, &[i; 30]);
        }
        let got: Vec<u8> = frames(&c).iter().map(|f| f[2]).collect();
        assert_eq!(got, vec![200, 17, 18, 19], "other topics untouched");
        assert_eq!(hub.stats().dropped(Discard::DropOldest), 17);
    }

    #[test]
    fn pause_spans_shards_and_releases_below_low_water_or_on_disconnect() {
        let args = [
            "--topic-policy",
            "p=pause,high_water_bytes=100,low_water_bytes=40",
        ];
        let hubs = hubs(2, &args);
        let (id, c) = sub(&hubs[0], &["p"]);
        let (id2, c2) = sub(&hubs[0], &["p"]);
        let p: Arc<str> = Arc::from("p");
        for _ in 0..3 {
            hubs[1].publish(&p, MessageKind::Binary, &[1; 30]); // 32-byte frames
        }
        pump(&hubs);
        assert!(!hubs[1].is_paused("p"));
        hubs[1].publish(&p, MessageKind::Binary, &[1; 30]);
        pump(&hubs);
        assert!(hubs[0].is_paused("p"), "local subscribers hold it");
        pump(&hubs);
        assert!(hubs[1].is_paused("p"), "the notice crossed the mesh");
        assert!(!hubs[1].is_paused("q"), "other topics unaffected");
        assert_eq!(frames(&c).len(), 4, "pause drops nothing");
        assert_eq!(stats::get(&hubs[0].stats().pauses_total), 2);
        read(&hubs[0], &c, 60); // c at 68 > 40: still holds
        pump(&hubs);
        assert!(hubs[1].is_paused("p"));
        read(&hubs[0], &c, 30); // c at 38: released; c2 still holds
        pump(&hubs);
        assert!(hubs[1].is_paused("p"));
        hubs[0].unregister(id2); // a paused subscriber that disconnects releases its pause
        drop(c2);
        pump(&hubs);
        assert!(!hubs[0].is_paused("p") && !hubs[1].is_paused("p"));
        assert_eq!(stats::get(&hubs[1].stats().paused_topics), 0);
        hubs[0].unregister(id);
    }

    #[test]
    fn paused_publisher_is_woken_on_resume() {
        let args = [
            "--topic-policy",
            "p=pause,high_water_bytes=10,low_water_bytes=0",
        ];
        let hub = &hubs(1, &args)[0];
        let (_, c) = sub(hub, &["p"]);
        hub.publish(&Arc::from("p"), MessageKind::Binary, &[0; 20]);
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        assert!(hub.poll_paused("p", &mut Context::from_waker(&waker)));
        assert!(!flag.0.load(Relaxed));
        read(hub, &c, 22);
        assert!(flag.0.load(Relaxed), "publisher woken");
        assert!(!hub.poll_paused("p", &mut Context::from_waker(&waker)));
    }

    #[test]
    fn ceiling_is_never_exceeded_and_evicts_largest_first() {
        // 64 MiB at 5% over 1 shard: 3,355,443 bytes.
        let args = ["--memory-limit", "64MiB", "--high-water-bytes", "100MiB"];
        let hub = &hubs(1, &args)[0];
        let budget = hub.governor().budget;
        assert_eq!(budget, 3_355_443);
        let conns: Vec<_> = (0..40)
            .map(|i| sub(hub, &[["a", "b", "c", "d"][i % 4]]))
            .collect();
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut evicted_order = Vec::new();
        for step in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let topic = ["a", "b", "c", "d"][(x % 4) as usize];
            let size = 1000 + (x >> 8) as usize % 60_000;
            let before: Vec<(usize, bool)> = conns
                .iter()
                .map(|(_, c)| (c.unsent(), c.closing.get()))
                .collect();
            hub.publish(&Arc::from(topic), MessageKind::Binary, &vec![0; size]);
            assert!(
                hub.ledger().retained() <= budget,
                "step {step}: over the ceiling"
            );
            // Whoever was evicted now held at least as much as anyone left open.
            let newly: Vec<usize> = (0..conns.len())
                .filter(|&i| !before[i].1 && conns[i].1.closing.get())
                .collect();
            if let Some(min_evicted) = newly.iter().map(|&i| before[i].0).min() {
                let max_kept = (0..conns.len())
                    .filter(|&i| !conns[i].1.closing.get())
                    .map(|i| before[i].0)
                    .max()
                    .unwrap_or(0);
                assert!(min_evicted >= max_kept, "step {step}: not largest first");
                evicted_order.extend(newly);
            }
            // Some clients read a little, evicted ones are replaced.
            if step % 7 == 0 {
                let (_, c) = &conns[(x >> 20) as usize % conns.len()];
                let n = c.unsent().min(5000);
                read(hub, c, n);
                assert!(hub.ledger().retained() <= budget);
            }
        }
        assert!(hub.stats().evictions(Eviction::Ceiling) > 0);
        assert_eq!(
            hub.stats().evictions(Eviction::Ceiling),
            evicted_order.len() as u64
        );
    }

    #[test]
    fn close_all_shares_one_counted_close_frame() {
        let hub = &hubs(1, &[])[0];
        let conns: Vec<_> = (0..1000).map(|_| sub(hub, &["t"])).collect();
        let close = encode_close(CloseCode::GOING_AWAY, "");
        hub.close_all(&close);
        assert_eq!(
            (hub.ledger().frame_bytes(), hub.ledger().retained()),
            (close.len(), close.len() + 1000 * SLOT_BYTES),
            "one frame, one slot per connection"
        );
        for (_, c) in &conns {
            assert!(c.closing.get());
            assert_eq!(frames(c), vec![close.to_vec()]);
        }
        for (_, c) in &conns {
            read(hub, c, close.len());
        }
        assert_eq!(hub.ledger().retained(), 0);
    }

    /// A publisher on shard 0 keeps publishing while shard 1 does not drain its ring: the
    /// backlog is charged to shard 0 (with a local subscriber that never reads), which never
    /// goes over its budget; the publisher is stopped (and counted) instead of anything being
    /// dropped, is woken once shard 1 catches up, and every message arrives in order.
    #[test]
    fn mesh_backlog_stops_the_publisher_within_budget_and_loses_nothing() {
        // 64 MiB at 5% over 2 shards: 1,677,721 B each, a mesh share of 419,430 B.
        let args = ["--memory-limit", "64MiB", "--high-water-bytes", "100MiB"];
        let hubs = hubs(2, &args);
        let (h0, h1) = (&hubs[0], &hubs[1]);
        let budget = h0.governor().budget;
        let t: Arc<str> = Arc::from("t");
        let (_, hog) = sub(h0, &["t"]);
        let (_, local) = sub(h0, &["t"]);
        let (_, remote) = sub(h1, &["t"]);
        let seq = |f: &[u8]| u32::from_be_bytes(f[4..8].try_into().unwrap());
        let (mut got_local, mut got_remote) = (Vec::new(), Vec::new());
        let take = |hub: &Hub, c: &Conn, got: &mut Vec<u32>| {
            let f = frames(c);
            got.extend(f.iter().map(|f| seq(f)));
            read(hub, c, f.iter().map(Vec::len).sum());
        };
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let (mut published, mut stops, mut max_mesh) = (0u32, 0u64, 0usize);
        const N: u32 = 3000;
        while published < N {
            if h0.publish_stopped("t") {
                assert!(h0.poll_publish_stopped("t", &mut Context::from_waker(&waker)));
                assert!(h0.mesh_stalled());
                stops += 1;
                // Nothing drains shard 1: retrying the flush does not resume the publisher.
                h0.flush_mesh();
                assert!(!flag.0.load(Relaxed) && h0.publish_stopped("t"));
                // Shard 1 catches up.
                for _ in 0..1000 {
                    if !h0.publish_stopped("t") {
                        break;
                    }
                    pump(&hubs);
                    take(h1, &remote, &mut got_remote);
                }
                assert!(flag.0.swap(false, Relaxed), "publisher woken");
                continue;
            }
            let mut payload = vec![0u8; 1000];
            payload[..4].copy_from_slice(&published.to_be_bytes());
            h0.publish(&t, MessageKind::Binary, &payload);
            published += 1;
            if published % 16 == 0 {
                h0.flush_mesh(); // one flush per read batch, as a publisher does
            }
            let mesh = h0.link().borrow().mesh_bytes();
            max_mesh = max_mesh.max(mesh);
            let retained = h0.ledger().retained();
            assert!(retained + mesh <= budget, "{published}: over the budget");
            assert!(
                mesh <= h0.governor().mesh_limit + 1100,
                "{published}: gate missed"
            );
            take(h0, &local, &mut got_local);
        }
        for _ in 0..1000 {
            pump(&hubs);
            take(h1, &remote, &mut got_remote);
            if got_remote.len() == N as usize {
                break;
            }
        }
        h0.flush_mesh();
        assert_eq!(
            got_remote,
            (0..N).collect::<Vec<_>>(),
            "in order, nothing lost"
        );
        assert_eq!(got_local, (0..N).collect::<Vec<_>>());
        assert!(
            max_mesh > h0.governor().mesh_limit,
            "the backlog reached the gate"
        );
        assert!(stops >= 2, "stopped {stops} times");
        assert_eq!(h0.link().borrow().mesh_bytes(), 0);
        assert!(
            hog.closing.get(),
            "the never-reading local subscriber made room"
        );
        let s = h0.stats();
        assert_eq!(stats::get(&s.mesh_stalls_total), stops);
        assert!(s.evictions(Eviction::Ceiling) >= 1);
        // The backlog shows in the gauges the tick copies.
        let (_, slow_remote) = sub(h1, &["u"]);
        h0.publish(&Arc::from("u"), MessageKind::Binary, &[1; 500]);
        h0.publish_gauges();
        let (mesh, retained) = (stats::get(&s.mesh_bytes), stats::get(&s.retained_bytes));
        assert_eq!(mesh as usize, h0.link().borrow().mesh_bytes());
        assert!(mesh > 500 && retained == mesh + h0.ledger().retained() as u64);
        pump(&hubs);
        assert_eq!(frames(&slow_remote).len(), 1);
    }

    #[test]
    fn too_many_slow_clients_evicts_the_slowest() {
        let hub = &hubs(1, &["--high-water-bytes", "100", "--low-water-bytes", "10"])[0];
        // Every queue goes over 100 bytes; evict would fire first, so use drop-oldest.
        let args = [
            "--topic-policy",
            "*=drop-oldest,high_water_bytes=100,keep=100",
        ];
        let hub2 = &hubs(1, &args)[0];
        let _ = hub;
        let conns: Vec<_> = (0..20).map(|_| sub(hub2, &["t"])).collect();
        // Ten slow clients of 20 connections: the limit is max(0.5%, 8) = 8.
        hub2.publish(&Arc::from("t"), MessageKind::Binary, &[0; 98]);
        for (_, c) in &conns[10..] {
            read(hub2, c, 100);
        }
        for (i, (_, c)) in conns[..10].iter().enumerate() {
            read(hub2, c, i); // client i is i bytes ahead: lower i = slower
        }
        hub2.publish(&Arc::from("t"), MessageKind::Binary, &[0; 98]);
        assert_eq!(hub2.slow_clients(), 8);
        let evicted: Vec<usize> = (0..20).filter(|&i| conns[i].1.closing.get()).collect();
        assert_eq!(evicted, vec![0, 1], "the two slowest");
        assert_eq!(hub2.stats().evictions(Eviction::SlowClients), 2);
        assert_eq!(Governor::slow_limit(20), crate::governor::SLOW_MIN);
    }

    #[test]
    fn buffers_are_reused_cleared_and_bounded() {
        let hub = hub();
        let ptr = {
            let mut b = hub.buffer();
            b.extend_from_slice(b"GET / HTTP/1.1\r\n");
            b.as_ptr()
        };
        let b = hub.buffer();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "same allocation reused");
        drop(b);
        {
            let mut big = hub.buffer();
            big.reserve(POOLED_CAPACITY * 2);
        }
        assert!(
            hub.buffers.borrow().is_empty(),
            "oversized buffers are not pooled"
        );
    }

    /// With a bridge participant (the mesh has one link more than there are shards), a shard
    /// tells it about its first and last subscriber of a topic, and forwards local publishes
    /// but not what it receives from the mesh.
    #[test]
    fn bridge_gets_interest_transitions_and_local_publishes_only() {
        let (hubs, mut bridge) = bridged_hubs(2, 64, &[]);
        let seen = |bridge: &mut MeshLink<MeshItem>| {
            let mut out = Vec::new();
            bridge.try_drain(|i| {
                out.push(match i {
                    MeshItem::Interest { topic, shard, on } => format!("{shard}:{topic}:{on}"),
                    MeshItem::Publish(e) => format!("pub:{}", e.topic),
                    MeshItem::Pause(t) | MeshItem::Resume(t) => format!("pause:{t}"),
                    MeshItem::Deflate { topic, on, .. } => format!("deflate:{topic}:{on}"),
                })
            });
            out
        };
        let (a, ca) = sub(&hubs[0], &["t", "u"]);
        let (b, cb) = sub(&hubs[0], &["t"]);
        let (c, cc) = sub(&hubs[1], &["t"]);
        assert_eq!(seen(&mut bridge), ["0:t:true", "0:u:true", "1:t:true"]);
        hubs[0].unsubscribe(a, &ca, "t"); // b still holds t on shard 0
        hubs[0].unsubscribe(a, &ca, "t"); // not subscribed any more: nothing
        assert!(seen(&mut bridge).is_empty());
        hubs[0].publish(&Arc::from("t"), MessageKind::Text, b"1");
        pump(&hubs); // shard 1 delivers it; it does not forward it again
        assert_eq!(seen(&mut bridge), ["pub:t"]);
        assert_eq!(frames(&cc).len(), 1);
        hubs[0].unregister(b);
        hubs[0].unregister(a);
        hubs[1].unsubscribe(c, &cc, "t");
        assert_eq!(seen(&mut bridge), ["0:t:false", "0:u:false", "1:t:false"]);
        drop((cb, ca));
    }

    /// Forwards to a bridge that does not drain stop at its ring plus one ring's worth of
    /// overflow, counted; other shards still get everything.
    #[test]
    fn forwards_to_a_stuck_bridge_are_bounded_and_counted() {
        let (hubs, mut bridge) = bridged_hubs(2, 4, &["--ring-capacity", "4"]);
        let (_, c) = sub(&hubs[1], &["t"]);
        let mut notices = 0;
        bridge.try_drain(|_| notices += 1);
        assert_eq!(notices, 1, "shard 1's interest in t");
        for i in 0..20u8 {
            hubs[0].publish(&Arc::from("t"), MessageKind::Binary, &[i]);
            pump(&hubs);
        }
        assert_eq!(frames(&c).len(), 20, "the other shard lost nothing");
        assert_eq!(stats::get(&hubs[0].stats().bridge_dropped), 12);
        let mut forwarded = 0;
        hubs[0].flush_mesh();
        bridge.try_drain(|_| forwarded += 1);
        hubs[0].flush_mesh();
        bridge.try_drain(|_| forwarded += 1);
        assert_eq!(forwarded, 8, "ring (4) + overflow (4)");
    }

    #[test]
    fn fan_out_shares_one_frame_and_wraps_for_streams() {
        let hub = hub();
        let plain = Rc::new(Conn::default());
        let stream = Rc::new(Conn {
            stream_mode: true,
            ..Conn::default()
        });
        let (a, b) = (hub.register(plain.clone()), hub.register(stream.clone()));
        hub.subscribe(a, &plain, "t");
        hub.subscribe(b, &stream, "t");
        hub.publish(&Arc::from("t"), MessageKind::Text, b"1");
        let first = |c: &Conn| {
            c.queue
                .borrow()
                .batch(1, usize::MAX)
                .next()
                .unwrap()
                .to_vec()
        };
        assert_eq!(&first(&plain)[2..], b"1");
        assert_eq!(&first(&stream)[2..], br#"{"stream":"t","data":1}"#);
        hub.publish(&Arc::from("t"), MessageKind::Binary, b"\x00");
        assert_eq!(plain.queue.borrow().len_frames(), 2);
        assert_eq!(
            stream.queue.borrow().len_frames(),
            2,
            "binary goes unwrapped to streams"
        );
        hub.unregister(a);
        hub.publish(&Arc::from("t"), MessageKind::Binary, b"\x01");
        assert_eq!(
            plain.queue.borrow().len_frames(),
            0,
            "unregistered: no more frames, queue released"
        );
        assert_eq!(stream.queue.borrow().len_frames(), 3);
        assert!(plain.topics.borrow().is_empty());
    }

    /// A registered connection that negotiated permessage-deflate, subscribed to `topics`.
    fn deflate_sub(hub: &Hub, topics: &[&str], stream_mode: bool) -> (u32, Rc<Conn>) {
        let conn = Rc::new(Conn {
            ledger: hub.ledger().clone(),
            stream_mode,
            deflate: Some(Agreed {
                server_max_window_bits: 15,
                echo_server_window: false,
            }),
            ..Conn::default()
        });
        let id = hub.register(conn.clone());
        for t in topics {
            hub.subscribe(id, &conn, t);
        }
        (id, conn)
    }

    /// Compressed once per message for the whole process: the publishing shard builds the
    /// compressed variants the other shards' subscribers want (learnt from their notices),
    /// the others deliver them without compressing, and plain subscribers get plain frames.
    #[test]
    fn compressed_once_on_the_publishing_shard_only() {
        let hubs = hubs(2, &["--compression-min-bytes", "16"]);
        let (z_id, z) = deflate_sub(&hubs[1], &["t"], false);
        let (zs_id, zs) = deflate_sub(&hubs[1], &["t"], true);
        let (_, plain) = sub(&hubs[1], &["t"]);
        let (_, local_plain) = sub(&hubs[0], &["t"]);
        pump(&hubs); // the interest notices reach shard 0
        let msg = br#"{"e":"trade","p":"97000.10","q":"0.001","p2":"97000.10"}"#;
        hubs[0].publish(&Arc::from("t"), MessageKind::Text, msg);
        pump(&hubs);
        let compressed = |c: &Conn| frames(c).iter().all(|f| f[0] == 0xC1);
        assert!(compressed(&z) && compressed(&zs));
        assert_eq!(frames(&plain), [encode_frame(OpCode::Text, msg).to_vec()]);
        assert_eq!(frames(&local_plain), frames(&plain));
        let inflate = |f: &[u8]| {
            let mut out = Vec::new();
            shardcast_proto::deflate::Inflater::new(false)
                .inflate(&f[2..], 1 << 20, &mut out)
                .unwrap();
            out
        };
        assert_eq!(inflate(&frames(&z)[0]), msg);
        let wrapped = inflate(&frames(&zs)[0]);
        assert!(wrapped.starts_with(br#"{"stream":"t","data":{"e":"trade""#));
        let c0 = hubs[0].stats().compression.snapshot();
        let c1 = hubs[1].stats().compression.snapshot();
        assert_eq!((c0.compressed_messages, c1.compressed_messages), (2, 0));
        assert_eq!((c0.compressed_deliveries, c1.compressed_deliveries), (0, 2));
        assert!(c1.bytes_saved > 0);
        assert_eq!(c1.connections, 2);
        // Binary messages: /stream readers get the plain frame's compressed form; below the
        // threshold nothing is compressed.
        hubs[0].publish(&Arc::from("t"), MessageKind::Binary, &[b'x'; 64]);
        hubs[0].publish(&Arc::from("t"), MessageKind::Text, b"short");
        pump(&hubs);
        assert_eq!(frames(&zs)[1][0], 0xC2);
        assert_eq!(frames(&zs)[2][0], 0x81);
        assert_eq!(
            hubs[0].stats().compression.snapshot().compressed_messages,
            3
        );
        // The last compressing subscriber leaves: shard 0 stops compressing.
        hubs[1].unregister(z_id);
        hubs[1].unregister(zs_id);
        pump(&hubs);
        hubs[0].publish(&Arc::from("t"), MessageKind::Text, msg);
        assert_eq!(
            hubs[0].stats().compression.snapshot().compressed_messages,
            3
        );
        assert_eq!(hubs[1].stats().compression.snapshot().connections, 0);
    }
}
