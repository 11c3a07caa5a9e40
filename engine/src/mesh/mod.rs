//! The inter-shard mesh: one SPSC ring per ordered pair of shards.
//!
//! A consumer shard is woken only when it is parked. Per consumer there is a [`Doorbell`]: an
//! `AtomicBool parked` and an [`AtomicWaker`]. The consumer registers its waker, sets
//! `parked`, issues a SeqCst fence and re-checks every ring before returning `Pending`; a
//! producer, once per flush (not per message), fences and loads `parked`, and only if it is
//! set swaps it to false and wakes. The two fences make the classic store/load (Dekker) race
//! impossible: either the consumer sees the new item on its re-check, or the producer sees
//! `parked`. (The waker is registered *before* setting `parked` so a producer that sees the
//! flag always finds a waker to wake.)
//!
//! A full ring never blocks the producer: items spill into a per-destination overflow
//! `VecDeque`, FIFO preserved (while it is non-empty new items queue behind it), retried on
//! every [`MeshLink::flush`].
//!
//! **Accounting.** The producing shard is charged, exactly and without any new shared atomic,
//! for what it keeps alive in the mesh ([`MeshLink::mesh_bytes`]). Every send opens a *record*
//! holding the item's [`MeshPayload::payload_bytes`]; a [`broadcast`](MeshLink::broadcast) to k
//! destinations opens one record for all k (the frame is one allocation), released when the
//! last of them has consumed its copy. Per destination the link keeps a FIFO of the record
//! numbers of the items it sent there, ring items first, then overflow items. The producer
//! learns how many ring items the consumer took from the ring's free slots
//! (`Producer::slots`, the consumer's existing read index; the cached copy on every send, a
//! fresh load per destination on every flush) and pops that many. Charged:
//! - per record until released: its payload plus [`RECORD_BYTES`](MeshLink::RECORD_BYTES);
//! - per item per destination until consumed: [`ENTRY_BYTES`](MeshLink::ENTRY_BYTES) (its
//!   FIFO entry), plus [`OVERFLOW_SLOT_BYTES`](MeshLink::OVERFLOW_SLOT_BYTES) while it waits
//!   in an overflow queue (ring slots are allocated once, when the mesh is built).
//!
//! Consumption is only seen when the producer reconciles, so between flushes the charge can
//! be higher than the truth, never lower.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use rtrb::{Consumer, Producer, PushError, RingBuffer};
use shardcast_proto::{encode_frame, encode_frame_parts, MessageKind, OpCode};

use crate::deflate::Negotiated;

/// One published message travelling to another shard. Only `Bytes`/`Arc` clones: the frame
/// was encoded once by the publishing shard.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Topic the message was published to.
    pub topic: Arc<str>,
    /// The encoded WebSocket frame for `/ws` and `/room` subscribers.
    pub frame: Bytes,
    /// For text messages, the `{"stream":..,"data":..}` frame for `/stream` subscribers.
    pub stream_frame: Option<Bytes>,
    /// When the publishing shard received the message (for latency accounting).
    pub published_at: Instant,
    /// permessage-deflate variants, compressed once by the publishing participant when some
    /// connection that negotiated compression reads the topic (`crate::deflate`); boxed behind
    /// one shared pointer so an envelope (a ring slot) grows by 8 bytes only.
    pub deflated: Option<Arc<crate::deflate::Deflated>>,
}

impl Envelope {
    /// Encode a message published to `topic` once: the frame, and for text the
    /// `{"stream":"<topic>","data":<payload>}` wrapper (the payload is embedded as is).
    /// `published_at` is when the publish was accepted (the caller's clock reading).
    pub fn encode(
        topic: Arc<str>,
        kind: MessageKind,
        payload: &[u8],
        published_at: Instant,
    ) -> Envelope {
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
        Envelope {
            frame: encode_frame(opcode, payload),
            topic,
            stream_frame,
            published_at,
            deflated: None,
        }
    }

    /// The wire variant a connection reads, as an index (`0` plain, `1` `/stream`, `2` and `3`
    /// their permessage-deflate forms: `Core::deliver` counts one frame per variant) and its
    /// frame. `deflate`: what the connection negotiated.
    pub fn variant(&self, stream_mode: bool, deflate: Negotiated) -> (usize, &Bytes) {
        let stream = stream_mode && self.stream_frame.is_some();
        if let Some(z) = crate::deflate::pick(self.deflated.as_deref(), stream, deflate) {
            return (2 + usize::from(stream), z);
        }
        match (stream, &self.stream_frame) {
            (true, Some(w)) => (1, w),
            _ => (0, &self.frame),
        }
    }

    /// Bytes of every wire variant it holds (what it costs a ring's backlog).
    pub fn bytes(&self) -> usize {
        self.frame.len()
            + self.stream_frame.as_ref().map_or(0, Bytes::len)
            + self.deflated.as_ref().map_or(0, |d| d.bytes())
    }
}

/// What travels between participants of the mesh (the shards, and the NATS bridge when it is
/// on): published messages, back-pressure notices for the `pause` policy (a shard tells the
/// others that its subscribers hold a topic paused, or no longer do; each participant counts
/// the shards holding each topic paused), and interest notices for the bridge.
#[derive(Clone, Debug)]
pub enum MeshItem {
    /// A published message.
    Publish(Envelope),
    /// The sending shard now holds this topic paused.
    Pause(Arc<str>),
    /// The sending shard no longer holds this topic paused.
    Resume(Arc<str>),
    /// Sent to the bridge only: the sending shard got its first subscriber of `topic` (`on`)
    /// or lost its last one.
    Interest {
        /// The topic.
        topic: Arc<str>,
        /// The sending shard (the bridge delivers a topic only to the shards that want it).
        shard: usize,
        /// True at the first subscriber, false when the last one left.
        on: bool,
    },
    /// Sent to every other participant: the sending shard got its first (`on`) or lost its
    /// last subscriber of `topic` that negotiated permessage-deflate and reads `variant`, so
    /// publishers know whether a compressed variant is worth building (`deflate::interest`).
    Deflate {
        /// The topic.
        topic: Arc<str>,
        /// Which wire variant those subscribers read.
        variant: crate::deflate::interest::Variant,
        /// True at the first such subscriber, false when the last one left.
        on: bool,
    },
    /// Continuity (`continuity::desk`), home shard → a shard with sequenced subscribers of
    /// the topic: one numbered message. Numbered frames and answers of a topic travel on the
    /// same ring, which is what the resume switch-over relies on.
    Sequenced(Sequenced),
    /// Continuity, a shard → the topic's home shard: its first sequenced subscription of
    /// `topic` began (`on`) or its last one ended.
    SeqInterest {
        /// The topic.
        topic: Arc<str>,
        /// The sending shard.
        shard: usize,
        /// First (true) or last (false).
        on: bool,
    },
    /// Continuity, a connection's shard → the topic's home shard: a pending sequenced
    /// subscription asks for its notice and replay.
    Ask {
        /// The topic.
        topic: Arc<str>,
        /// The asking shard (where the answer goes).
        from: usize,
        /// The ask.
        ask: Box<crate::continuity::resume::Ask>,
    },
    /// Continuity, home shard → the asking shard: the answer (its replay shares the frames
    /// history holds).
    Answer(Box<crate::continuity::resume::Answer>),
    /// Continuity, home shard → NATS bridge: a local publish with the number it got here
    /// (sent as `Shardcast-Epoch`/`Shardcast-Seq` headers).
    Numbered(Box<(Envelope, crate::continuity::Position)>),
    /// Continuity, NATS bridge → the topic's home shard: a message from another host with
    /// the numbering its headers carried (delivered like `Publish`, then numbered).
    Remote(Box<(Envelope, Option<crate::continuity::Position>)>),
    /// Continuity, a connection's shard → NATS bridge: fetch a range of a topic's numbers from
    /// deep history (JetStream) for a pending sequenced subscription.
    DeepFetch(Box<crate::continuity::deep::Fetch>),
    /// Continuity, NATS bridge → the shard that asked: what the fetch found (its payloads are
    /// charged like a replay chunk's).
    DeepFetched(Box<crate::continuity::deep::Fetched>),
    /// Continuity, a home shard → NATS bridge: an ask names another epoch than a topic this
    /// host has numbered nothing of; what numbering does the stream's last message of `topic`
    /// carry?
    DeepHead {
        /// The topic.
        topic: Arc<str>,
        /// The asking home shard.
        shard: usize,
    },
    /// Continuity, NATS bridge → the home shard: the answer (`None`: no numbered message, or
    /// deep history failed).
    DeepHeadIs {
        /// The topic.
        topic: Arc<str>,
        /// The numbering of its last message in the stream.
        stored: Option<crate::continuity::Position>,
    },
}

/// One numbered message of a topic (continuity), for sequenced subscribers: encoded once on
/// the topic's home shard and shared by every shard.
#[derive(Clone, Debug)]
pub struct Sequenced {
    /// The topic.
    pub topic: Arc<str>,
    /// `continuity::wire::data_frame` of the message.
    pub frame: Bytes,
    /// A live notice to send before it (`resync`: the numbering restarted or lost messages).
    pub notice: Option<Bytes>,
    /// When the message was published (latency accounting).
    pub published_at: Instant,
}

/// What an item keeps alive while it waits in the mesh, charged to the sending shard.
pub trait MeshPayload {
    /// Heap bytes the item holds beyond its own slot (0 if nothing worth counting).
    fn payload_bytes(&self) -> usize;
}

impl MeshPayload for MeshItem {
    /// A published message's encoded frames (compressed variants included); notices carry
    /// only a shared topic name.
    fn payload_bytes(&self) -> usize {
        match self {
            MeshItem::Publish(e) => e.bytes(),
            MeshItem::Sequenced(q) => q.frame.len() + q.notice.as_ref().map_or(0, Bytes::len),
            MeshItem::Answer(a) => a.replay.iter().map(|r| r.payload.len()).sum(),
            MeshItem::Numbered(b) => b.0.frame.len(),
            MeshItem::Remote(b) => b.0.bytes(),
            MeshItem::DeepFetched(f) => f.payload_bytes(),
            MeshItem::Pause(_)
            | MeshItem::Resume(_)
            | MeshItem::Interest { .. }
            | MeshItem::Deflate { .. }
            | MeshItem::SeqInterest { .. }
            | MeshItem::Ask { .. }
            | MeshItem::DeepFetch(_)
            | MeshItem::DeepHead { .. }
            | MeshItem::DeepHeadIs { .. } => 0,
        }
    }
}

/// A payload held for one or more destinations.
#[derive(Clone, Copy, Debug)]
struct Record {
    bytes: usize,
    holders: usize,
}

/// Per-consumer wake-up state.
#[derive(Default)]
struct Doorbell {
    parked: AtomicBool,
    waker: AtomicWaker,
}

/// One shard's end of the mesh: producers into every other shard's ring, consumers of every
/// ring into this shard, and the overflow queues. Moved into the shard thread.
pub struct MeshLink<T> {
    id: usize,
    tx: Vec<Option<Producer<T>>>,
    rx: Vec<Consumer<T>>,
    overflow: Vec<VecDeque<T>>,
    dirty: Vec<bool>,
    bells: Arc<[Doorbell]>,
    overflow_total: u64,
    overflow_len: usize,
    /// Per destination: the record of every item sent there and not known to be consumed,
    /// oldest first (the `in_ring` ring items, then the overflow items).
    sent: Vec<VecDeque<u64>>,
    /// Per destination: items pushed into the ring and not known to be consumed.
    in_ring: Vec<usize>,
    /// Open records, numbered from `first_record`; released ones wait behind older ones.
    records: VecDeque<Record>,
    first_record: u64,
    mesh_bytes: usize,
}

/// Build the mesh for `shards` shards with `capacity` entries per ring; element `i` belongs
/// to shard `i`.
pub fn mesh<T: Send>(shards: usize, capacity: usize) -> Vec<MeshLink<T>> {
    let bells: Arc<[Doorbell]> = (0..shards).map(|_| Doorbell::default()).collect();
    let mut links: Vec<MeshLink<T>> = (0..shards)
        .map(|id| MeshLink {
            id,
            tx: (0..shards).map(|_| None).collect(),
            rx: Vec::new(),
            overflow: (0..shards).map(|_| VecDeque::new()).collect(),
            dirty: vec![false; shards],
            bells: bells.clone(),
            overflow_total: 0,
            overflow_len: 0,
            sent: (0..shards).map(|_| VecDeque::new()).collect(),
            in_ring: vec![0; shards],
            records: VecDeque::new(),
            first_record: 0,
            mesh_bytes: 0,
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (p, c) = RingBuffer::new(capacity);
                links[from].tx[to] = Some(p);
                links[to].rx.push(c);
            }
        }
    }
    links
}

impl<T> MeshLink<T> {
    /// The shard this link belongs to.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.tx.len()
    }

    /// Items that ever found their ring full.
    pub fn overflow_total(&self) -> u64 {
        self.overflow_total
    }

    /// Items currently waiting in overflow queues.
    pub fn overflow_len(&self) -> usize {
        self.overflow_len
    }

    /// True if an item for `dest` would go straight into its ring (nothing waits in overflow
    /// and the ring has a free slot). A producer that must not buffer (the NATS bridge) checks
    /// this before [`send`](Self::send).
    pub fn has_room(&self, dest: usize) -> bool {
        self.overflow[dest].is_empty() && self.tx[dest].as_ref().is_some_and(|p| p.slots() > 0)
    }

    /// Items waiting in the overflow queue for `dest`.
    pub fn pending(&self, dest: usize) -> usize {
        self.overflow[dest].len()
    }

    /// Bytes charged per item per destination until it is consumed (its FIFO entry).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<u64>();

    /// Bytes charged per item while it waits in an overflow queue (its slot there).
    pub const OVERFLOW_SLOT_BYTES: usize = std::mem::size_of::<T>();

    /// Bytes charged per open payload record.
    pub const RECORD_BYTES: usize = std::mem::size_of::<Record>();

    /// Bytes this shard keeps alive in the mesh: every payload not yet consumed by all its
    /// destinations (once), plus the bookkeeping above. See the module docs.
    pub fn mesh_bytes(&self) -> usize {
        self.mesh_bytes
    }

    /// Queue `item` for shard `dest` (never blocks; never `self.id()`). The consumer is only
    /// signalled by the next [`flush`](Self::flush). Its payload is charged until `dest`
    /// consumes it.
    pub fn send(&mut self, dest: usize, item: T)
    where
        T: MeshPayload,
    {
        let rec = self.open(item.payload_bytes());
        self.enqueue(dest, rec, item);
        self.drop_holder(rec);
    }

    /// Queue a copy of `item` for every shard in `dests`, charging its payload once (it is
    /// one allocation) until every one of them has consumed its copy.
    pub fn broadcast(&mut self, dests: impl IntoIterator<Item = usize>, item: T)
    where
        T: MeshPayload + Clone,
    {
        let rec = self.open(item.payload_bytes());
        for dest in dests {
            self.enqueue(dest, rec, item.clone());
        }
        self.drop_holder(rec);
    }

    /// The most a [`broadcast`](Self::broadcast) of `payload` bytes to `dests` shards can add
    /// to [`mesh_bytes`](Self::mesh_bytes) (every copy spilling to overflow).
    pub const fn broadcast_charge(payload: usize, dests: usize) -> usize {
        payload + Self::RECORD_BYTES + dests * (Self::ENTRY_BYTES + Self::OVERFLOW_SLOT_BYTES)
    }

    /// Open a record for `bytes`, held by the caller until it calls `drop_holder` (so a
    /// record is never released while its sends are still being queued).
    fn open(&mut self, bytes: usize) -> u64 {
        self.records.push_back(Record { bytes, holders: 1 });
        self.mesh_bytes += bytes + Self::RECORD_BYTES;
        self.first_record + self.records.len() as u64 - 1
    }

    fn drop_holder(&mut self, rec: u64) {
        let r = &mut self.records[(rec - self.first_record) as usize];
        r.holders -= 1;
        if r.holders == 0 {
            self.mesh_bytes -= r.bytes + Self::RECORD_BYTES;
            while self.records.front().is_some_and(|r| r.holders == 0) {
                self.records.pop_front();
                self.first_record += 1;
            }
        }
    }

    fn enqueue(&mut self, dest: usize, rec: u64, item: T) {
        self.dirty[dest] = true;
        let ring = self.tx[dest].as_ref().expect("no ring to self");
        // The cached view costs no atomic load; a push that found the ring full refreshed it.
        let free = ring.cached_slots();
        self.settle(dest, free);
        self.records[(rec - self.first_record) as usize].holders += 1;
        self.sent[dest].push_back(rec);
        self.mesh_bytes += Self::ENTRY_BYTES;
        let ring = self.tx[dest].as_mut().expect("no ring to self");
        if !self.overflow[dest].is_empty() {
            self.overflow[dest].push_back(item);
            self.spilled();
            return;
        }
        match ring.push(item) {
            Ok(()) => self.in_ring[dest] += 1,
            Err(PushError::Full(item)) => {
                self.overflow[dest].push_back(item);
                self.spilled();
            }
        }
    }

    fn spilled(&mut self) {
        self.overflow_len += 1;
        self.overflow_total += 1;
        self.mesh_bytes += Self::OVERFLOW_SLOT_BYTES;
    }

    /// Release what the consumer of `dest` took, given the ring's `free` slots as last seen.
    fn settle(&mut self, dest: usize, free: usize) {
        let Some(ring) = self.tx[dest].as_ref() else {
            return;
        };
        let waiting = ring.buffer().capacity() - free;
        let taken = self.in_ring[dest] - waiting;
        self.in_ring[dest] = waiting;
        for _ in 0..taken {
            let rec = self.sent[dest].pop_front().expect("sent items are tracked");
            self.mesh_bytes -= Self::ENTRY_BYTES;
            self.drop_holder(rec);
        }
    }

    /// Learn what every consumer has taken (one atomic load per destination with items in
    /// its ring) and release it; [`flush`](Self::flush) does this first.
    pub fn reconcile(&mut self) {
        for dest in 0..self.tx.len() {
            if self.in_ring[dest] > 0 {
                let free = self.tx[dest].as_ref().map_or(0, |r| r.slots());
                self.settle(dest, free);
            }
        }
    }

    /// Release what consumers took ([`reconcile`](Self::reconcile)), move overflowed items
    /// into rings where there is room, then ring the doorbell of every destination that
    /// received something since the last flush and is parked. Call once per loop turn /
    /// batch. Returns the overflow still pending.
    pub fn flush(&mut self) -> usize {
        self.reconcile();
        if self.overflow_len > 0 {
            for (dest, queue) in self.overflow.iter_mut().enumerate() {
                let Some(ring) = self.tx[dest].as_mut() else {
                    continue;
                };
                while let Some(item) = queue.pop_front() {
                    if let Err(PushError::Full(item)) = ring.push(item) {
                        queue.push_front(item);
                        break;
                    }
                    self.overflow_len -= 1;
                    self.in_ring[dest] += 1;
                    self.mesh_bytes -= Self::OVERFLOW_SLOT_BYTES;
                }
            }
        }
        if self.dirty.iter().any(|&d| d) {
            fence(SeqCst);
            for (dest, dirty) in self.dirty.iter_mut().enumerate() {
                if std::mem::take(dirty) {
                    let bell = &self.bells[dest];
                    if bell.parked.load(SeqCst) && bell.parked.swap(false, SeqCst) {
                        bell.waker.wake();
                    }
                }
            }
            // Overflowed destinations stay dirty: their items are not in the ring yet.
            for (dest, queue) in self.overflow.iter().enumerate() {
                if !queue.is_empty() {
                    self.dirty[dest] = true;
                }
            }
        }
        self.overflow_len
    }

    /// Pop every item currently in this shard's incoming rings (at most `capacity` per ring per
    /// call, so one busy producer cannot starve the others) into `f`; returns how many.
    pub fn try_drain(&mut self, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        for ring in &mut self.rx {
            let avail = ring.slots();
            for _ in 0..avail {
                match ring.pop() {
                    Ok(item) => f(item),
                    Err(_) => break,
                }
                n += 1;
            }
        }
        n
    }

    /// Drain incoming items into `f`; if there were none, park (see the module docs) and
    /// return `Pending` until a producer rings the doorbell.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, mut f: impl FnMut(T)) -> Poll<usize> {
        let n = self.try_drain(&mut f);
        if n > 0 {
            return Poll::Ready(n);
        }
        let bell = &self.bells[self.id];
        bell.waker.register(cx.waker());
        bell.parked.store(true, SeqCst);
        fence(SeqCst);
        let n = self.try_drain(&mut f);
        if n > 0 {
            self.bells[self.id].parked.store(false, SeqCst);
            return Poll::Ready(n);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::task::{Wake, Waker};
    use std::thread;
    use std::time::Duration;

    /// A ring slot is one `MeshItem`, allocated for every slot of every ring at start (the
    /// README's `ring_capacity` row quotes it): the compressed variants ride behind one `Arc`.
    #[test]
    fn ring_slot_size() {
        assert_eq!(std::mem::size_of::<MeshItem>(), 104);
    }

    /// Test items: a `u32` stands for a message of that many payload bytes.
    impl MeshPayload for u32 {
        fn payload_bytes(&self) -> usize {
            *self as usize
        }
    }

    impl MeshPayload for (u8, u64) {
        fn payload_bytes(&self) -> usize {
            0
        }
    }

    type Link = MeshLink<u32>;
    const ENTRY: usize = Link::ENTRY_BYTES;
    const SLOT: usize = Link::OVERFLOW_SLOT_BYTES;
    const RECORD: usize = Link::RECORD_BYTES;

    struct ThreadWaker(thread::Thread, AtomicUsize);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.1.fetch_add(1, Relaxed);
            self.0.unpark();
        }
    }

    /// Block until something arrives; returns (items, times parked). Panics if a wake-up is
    /// missing for 10 s.
    fn drain_blocking<T>(link: &mut MeshLink<T>, out: &mut Vec<T>, parks: &mut usize) {
        let tw = Arc::new(ThreadWaker(thread::current(), AtomicUsize::new(0)));
        let waker = Waker::from(tw);
        let mut cx = Context::from_waker(&waker);
        loop {
            if link.poll_drain(&mut cx, |x| out.push(x)).is_ready() {
                return;
            }
            *parks += 1;
            let start = Instant::now();
            thread::park_timeout(Duration::from_secs(10));
            assert!(start.elapsed() < Duration::from_secs(9), "lost wake-up");
        }
    }

    #[test]
    fn parked_consumer_is_woken() {
        let mut links = mesh::<u32>(2, 4);
        let mut consumer = links.pop().unwrap();
        let mut producer = links.pop().unwrap();
        let h = thread::spawn(move || {
            let mut got = Vec::new();
            let mut parks = 0;
            while got.len() < 3 {
                drain_blocking(&mut consumer, &mut got, &mut parks);
            }
            (got, parks)
        });
        thread::sleep(Duration::from_millis(50));
        producer.send(1, 7);
        producer.flush();
        thread::sleep(Duration::from_millis(50));
        producer.send(1, 8);
        producer.send(1, 9);
        producer.flush();
        let (got, parks) = h.join().unwrap();
        assert_eq!(got, vec![7, 8, 9]);
        assert!(parks >= 1, "consumer never parked");
    }

    #[test]
    fn full_ring_spills_in_order_and_is_counted() {
        let mut links = mesh::<u32>(2, 2);
        let mut b = links.pop().unwrap();
        let mut a = links.pop().unwrap();
        for i in 0..5 {
            a.send(1, i);
        }
        assert_eq!(a.overflow_total(), 3);
        assert_eq!(a.flush(), 3, "ring still full");
        let mut got = Vec::new();
        b.try_drain(|x| got.push(x));
        a.send(1, 5); // goes behind the overflow, not into the now-free ring
        assert_eq!(a.overflow_len(), 4);
        assert_eq!(a.flush(), 2);
        b.try_drain(|x| got.push(x));
        a.flush();
        b.try_drain(|x| got.push(x));
        a.flush();
        b.try_drain(|x| got.push(x));
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(a.overflow_len(), 0);
        assert_eq!(a.overflow_total(), 4);
    }

    #[test]
    fn bytes_are_charged_across_ring_and_overflow_until_consumed() {
        let mut links = mesh::<u32>(2, 2);
        let mut b = links.pop().unwrap();
        let mut a = links.pop().unwrap();
        assert_eq!(a.mesh_bytes(), 0);
        a.send(1, 100);
        a.send(1, 200);
        assert_eq!(
            a.mesh_bytes(),
            300 + 2 * (RECORD + ENTRY),
            "two in the ring"
        );
        a.send(1, 400); // ring full: overflow
        a.send(1, 800);
        let all = 1500 + 4 * (RECORD + ENTRY);
        assert_eq!(a.mesh_bytes(), all + 2 * SLOT);
        assert_eq!(a.flush(), 2, "nothing consumed: nothing moves");
        assert_eq!(a.mesh_bytes(), all + 2 * SLOT, "unchanged");
        let mut got = Vec::new();
        b.try_drain(|x| got.push(x));
        assert_eq!(got, vec![100, 200]);
        assert_eq!(
            a.mesh_bytes(),
            all + 2 * SLOT,
            "not reconciled yet: conservative"
        );
        assert_eq!(a.flush(), 0, "overflow moved into the ring");
        assert_eq!(
            a.mesh_bytes(),
            1200 + 2 * (RECORD + ENTRY),
            "100 and 200 released"
        );
        b.try_drain(|x| got.push(x));
        a.send(1, 5); // the send sees the consumer's progress only once the cache refreshes
        a.flush();
        assert_eq!(a.mesh_bytes(), 5 + RECORD + ENTRY);
        b.try_drain(|x| got.push(x));
        a.reconcile();
        assert_eq!((a.mesh_bytes(), got), (0, vec![100, 200, 400, 800, 5]));
        assert!(a.records.is_empty() && a.sent[1].is_empty());
    }

    #[test]
    fn a_full_ring_refreshed_by_a_push_releases_without_a_flush() {
        let mut links = mesh::<u32>(2, 2);
        let mut b = links.pop().unwrap();
        let mut a = links.pop().unwrap();
        a.send(1, 10);
        a.send(1, 20);
        b.try_drain(|_| ());
        // The ring looks full to the cached view; the push refreshes it and finds room.
        a.send(1, 30);
        a.send(1, 40);
        assert_eq!(a.overflow_len(), 0);
        a.send(1, 50); // ring full: the reconcile on this send saw 10 and 20 consumed
        assert_eq!(a.mesh_bytes(), 120 + 3 * (RECORD + ENTRY) + SLOT);
    }

    #[test]
    fn a_broadcast_counts_once_until_its_last_destination_consumes_it() {
        let mut links = mesh::<u32>(3, 4);
        let mut c = links.pop().unwrap();
        let mut b = links.pop().unwrap();
        let mut a = links.pop().unwrap();
        a.broadcast([1, 2], 1000);
        assert_eq!(
            a.mesh_bytes(),
            1000 + RECORD + 2 * ENTRY,
            "payload once, two entries"
        );
        a.send(2, 7); // a notice-like item for one shard only
        let mut got = Vec::new();
        b.try_drain(|x| got.push(x));
        a.flush();
        assert_eq!(
            a.mesh_bytes(),
            1000 + RECORD + ENTRY + 7 + RECORD + ENTRY,
            "still held for shard 2"
        );
        c.try_drain(|x| got.push(x));
        a.flush();
        assert_eq!((a.mesh_bytes(), got), (0, vec![1000, 1000, 7]));
        // A broadcast to nobody charges nothing.
        a.broadcast([], 50);
        assert_eq!(a.mesh_bytes(), 0);
        assert!(a.records.is_empty());
    }

    /// Random sends, broadcasts, drains and flushes on 3 shards with tiny rings: after a
    /// flush, shard 0's charge equals a model of what is still unconsumed.
    #[test]
    fn randomized_charge_matches_model() {
        let mut links = mesh::<u32>(3, 3);
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        // Model: per message id, its payload and how many destinations still hold it.
        let mut held: std::collections::HashMap<u32, (usize, usize)> = Default::default();
        let mut entries = 0usize;
        let mut id = 0u32;
        for _ in 0..20_000 {
            match next(6) {
                0 | 1 => {
                    // The payload size encodes the id (low 16 bits) so the model can find it.
                    id += 1;
                    let payload = (id % 5 + 1) * 65_536 + id;
                    let dests: Vec<usize> = match next(3) {
                        0 => vec![1],
                        1 => vec![2],
                        _ => vec![1, 2],
                    };
                    entries += dests.len();
                    held.insert(payload, (payload as usize, dests.len()));
                    links[0].broadcast(dests, payload);
                }
                2 | 3 => {
                    let d = 1 + next(2) as usize;
                    let mut got = Vec::new();
                    links[d].try_drain(|p| got.push(p));
                    for p in got {
                        entries -= 1;
                        let h = held.get_mut(&p).unwrap();
                        h.1 -= 1;
                        if h.1 == 0 {
                            held.remove(&p);
                        }
                    }
                }
                _ => {
                    let pending = links[0].flush();
                    let want: usize = held.values().map(|h| h.0 + RECORD).sum::<usize>()
                        + entries * ENTRY
                        + pending * SLOT;
                    assert_eq!(links[0].mesh_bytes(), want);
                }
            }
        }
    }

    /// 4 threads, each both producer and consumer, 1,000,000 items through rings of 64:
    /// per-producer FIFO, no loss, no duplicates, and parked consumers are woken.
    #[test]
    fn stress_fifo_no_loss_no_dup() {
        const SHARDS: usize = 4;
        const PER_THREAD: u64 = 250_000;
        let links = mesh::<(u8, u64)>(SHARDS, 64);
        let start = Instant::now();
        let handles: Vec<_> = links
            .into_iter()
            .map(|mut link| {
                thread::spawn(move || {
                    let me = link.id();
                    let mut next_seq = [0u64; SHARDS]; // per destination
                    let mut expect = [0u64; SHARDS]; // next seq from each source
                    let mut received = 0u64;
                    let check = |(src, seq): (u8, u64), expect: &mut [u64; SHARDS]| {
                        assert_eq!(seq, expect[src as usize], "FIFO broken from {src} to {me}");
                        expect[src as usize] += 1;
                    };
                    for i in 0..PER_THREAD {
                        let dest = (me + 1 + (i as usize % (SHARDS - 1))) % SHARDS;
                        link.send(dest, (me as u8, next_seq[dest]));
                        next_seq[dest] += 1;
                        if i % 64 == 63 {
                            link.flush();
                            received += link.try_drain(|x| check(x, &mut expect)) as u64;
                        }
                    }
                    while link.flush() > 0 {
                        received += link.try_drain(|x| check(x, &mut expect)) as u64;
                        thread::yield_now();
                    }
                    // The round-robin pattern is symmetric, so each thread receives as many
                    // items as it sends.
                    let total_in: u64 = PER_THREAD;
                    let mut parks = 0;
                    let mut buf = Vec::new();
                    while received < total_in {
                        drain_blocking(&mut link, &mut buf, &mut parks);
                        for x in buf.drain(..) {
                            check(x, &mut expect);
                            received += 1;
                        }
                    }
                    assert_eq!(link.try_drain(|_| ()), 0, "duplicates or extra items");
                    (expect, next_seq, link.overflow_total())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (to, (expect, _, _)) in results.iter().enumerate() {
            for from in 0..SHARDS {
                assert_eq!(expect[from], results[from].1[to], "{from}->{to} count");
            }
        }
        let overflowed: u64 = results.iter().map(|r| r.2).sum();
        assert!(overflowed > 0, "small rings should have overflowed");
        assert!(start.elapsed() < Duration::from_secs(60));
    }
}
