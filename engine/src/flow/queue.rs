//! Per-connection send queues of shared frames, and the shard's exact accounting of them.
//!
//! A frame a shard delivers is wrapped once in an `Rc<QueuedFrame>` whose creation adds its
//! length to the shard's [`Ledger`] (`retained`) and whose drop, when the last queue holding it
//! lets go, subtracts it: a frame shared by 10,000 queues counts once. Every queue entry also
//! counts its slot ([`SLOT_BYTES`], the `Rc` pointer). Per connection the queue counts
//! logical unsent bytes, including the rest of a partially written head frame; the ledger
//! also keeps the sum of those over the shard.
//!
//! A frame queued on several shards (a broadcast arrives on each through the mesh) is counted
//! by every shard holding it: per shard the count is exact, the process total is conservative
//! by at most `(shards - 1)` × such frames. That keeps every counter shard-local (no shared
//! atomic on the hot path). While a broadcast waits in the mesh, the publishing shard's
//! mesh backlog charges it once more (`mesh::MeshLink::mesh_bytes`), until the last other
//! shard has taken it: the publisher counts it at most twice (queues + backlog) while at most
//! `shards - 2` others do, then once while `shards - 1` others do, so the process total stays
//! conservative by at most `(shards - 1)` × such frames.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::obs::stats::ShardStats;

/// Memory one queue entry takes in the queue itself.
pub const SLOT_BYTES: usize = std::mem::size_of::<Rc<QueuedFrame>>();

/// One shard's accounting of queued frames. Single-threaded (`Cell`s): the shard owns it and
/// enforces its limits from it; the stats gauges are a copy taken once per tick
/// ([`Ledger::publish`]), so queueing a frame touches no shared cache line.
#[derive(Default)]
pub struct Ledger {
    frame_bytes: Cell<usize>,
    entries: Cell<usize>,
    queued: Cell<usize>,
}

impl Ledger {
    /// Real bytes retained: every live frame once plus every queue slot.
    pub fn retained(&self) -> usize {
        self.frame_bytes.get() + self.entries.get() * SLOT_BYTES
    }

    /// Bytes of live frames (each counted once).
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes.get()
    }

    /// Queue entries over every queue.
    pub fn entries(&self) -> usize {
        self.entries.get()
    }

    /// Logical unsent bytes over every queue (a shared frame counts once per queue).
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Copy the gauges into the shard's stats (called from the shard's tick). `mesh` is the
    /// shard's mesh backlog, charged to the same budget: `retained_bytes` includes it.
    pub fn publish(&self, stats: &ShardStats, mesh: usize) {
        stats
            .retained_bytes
            .store((self.retained() + mesh) as u64, Relaxed);
        stats.mesh_bytes.store(mesh as u64, Relaxed);
        stats.queued_frames.store(self.entries() as u64, Relaxed);
        stats
            .total_queued_bytes
            .store(self.queued() as u64, Relaxed);
    }

    /// Wrap an encoded frame for queueing; it is counted until the last holder drops it.
    /// `published_at` is when a published frame's publish was accepted (`None` for a
    /// connection's own frames); it is stored once per frame, not per queue entry.
    pub fn frame(
        self: &Rc<Self>,
        bytes: Bytes,
        topic: Option<Arc<str>>,
        published_at: Option<Instant>,
    ) -> Rc<QueuedFrame> {
        self.frame_bytes.set(self.frame_bytes.get() + bytes.len());
        Rc::new(QueuedFrame {
            bytes,
            topic,
            published_at,
            ledger: self.clone(),
        })
    }
}

/// A frame shared by every local queue it is in.
pub struct QueuedFrame {
    /// The encoded frame.
    pub bytes: Bytes,
    /// The topic it was published to (`None` for a connection's own frames: replies, pongs,
    /// close), for per-topic conflation.
    pub topic: Option<Arc<str>>,
    /// When the publish was accepted (`None` for a connection's own frames), for the broadcast
    /// latency recorded when the frame is fully written.
    pub published_at: Option<Instant>,
    ledger: Rc<Ledger>,
}

impl QueuedFrame {
    /// Encoded length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty frame (never queued).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn is_topic(&self, topic: &str) -> bool {
        self.topic.as_deref() == Some(topic)
    }
}

impl Drop for QueuedFrame {
    fn drop(&mut self) {
        let l = &self.ledger;
        l.frame_bytes.set(l.frame_bytes.get() - self.bytes.len());
    }
}

/// FIFO of frames waiting to be written to one socket.
#[derive(Default)]
pub struct SendQueue {
    frames: VecDeque<Rc<QueuedFrame>>,
    /// Bytes of the head frame already written.
    head_sent: usize,
    bytes: usize,
    /// Frames at the front covered by a send in flight ([`gather`](Self::gather)): like a
    /// started head, never dropped or conflated until the send completes ([`unpin`](Self::unpin)).
    pinned: usize,
}

impl SendQueue {
    /// Empty queue (allocates nothing until the first push).
    pub const fn new() -> Self {
        Self {
            frames: VecDeque::new(),
            head_sent: 0,
            bytes: 0,
            pinned: 0,
        }
    }

    fn counted(f: &QueuedFrame, bytes: isize, entries: isize) {
        let l = &f.ledger;
        l.queued.set(l.queued.get().wrapping_add_signed(bytes));
        l.entries.set(l.entries.get().wrapping_add_signed(entries));
    }

    /// Append a frame; empty frames are ignored (nothing to write).
    pub fn push(&mut self, frame: Rc<QueuedFrame>) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        Self::counted(&frame, frame.len() as isize, 1);
        self.frames.push_back(frame);
    }

    /// Logical unsent bytes, including the rest of a partially written head frame.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames (or frame remainders) queued.
    pub fn len_frames(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True if the head frame is partly written (it must then be finished before anything
    /// else, and is never dropped or conflated).
    pub fn head_started(&self) -> bool {
        self.head_sent > 0
    }

    /// Frames at the front that must go out before anything else and so are never dropped:
    /// those a send in flight covers, or else a partially written head.
    pub fn protected(&self) -> usize {
        self.pinned.max(usize::from(self.head_started()))
    }

    /// Hand the next batch (as [`batch`](Self::batch) selects it) to `frame(bytes, offset)`
    /// (`offset`: bytes of that frame already written) and pin it until [`unpin`](Self::unpin):
    /// a send is in flight over it. Returns (frames, bytes).
    pub fn gather(
        &mut self,
        max_frames: usize,
        max_bytes: usize,
        mut frame: impl FnMut(&Bytes, usize),
    ) -> (usize, usize) {
        let (mut frames, mut total) = (0usize, 0usize);
        for (i, f) in self.frames.iter().take(max_frames).enumerate() {
            let offset = if i == 0 { self.head_sent } else { 0 };
            let len = f.bytes.len() - offset;
            if i > 0 && total + len > max_bytes {
                break;
            }
            frame(&f.bytes, offset);
            frames += 1;
            total += len;
        }
        self.pinned = frames;
        (frames, total)
    }

    /// The send in flight completed (after [`advance`](Self::advance) over what it wrote).
    pub fn unpin(&mut self) {
        self.pinned = 0;
    }

    /// The first frames that fit in one writev: at most `max_frames` frames and, past the first
    /// frame, at most `max_bytes` bytes in total (the first frame is always included whole so a
    /// large frame still makes progress). The head comes without its written part.
    pub fn batch(&self, max_frames: usize, max_bytes: usize) -> impl Iterator<Item = &[u8]> {
        let mut total = 0usize;
        let head_sent = self.head_sent;
        self.frames
            .iter()
            .take(max_frames)
            .enumerate()
            .map(move |(i, f)| {
                if i == 0 {
                    &f.bytes[head_sent..]
                } else {
                    &f.bytes[..]
                }
            })
            .enumerate()
            .take_while(move |(i, f)| {
                total += f.len();
                *i == 0 || total <= max_bytes
            })
            .map(|(_, f)| f)
    }

    /// The oldest frame not fully written yet.
    pub fn head(&self) -> Option<&QueuedFrame> {
        self.frames.front().map(|f| &**f)
    }

    /// Drop `n` written bytes from the front: whole frames are released, a partially written
    /// head frame is remembered by offset. `n` must not exceed `len_bytes`.
    pub fn advance(&mut self, n: usize) {
        self.advance_with(n, |_| {});
    }

    /// [`advance`](Self::advance), calling `written` with every frame that is now fully
    /// written, in order, before it is released.
    pub fn advance_with(&mut self, mut n: usize, mut written: impl FnMut(&QueuedFrame)) {
        assert!(
            n <= self.bytes,
            "advance {n} past {} queued bytes",
            self.bytes
        );
        while n > 0 {
            let head = self.frames.front().expect("bytes accounted for");
            let rest = head.len() - self.head_sent;
            if n >= rest {
                n -= rest;
                self.bytes -= rest;
                self.head_sent = 0;
                self.pinned = self.pinned.saturating_sub(1);
                let head = self.frames.pop_front().expect("just seen");
                Self::counted(&head, -(rest as isize), -1);
                written(&head);
            } else {
                Self::counted(head, -(n as isize), 0);
                self.head_sent += n;
                self.bytes -= n;
                n = 0;
            }
        }
    }

    /// Drop everything queued except the rest of a partially written head frame (which
    /// must go out before anything else can); returns the frames dropped.
    pub fn clear_unstarted(&mut self) -> usize {
        let keep = self.protected();
        let dropped = self.frames.len() - keep;
        self.remove_where(keep, dropped, |_| true);
        dropped
    }

    /// Drop everything queued, a partially written head included (the socket is gone).
    pub fn clear(&mut self) {
        let n = self.frames.len();
        if let Some(head) = self.frames.front() {
            // The head's written part was already subtracted from the logical bytes.
            Self::counted(head, self.head_sent as isize, 0);
            self.bytes += self.head_sent;
        }
        self.head_sent = 0;
        self.pinned = 0;
        self.remove_where(0, n, |_| true);
    }

    /// Keep only the newest `keep` frames of `topic` (a partially written head is never
    /// touched); returns the frames dropped.
    pub fn keep_newest(&mut self, topic: &str, keep: usize) -> usize {
        let start = self.protected();
        let of_topic = self
            .frames
            .iter()
            .skip(start)
            .filter(|f| f.is_topic(topic))
            .count();
        let drop = of_topic.saturating_sub(keep);
        if drop > 0 {
            self.remove_where(start, drop, |f| f.is_topic(topic));
        }
        drop
    }

    /// Remove the first `count` frames at or after index `from` that match `pred`, keeping
    /// the order of the rest and the accounting exact.
    fn remove_where(&mut self, from: usize, mut count: usize, pred: impl Fn(&QueuedFrame) -> bool) {
        if count == 0 {
            return;
        }
        let mut i = 0usize;
        let mut removed: Vec<Rc<QueuedFrame>> = Vec::new();
        self.frames.retain(|f| {
            let idx = i;
            i += 1;
            if idx >= from && count > 0 && pred(f) {
                count -= 1;
                removed.push(f.clone());
                false
            } else {
                true
            }
        });
        for f in removed {
            self.bytes -= f.len();
            Self::counted(&f, -(f.len() as isize), -1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Rc<Ledger> {
        Rc::new(Ledger::default())
    }

    fn q(l: &Rc<Ledger>, frames: &[&'static [u8]]) -> SendQueue {
        let mut q = SendQueue::new();
        for f in frames {
            q.push(l.frame(Bytes::from_static(f), None, None));
        }
        q
    }

    fn flat(s: &SendQueue) -> Vec<u8> {
        s.batch(usize::MAX, usize::MAX)
            .flat_map(|b| b.iter().copied())
            .collect()
    }

    #[test]
    fn push_advance_accounting() {
        let l = ledger();
        let mut s = q(&l, &[b"abc", b"", b"de"]);
        assert_eq!(
            (s.len_bytes(), s.len_frames()),
            (5, 2),
            "empty frame ignored"
        );
        assert_eq!(
            l.retained(),
            5 + 2 * SLOT_BYTES,
            "the empty frame was dropped too"
        );
        s.advance(3);
        assert_eq!(
            (s.len_bytes(), l.queued(), l.retained()),
            (2, 2, 2 + SLOT_BYTES)
        );
        s.advance(2);
        assert!(s.is_empty());
        assert_eq!((l.retained(), l.queued(), l.entries()), (0, 0, 0));
    }

    #[test]
    fn partial_writes_keep_the_frame_and_offset() {
        let l = ledger();
        let shared = Bytes::from_static(b"hello");
        let mut s = SendQueue::new();
        s.push(l.frame(shared.clone(), None, None));
        s.push(l.frame(Bytes::from_static(b"world"), None, None));
        s.advance(2);
        assert_eq!(s.len_bytes(), 8);
        assert!(s.head_started());
        let head = s.batch(1, usize::MAX).next().unwrap();
        assert_eq!(head, b"llo");
        assert_eq!(head.as_ptr(), shared[2..].as_ptr(), "same memory, no copy");
        assert_eq!(
            l.retained(),
            10 + 2 * SLOT_BYTES,
            "partial frame still held whole"
        );
        assert_eq!(l.queued(), 8);
        s.advance(3);
        assert_eq!((s.len_bytes(), s.len_frames()), (5, 1));
        s.advance(4);
        assert_eq!(flat(&s), b"d");
        s.clear();
        assert_eq!((s.len_bytes(), l.retained(), l.queued()), (0, 0, 0));
    }

    #[test]
    fn advance_reports_each_fully_written_frame_once_in_order() {
        let l = ledger();
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(1);
        let mut s = SendQueue::new();
        s.push(l.frame(Bytes::from_static(b"abc"), None, Some(t0)));
        s.push(l.frame(Bytes::from_static(b"de"), None, None));
        s.push(l.frame(Bytes::from_static(b"fgh"), None, Some(t1)));
        let mut seen = Vec::new();
        s.advance_with(2, |f| seen.push(f.published_at));
        assert!(seen.is_empty(), "a partially written head is not reported");
        assert_eq!(s.head().unwrap().published_at, Some(t0));
        s.advance_with(4, |f| seen.push(f.published_at));
        assert_eq!(seen, [Some(t0), None]);
        assert_eq!(s.head().unwrap().published_at, Some(t1));
        s.advance_with(2, |f| seen.push(f.published_at));
        assert_eq!(seen, [Some(t0), None, Some(t1)]);
        assert!(s.head().is_none());
        assert_eq!((l.retained(), l.queued()), (0, 0));
    }

    #[test]
    #[should_panic(expected = "advance")]
    fn advance_past_end_panics() {
        q(&ledger(), &[b"ab"]).advance(3);
    }

    #[test]
    fn batch_limits() {
        let l = ledger();
        let s = q(&l, &[b"aaaa", b"bb", b"cc", b"d"]);
        let lens = |fr: usize, by: usize| s.batch(fr, by).map(|b| b.len()).collect::<Vec<_>>();
        assert_eq!(lens(2, usize::MAX), vec![4, 2]);
        assert_eq!(lens(10, 6), vec![4, 2]);
        assert_eq!(lens(10, 8), vec![4, 2, 2]);
        assert_eq!(lens(10, 1), vec![4], "first frame always whole");
        assert_eq!(lens(0, 100), Vec::<usize>::new());
        assert_eq!(s.len_bytes(), 9, "batch does not consume");
    }

    #[test]
    fn one_frame_in_ten_thousand_queues_counts_once() {
        let l = ledger();
        let frame = l.frame(Bytes::from(vec![7u8; 1000]), None, None);
        let mut queues: Vec<SendQueue> = (0..10_000).map(|_| SendQueue::new()).collect();
        for q in &mut queues {
            q.push(frame.clone());
        }
        drop(frame);
        assert_eq!(l.retained(), 1000 + 10_000 * SLOT_BYTES);
        assert_eq!(l.queued(), 10_000 * 1000, "logical bytes count per queue");
        for q in &mut queues[..9_999] {
            q.advance(1000);
        }
        assert_eq!(
            l.retained(),
            1000 + SLOT_BYTES,
            "held until the last queue lets go"
        );
        queues[9_999].advance(999);
        assert_eq!(l.retained(), 1000 + SLOT_BYTES);
        queues[9_999].advance(1);
        assert_eq!((l.retained(), l.queued()), (0, 0));
    }

    #[test]
    fn keep_newest_and_clear_never_touch_a_started_head() {
        let l = ledger();
        let t: Arc<str> = Arc::from("t");
        let mut s = SendQueue::new();
        for i in 0..6u8 {
            let topic = if i == 3 { None } else { Some(t.clone()) };
            s.push(l.frame(Bytes::from(vec![i; 4]), topic, None));
        }
        s.advance(1);
        assert_eq!(s.keep_newest("t", 2), 2, "frames 1 and 2 go; 0 is started");
        assert_eq!(
            flat(&s),
            [&[0u8; 3][..], &[3; 4], &[4; 4], &[5; 4]].concat()
        );
        assert_eq!(s.keep_newest("t", 0), 2);
        assert_eq!(flat(&s), [&[0u8; 3][..], &[3; 4]].concat());
        assert_eq!(s.len_bytes(), 7);
        assert_eq!(l.retained(), 8 + 2 * SLOT_BYTES);
        assert_eq!(s.clear_unstarted(), 1);
        assert_eq!(flat(&s), [0u8; 3]);
        assert_eq!((l.retained(), l.queued()), (4 + SLOT_BYTES, 3));
        s.advance(3);
        assert_eq!(s.clear_unstarted(), 0);
        assert_eq!((l.retained(), l.queued(), l.entries()), (0, 0, 0));
    }

    #[test]
    fn frames_of_a_send_in_flight_are_pinned() {
        let l = ledger();
        let t: Arc<str> = Arc::from("t");
        let mut s = SendQueue::new();
        for i in 0..5u8 {
            s.push(l.frame(Bytes::from(vec![i; 4]), Some(t.clone()), None));
        }
        s.advance(1);
        let mut seen = Vec::new();
        let (frames, bytes) = s.gather(3, usize::MAX, |b, off| seen.push((b[0], off)));
        assert_eq!((frames, bytes), (3, 11));
        assert_eq!(seen, [(0, 1), (1, 0), (2, 0)]);
        assert_eq!(s.protected(), 3);
        assert_eq!(s.keep_newest("t", 0), 2, "only the unpinned frames go");
        assert_eq!(s.clear_unstarted(), 0);
        s.advance(7); // the kernel took frame 0's rest and frame 1
        assert_eq!(s.protected(), 1, "frame 2 is still in flight");
        s.unpin();
        assert_eq!(s.protected(), 0);
        s.advance(2);
        assert_eq!(s.protected(), 1, "frame 2 is partly written");
        s.advance(2);
        assert!(s.is_empty());
        assert_eq!((l.retained(), l.queued()), (0, 0));
        // A byte budget stops the gather after the first frame.
        s.push(l.frame(Bytes::from(vec![9; 10]), None, None));
        s.push(l.frame(Bytes::from(vec![9; 10]), None, None));
        assert_eq!(s.gather(10, 5, |_, _| ()), (1, 10));
    }

    #[test]
    fn randomized_accounting_matches_model() {
        let l = ledger();
        let t: Arc<str> = Arc::from("t");
        let mut s = SendQueue::new();
        // Model: (frame bytes, is topic t), head offset.
        let mut model: VecDeque<(Vec<u8>, bool)> = VecDeque::new();
        let mut sent = 0usize;
        let mut x: u32 = 12345;
        let mut next = |m: u32| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) % m
        };
        let mut counter = 0u8;
        for _ in 0..5000 {
            let total: usize = model.iter().map(|f| f.0.len()).sum::<usize>() - sent;
            match next(8) {
                0..=3 => {
                    let len = 1 + next(20) as usize;
                    let frame: Vec<u8> = (0..len)
                        .map(|_| {
                            counter = counter.wrapping_add(1);
                            counter
                        })
                        .collect();
                    let is_t = next(2) == 0;
                    model.push_back((frame.clone(), is_t));
                    s.push(l.frame(Bytes::from(frame), is_t.then(|| t.clone()), None));
                }
                4..=6 => {
                    let mut n = next(total as u32 + 1) as usize;
                    s.advance(n);
                    while n > 0 {
                        let rest = model[0].0.len() - sent;
                        if n >= rest {
                            n -= rest;
                            sent = 0;
                            model.pop_front();
                        } else {
                            sent += n;
                            n = 0;
                        }
                    }
                }
                _ => {
                    let keep = next(3) as usize;
                    s.keep_newest("t", keep);
                    let start = usize::from(sent > 0);
                    let of_t = model.iter().skip(start).filter(|f| f.1).count();
                    let mut drop = of_t.saturating_sub(keep);
                    let mut i = start;
                    while drop > 0 {
                        if model[i].1 {
                            model.remove(i);
                            drop -= 1;
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            let want: Vec<u8> = model
                .iter()
                .flat_map(|f| f.0.iter().copied())
                .skip(sent)
                .collect();
            assert_eq!(flat(&s), want);
            assert_eq!(s.len_bytes(), want.len());
            assert_eq!(l.queued(), want.len());
            let frames: usize = model.iter().map(|f| f.0.len()).sum();
            assert_eq!(l.retained(), frames + model.len() * SLOT_BYTES);
        }
    }
}
