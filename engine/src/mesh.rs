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

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use rtrb::{Consumer, Producer, PushError, RingBuffer};
use shardcast_proto::{encode_frame, encode_frame_parts, MessageKind, OpCode};

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
}

impl Envelope {
    /// Encode a message published to `topic` once: the frame, and for text the
    /// `{"stream":"<topic>","data":<payload>}` wrapper (the payload is embedded as is).
    pub fn encode(topic: Arc<str>, kind: MessageKind, payload: &[u8]) -> Envelope {
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
        Envelope {
            frame: encode_frame(opcode, payload),
            topic,
            stream_frame,
            published_at,
        }
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

    /// Queue `item` for shard `dest` (never blocks; never `self.id()`). The consumer is only
    /// signalled by the next [`flush`](Self::flush).
    pub fn send(&mut self, dest: usize, item: T) {
        self.dirty[dest] = true;
        let ring = self.tx[dest].as_mut().expect("no ring to self");
        if !self.overflow[dest].is_empty() {
            self.overflow[dest].push_back(item);
            self.overflow_len += 1;
            self.overflow_total += 1;
            return;
        }
        if let Err(PushError::Full(item)) = ring.push(item) {
            self.overflow[dest].push_back(item);
            self.overflow_len += 1;
            self.overflow_total += 1;
        }
    }

    /// Move overflowed items into rings where there is room, then ring the doorbell of every
    /// destination that received something since the last flush and is parked. Call once per
    /// loop turn / batch. Returns the overflow still pending.
    pub fn flush(&mut self) -> usize {
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
