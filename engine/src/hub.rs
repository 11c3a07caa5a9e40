//! A shard's hub: its connections, its topic table and its end of the mesh. Single-threaded
//! (owned by one shard's runtime, shared between that shard's tasks through `Rc`), so plain
//! `Cell`/`RefCell` and no locks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use shardcast_proto::{encode_frame, encode_frame_parts, MessageKind, OpCode};

use crate::config::Config;
use crate::heartbeat::{Liveness, ShardHeartbeat};
use crate::latency::LocalLatency;
use crate::mesh::{Envelope, MeshLink};
use crate::queue::SendQueue;
use crate::stats::{self, ShardStats};
use crate::topic::TopicTable;

/// Per-connection state shared between the connection task and fan-out.
#[derive(Default)]
pub struct Conn {
    /// Frames waiting to be written.
    pub queue: RefCell<SendQueue>,
    /// The connection task's waker, taken (and woken) when a frame is queued.
    pub waker: Cell<Option<Waker>>,
    /// A close frame is queued: flush, then close; queue nothing more.
    pub closing: Cell<bool>,
    /// `/stream` connection: text messages arrive wrapped with their topic.
    pub stream_mode: bool,
    /// Subscribed topics, in subscription order.
    pub topics: RefCell<Vec<Arc<str>>>,
    /// Heartbeat and timeout state, driven by the shard's sweep (`heartbeat.rs`).
    pub liveness: Cell<Liveness>,
    /// Close without waiting: write what fits now, skip the linger (the peer is presumed dead).
    pub abort: Cell<bool>,
}

impl Conn {
    /// Queue a frame and wake the writer (no-op once closing).
    pub fn push(&self, frame: Bytes) {
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
    topics: RefCell<TopicTable<u32>>,
    link: RefCell<MeshLink<Envelope>>,
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
        link: MeshLink<Envelope>,
        global_active: Arc<AtomicUsize>,
    ) -> Self {
        let heartbeat = ShardHeartbeat::new(&config);
        Hub {
            id,
            config,
            all_stats,
            conns: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            topics: RefCell::new(TopicTable::new()),
            link: RefCell::new(link),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            iovecs: RefCell::new(Vec::with_capacity(crate::sockio::MAX_IOVECS)),
            active: Cell::new(0),
            global_active,
            shutting_down: Cell::new(false),
            buffers: RefCell::new(Vec::new()),
            latency: LocalLatency::default(),
            heartbeat,
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

    /// Register an upgraded connection; returns its id.
    pub fn register(&self, conn: Rc<Conn>) -> u32 {
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

    /// Remove a connection and all its subscriptions.
    pub fn unregister(&self, id: u32) {
        let Some(conn) = self.conns.borrow_mut()[id as usize].take() else {
            return;
        };
        let mut topics = self.topics.borrow_mut();
        for t in conn.topics.borrow_mut().drain(..) {
            topics.unsubscribe(&t, id);
        }
        self.free.borrow_mut().push(id);
    }

    /// Subscribe connection `id` to `topic`.
    pub fn subscribe(&self, id: u32, conn: &Conn, topic: &str) {
        let mut table = self.topics.borrow_mut();
        if table.subscribe(topic, id) {
            let name = table.name(topic).expect("just subscribed");
            conn.topics.borrow_mut().push(name);
        }
    }

    /// Unsubscribe connection `id` from `topic`.
    pub fn unsubscribe(&self, id: u32, conn: &Conn, topic: &str) {
        if self.topics.borrow_mut().unsubscribe(topic, id) {
            conn.topics.borrow_mut().retain(|t| &**t != topic);
        }
    }

    /// Publish a message: encode the frame (and, for text, the `/stream` wrapper) once, queue
    /// clones to local subscribers and send one envelope to every other shard. Call
    /// [`flush_mesh`](Self::flush_mesh) after a batch.
    pub fn publish(&self, topic: &Arc<str>, kind: MessageKind, payload: &[u8]) {
        let published_at = Instant::now();
        let (opcode, stream_frame) = match kind {
            MessageKind::Text => (
                OpCode::Text,
                Some(encode_frame_parts(
                    OpCode::Text,
                    &[
                        b"{\"stream\":\"",
                        topic.as_bytes(),
                        b"\",\"data\":",
                        payload,
                        b"}",
                    ],
                )),
            ),
            MessageKind::Binary => (OpCode::Binary, None),
        };
        let frame = encode_frame(opcode, payload);
        self.deliver(topic, &frame, stream_frame.as_ref());
        let mut link = self.link.borrow_mut();
        for dest in (0..link.shards()).filter(|&d| d != self.id) {
            link.send(
                dest,
                Envelope {
                    topic: topic.clone(),
                    frame: frame.clone(),
                    stream_frame: stream_frame.clone(),
                    published_at,
                },
            );
        }
    }

    /// Queue a published frame to this shard's subscribers of `topic`.
    pub fn deliver(&self, topic: &str, frame: &Bytes, stream_frame: Option<&Bytes>) {
        let topics = self.topics.borrow();
        let subs = topics.subscribers(topic);
        if subs.is_empty() {
            return;
        }
        let conns = self.conns.borrow();
        for &id in subs {
            if let Some(conn) = &conns[id as usize] {
                let f = match (conn.stream_mode, stream_frame) {
                    (true, Some(wrapped)) => wrapped,
                    _ => frame,
                };
                conn.push(f.clone());
            }
        }
        stats::add(&self.stats().messages_out, subs.len() as u64);
    }

    /// Signal other shards about envelopes sent since the last flush and retry overflow;
    /// returns the overflow still pending.
    pub fn flush_mesh(&self) -> usize {
        let mut link = self.link.borrow_mut();
        let pending = link.flush();
        let s = self.stats();
        s.ring_overflow_total.store(link.overflow_total(), Relaxed);
        s.overflow_len.store(pending as u64, Relaxed);
        pending
    }

    /// The mesh link, for the drain task.
    pub fn link(&self) -> &RefCell<MeshLink<Envelope>> {
        &self.link
    }

    /// Queue `frame` as the final close frame on every connection (graceful shutdown).
    pub fn close_all(&self, frame: &Bytes) {
        for conn in self.conns.borrow().iter().flatten() {
            conn.close_with(frame.clone());
        }
    }

    /// Visit every registered connection with its id (the heartbeat sweep). `f` must not
    /// register or unregister connections.
    pub fn for_each_conn(&self, mut f: impl FnMut(u32, &Conn)) {
        for (id, conn) in self.conns.borrow().iter().enumerate() {
            if let Some(conn) = conn {
                f(id as u32, conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        let config = crate::config::Overrides::default().resolve().unwrap();
        let stats: Arc<[ShardStats]> = vec![ShardStats::default()].into();
        let link = crate::mesh::mesh(1, 4).pop().unwrap();
        Hub::new(0, Arc::new(config), stats, link, Default::default())
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
                .clone()
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
            2,
            "unregistered: no more frames"
        );
        assert_eq!(stream.queue.borrow().len_frames(), 3);
        assert!(plain.topics.borrow().is_empty());
    }
}
