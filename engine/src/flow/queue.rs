//! Per-connection send queues of shared frames, and the shard's exact accounting of them.
//!
//! A frame a shard delivers is wrapped once in an `Rc<QueuedFrame>` whose creation adds what
//! it really holds to the shard's [`Ledger`] (`retained`) and whose drop, when the last queue
//! holding it lets go, subtracts it: a frame shared by 10,000 queues counts once. What a frame
//! holds ([`frame_cost`]): its encoded buffer at the allocator's size class, the `bytes`
//! crate's shared header when the buffer is shared, and the `Rc<QueuedFrame>` allocation.
//! Each queue also counts its entry array (the `VecDeque` buffer, spare capacity included, at
//! its size class) beyond [`QUEUE_FLOOR`] entries: the floor is a per-connection cost outside
//! the ceiling (docs/ENGINE.md), which an empty queue is trimmed back to (`SendQueue::trim`: the
//! shard does it on its tick, not as a queue drains). `engine/tests/ledger_alloc.rs` checks
//! the ledger against a counting global allocator. Per connection the queue counts logical
//! unsent bytes, including the rest of a partially written head frame; the ledger also keeps
//! the sum of those over the shard.
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

/// Memory one queue entry takes in the queue itself (spare capacity aside).
pub const SLOT_BYTES: usize = std::mem::size_of::<Rc<QueuedFrame>>();

/// The allocator's size class for `n` bytes: what an allocation of `n` really takes. These are
/// jemalloc's classes (the binary's allocator; 16-byte quantum, four classes per doubling):
/// 8, 16, 32, 48, …, 128, 160, 192, 224, 256, 320, …, 16 KiB, 20 KiB, ….
pub const fn size_class(n: usize) -> usize {
    if n <= 8 {
        return 8;
    }
    if n <= 128 {
        return (n + 15) & !15;
    }
    let lg = usize::BITS - 1 - (n - 1).leading_zeros();
    let delta = 1usize << (lg - 2);
    (n + delta - 1) & !(delta - 1)
}

/// The `Rc<QueuedFrame>` allocation (two counters and the frame).
pub const FRAME_HEADER: usize =
    size_class(2 * std::mem::size_of::<usize>() + std::mem::size_of::<QueuedFrame>());

/// The `bytes` crate's header of a shared buffer (pointer, capacity, reference count),
/// allocated when a `Vec`-backed `Bytes` is first cloned.
pub const SHARED_HEADER: usize = size_class(3 * std::mem::size_of::<usize>());

/// What a queued frame of `len` encoded bytes holds: its buffer, its `Rc` wrapper, and the
/// shared header if its buffer is shared (a published frame, also held by the mesh or by
/// other shards; the shared ping or close).
pub const fn frame_cost(len: usize, shared: bool) -> usize {
    size_class(len) + FRAME_HEADER + if shared { SHARED_HEADER } else { 0 }
}

/// Capacity (entries) an empty queue keeps: `VecDeque`'s first allocation, so a connection
/// that receives now and then does not reallocate per message. Not charged to the ceiling
/// (docs/ENGINE.md counts it per connection).
pub const QUEUE_FLOOR: usize = 4;

/// What a queue's entry array of `capacity` entries holds beyond the [`QUEUE_FLOOR`] every
/// connection that ever received keeps.
pub const fn slots_cost(capacity: usize) -> usize {
    if capacity <= QUEUE_FLOOR {
        0
    } else {
        size_class(capacity * SLOT_BYTES) - size_class(QUEUE_FLOOR * SLOT_BYTES)
    }
}

/// One shard's accounting of queued frames. Single-threaded (`Cell`s): the shard owns it and
/// enforces its limits from it; the stats gauges are a copy taken once per tick
/// ([`Ledger::publish`]), so queueing a frame touches no shared cache line.
#[derive(Default)]
pub struct Ledger {
    frame_bytes: Cell<usize>,
    entries: Cell<usize>,
    /// Entry arrays beyond their floor ([`slots_cost`]): used ones, and drained ones until trimmed.
    slot_bytes: Cell<usize>,
    queued: Cell<usize>,
    /// Bytes held for clients' unfinished input (charged to the ceiling).
    inbound: Cell<usize>,
    /// Kernel send-buffer bytes of stalled live connections (charged to the ceiling).
    kernel_charged: Cell<usize>,
    /// Kernel send-buffer bytes of the other full sockets: draining ones, and closing ones
    /// (bounded in time by their teardown deadline). Reported, not charged.
    kernel_other: Cell<usize>,
}

impl Ledger {
    /// Real bytes retained: every live frame once ([`frame_cost`]) plus the entry arrays of
    /// every non-empty queue.
    pub fn retained(&self) -> usize {
        self.frame_bytes.get() + self.slot_bytes.get()
    }

    /// What the ceiling charges (the mesh backlog aside): [`retained`](Self::retained), the
    /// kernel bytes of stalled live connections and unfinished input (not fed on engine v2 yet).
    pub fn charged(&self) -> usize {
        self.retained() + self.kernel_charged.get() + self.inbound.get()
    }

    /// Bytes held for clients' unfinished input: partial frames, fragmented messages being
    /// reassembled, HTTP publish bodies being read.
    pub fn inbound(&self) -> usize {
        self.inbound.get()
    }

    /// Unfinished input held for a client went from `old` to `new` bytes.
    pub fn inbound_changed(&self, old: usize, new: usize) {
        self.inbound.set(self.inbound.get() - old + new);
    }

    /// Kernel send-buffer bytes over every full socket, as last sampled.
    pub fn kernel(&self) -> usize {
        self.kernel_charged.get() + self.kernel_other.get()
    }

    /// Kernel bytes charged to the ceiling.
    pub fn kernel_charged(&self) -> usize {
        self.kernel_charged.get()
    }

    fn kernel_bucket(&self, charged: bool) -> &Cell<usize> {
        if charged {
            &self.kernel_charged
        } else {
            &self.kernel_other
        }
    }

    /// A connection's sampled kernel bytes went from `old` to `new` (in the charged bucket
    /// or not).
    pub fn kernel_changed(&self, old: usize, new: usize, charged: bool) {
        let c = self.kernel_bucket(charged);
        c.set(c.get() - old + new);
    }

    /// A connection's `bytes` of kernel memory start (`on`) or stop being charged.
    pub fn kernel_charge(&self, bytes: usize, on: bool) {
        let (from, to) = (self.kernel_bucket(!on), self.kernel_bucket(on));
        from.set(from.get() - bytes);
        to.set(to.get() + bytes);
    }

    /// Bytes held by live frames (each counted once, at [`frame_cost`]).
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes.get()
    }

    /// Bytes held by the entry arrays of non-empty queues.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes.get()
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
            .store((self.charged() + mesh) as u64, Relaxed);
        stats.kernel_bytes.store(self.kernel() as u64, Relaxed);
        stats.inbound_bytes.store(self.inbound() as u64, Relaxed);
        stats.mesh_bytes.store(mesh as u64, Relaxed);
        stats.queued_frames.store(self.entries() as u64, Relaxed);
        stats
            .total_queued_bytes
            .store(self.queued() as u64, Relaxed);
    }

    /// Wrap an encoded frame that owns its buffer (a connection's own reply, pong, close) for
    /// queueing; it is counted until the last holder drops it. `published_at` is when a
    /// published frame's publish was accepted (`None` for a connection's own frames); it is
    /// stored once per frame, not per queue entry.
    pub fn frame(
        self: &Rc<Self>,
        bytes: Bytes,
        topic: Option<Arc<str>>,
        published_at: Option<Instant>,
    ) -> Rc<QueuedFrame> {
        self.wrap(bytes, topic, published_at, false)
    }

    /// [`frame`](Self::frame) for a buffer shared with other holders (a published frame,
    /// which the envelope, the mesh or other shards also hold; a frame queued to many
    /// connections at once).
    pub fn shared_frame(
        self: &Rc<Self>,
        bytes: Bytes,
        topic: Option<Arc<str>>,
        published_at: Option<Instant>,
    ) -> Rc<QueuedFrame> {
        self.wrap(bytes, topic, published_at, true)
    }

    fn wrap(
        self: &Rc<Self>,
        bytes: Bytes,
        topic: Option<Arc<str>>,
        published_at: Option<Instant>,
        shared: bool,
    ) -> Rc<QueuedFrame> {
        let charge = frame_cost(bytes.len(), shared);
        self.frame_bytes.set(self.frame_bytes.get() + charge);
        Rc::new(QueuedFrame {
            bytes,
            topic,
            published_at,
            ledger: self.clone(),
            charge,
        })
    }

    fn slots_changed(&self, old: usize, new: usize) {
        self.slot_bytes.set(self.slot_bytes.get() - old + new);
    }
}

/// Unfinished input held outside a connection's own accounting (an HTTP publish body being
/// read), charged to the ledger while held and released on drop.
pub struct InboundHold<'a> {
    ledger: &'a Ledger,
    held: usize,
}

impl InboundHold<'_> {
    /// Now `bytes` are held.
    pub fn set(&mut self, bytes: usize) {
        self.ledger.inbound_changed(self.held, bytes);
        self.held = bytes;
    }
}

impl Drop for InboundHold<'_> {
    fn drop(&mut self) {
        self.ledger.inbound_changed(self.held, 0);
    }
}

/// [`InboundHold`] that a connection keeps in its boxed receive or request state (so it owns
/// its `Rc` of the ledger): dropping the state releases the charge, whatever the way out.
pub struct InboundCharge {
    ledger: Rc<Ledger>,
    held: usize,
}

impl std::fmt::Debug for InboundCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCharge")
            .field("held", &self.held)
            .finish()
    }
}

impl InboundCharge {
    /// Nothing held yet.
    pub fn new(ledger: Rc<Ledger>) -> Self {
        InboundCharge { ledger, held: 0 }
    }

    /// Now `bytes` are held; true if that is more than before.
    pub fn set(&mut self, bytes: usize) -> bool {
        self.ledger.inbound_changed(self.held, bytes);
        let grew = bytes > self.held;
        self.held = bytes;
        grew
    }
}

impl Drop for InboundCharge {
    fn drop(&mut self) {
        self.ledger.inbound_changed(self.held, 0);
    }
}

impl Ledger {
    /// Start holding unfinished input (nothing yet).
    pub fn hold_inbound(&self) -> InboundHold<'_> {
        InboundHold {
            ledger: self,
            held: 0,
        }
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
    /// What it was charged ([`frame_cost`]), given back on drop.
    charge: usize,
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

    /// What it is charged to its ledger while it lives ([`frame_cost`]).
    pub fn charge(&self) -> usize {
        self.charge
    }

    fn is_topic(&self, topic: &str) -> bool {
        self.topic.as_deref() == Some(topic)
    }
}

impl Drop for QueuedFrame {
    fn drop(&mut self) {
        let l = &self.ledger;
        l.frame_bytes.set(l.frame_bytes.get() - self.charge);
    }
}

/// FIFO of frames waiting to be written to one socket.
#[derive(Default)]
pub struct SendQueue {
    frames: VecDeque<Rc<QueuedFrame>>,
    /// Bytes of the head frame already written.
    head_sent: usize,
    bytes: usize,
    // The entry array is charged [`slots_cost`] of its capacity, always: derived, not stored
    // (every capacity change goes through `recharge`, which moves the ledger's charge with it).
    /// Index of the pong waiting to be sent, replaced by a newer one ([`NO_PONG`]: none).
    /// (`u32`s: this struct is in every connection.)
    pong: u32,
    /// Frames at the front covered by a send in flight ([`gather`](Self::gather)): like a
    /// started head, never dropped, conflated or cleared until the send completes (or the
    /// connection ends: [`release_in_flight`](Self::release_in_flight) hands them over)
    /// ([`unpin`](Self::unpin)): the driver reads them without a reference of its own.
    pinned: u32,
}

/// [`SendQueue`]'s `pong` when no pong waits.
const NO_PONG: u32 = u32::MAX;

impl SendQueue {
    /// Empty queue (allocates nothing until the first push).
    pub const fn new() -> Self {
        Self {
            frames: VecDeque::new(),
            head_sent: 0,
            bytes: 0,
            pong: NO_PONG,
            pinned: 0,
        }
    }

    /// What the entry array is charged ([`slots_cost`] of its capacity).
    pub fn slots_charged(&self) -> usize {
        slots_cost(self.frames.capacity())
    }

    /// Shrink an array that is mostly spare (an empty queue keeps [`QUEUE_FLOOR`] entries, a
    /// non-empty one at most four times what it holds), and move the ledger's charge from
    /// what an array of `was` entries is charged to what the array is charged now (after any
    /// change to the queue that may have changed its capacity).
    fn recharge_from(&mut self, ledger: &Ledger, was: usize) {
        let len = self.frames.len();
        let cap = self.frames.capacity();
        if len == 0 && cap > QUEUE_FLOOR {
            self.frames.shrink_to(QUEUE_FLOOR);
        } else if cap > 4 * QUEUE_FLOOR && len * 4 <= cap {
            self.frames.shrink_to(len * 2);
        }
        let (old, new) = (slots_cost(was), self.slots_charged());
        if old != new {
            ledger.slots_changed(old, new);
        }
    }

    /// [`recharge_from`](Self::recharge_from) the current capacity (a removal: only a shrink
    /// here can change it).
    fn recharge(&mut self, ledger: &Ledger) {
        self.recharge_from(ledger, self.frames.capacity());
    }

    /// What the next [`push`](Self::push) adds to the entry array's charge (the array grows
    /// when full).
    #[inline]
    pub fn push_cost(&self) -> usize {
        let (len, cap) = (self.frames.len(), self.frames.capacity());
        if len < cap {
            return 0; // room left: the array does not grow
        }
        slots_cost((cap * 2).max(QUEUE_FLOOR)) - slots_cost(cap)
    }

    fn counted(f: &QueuedFrame, bytes: isize, entries: isize) {
        let l = &f.ledger;
        l.queued.set(l.queued.get().wrapping_add_signed(bytes));
        l.entries.set(l.entries.get().wrapping_add_signed(entries));
    }

    /// Append a frame; empty frames are ignored (nothing to write).
    #[inline(always)]
    pub fn push(&mut self, frame: Rc<QueuedFrame>) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        Self::counted(&frame, frame.len() as isize, 1);
        let cap = self.frames.capacity();
        self.frames.push_back(frame);
        // Every change leaves the array at most four times what it holds (`recharge`), and a
        // push only adds: its charge changes only when the array grew.
        if self.frames.capacity() != cap {
            self.grew(cap);
        }
    }

    /// [`push`](Self::push) grew the entry array from `was` entries: charge the growth.
    #[cold]
    #[inline(never)]
    fn grew(&mut self, was: usize) {
        let ledger = self.frames.back().expect("just pushed").ledger.clone();
        self.recharge_from(&ledger, was);
    }

    /// Queue a pong (RFC 6455 §5.5.3: only the latest ping needs an answer while one waits):
    /// a pong already waiting and not started is replaced; otherwise it is appended.
    pub fn push_pong(&mut self, frame: Rc<QueuedFrame>) {
        let i = self.pong as usize;
        let waiting = (self.pong != NO_PONG && i >= self.protected())
            .then_some(i)
            .filter(|&i| i < self.frames.len());
        match waiting {
            Some(i) => {
                let old = std::mem::replace(&mut self.frames[i], frame);
                let new = &self.frames[i];
                self.bytes = self.bytes - old.len() + new.len();
                Self::counted(&old, -(old.len() as isize), 0);
                Self::counted(new, new.len() as isize, 0);
            }
            None => {
                self.push(frame);
                self.pong = (self.frames.len() - 1).min(NO_PONG as usize - 1) as u32;
            }
        }
    }

    /// Logical unsent bytes, including the rest of a partially written head frame.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Unsent bytes of the frame being written (the head), 0 when empty.
    pub fn head_remaining(&self) -> usize {
        self.frames.front().map_or(0, |f| f.len() - self.head_sent)
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
        (self.pinned as usize).max(usize::from(self.head_started()))
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
        let max_frames = max_frames.min(u32::MAX as usize);
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
        self.pinned = frames as u32;
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
    ///
    /// The entry array keeps its capacity (a burst drains a queue and fills it again many
    /// times: shrinking each time would reallocate it as often): when it is left mostly spare
    /// ([`spare`](Self::spare)) the owner shrinks it later with [`trim`](Self::trim) (the shard,
    /// on its tick); until then it stays charged at its capacity.
    pub fn advance_with(&mut self, n: usize, mut written: impl FnMut(&QueuedFrame)) {
        assert!(
            n <= self.bytes,
            "advance {n} past {} queued bytes",
            self.bytes
        );
        if n == 0 {
            return;
        }
        // Which frames `n` finishes, and how far into the next one it gets.
        let (mut left, mut offset, mut whole) = (n, self.head_sent, 0usize);
        for f in self.frames.iter() {
            let rest = f.len() - offset;
            if left < rest {
                break;
            }
            left -= rest;
            offset = 0;
            whole += 1;
            written(f);
            if left == 0 {
                break;
            }
        }
        // One ledger update for the whole advance (every frame of a queue is the shard's).
        let head = self.frames.front().expect("bytes accounted for");
        Self::counted(head, -(n as isize), -(whole as isize));
        self.bytes -= n;
        self.head_sent = offset + left;
        self.pinned = self
            .pinned
            .saturating_sub(whole.min(u32::MAX as usize) as u32);
        // The waiting pong moves down by the frames released in front of it (or goes with them).
        self.pong = match self.pong.checked_sub(whole as u32) {
            Some(p) if self.pong != NO_PONG => p,
            _ => NO_PONG,
        };
        for _ in 0..whole {
            self.frames.pop_front();
        }
    }

    /// True when the entry array is mostly spare: empty above [`QUEUE_FLOOR`] entries, or at
    /// most a quarter used — what [`trim`](Self::trim) shrinks.
    pub fn spare(&self) -> bool {
        let (len, cap) = (self.frames.len(), self.frames.capacity());
        (len == 0 && cap > QUEUE_FLOOR) || (cap > 4 * QUEUE_FLOOR && len * 4 <= cap)
    }

    /// Shrink a mostly spare entry array (an empty queue keeps [`QUEUE_FLOOR`] entries, a
    /// non-empty one at most four times what it holds) and bring its charge in `ledger` (the
    /// ledger of its frames) in line: after [`advance`](Self::advance) left it
    /// [`spare`](Self::spare), and before a queue is dropped.
    pub fn trim(&mut self, ledger: &Ledger) {
        self.recharge(ledger);
    }

    /// Drop everything queued except the rest of a partially written head frame (which
    /// must go out before anything else can); returns the frames dropped.
    pub fn clear_unstarted(&mut self) -> usize {
        let keep = self.protected();
        let dropped = self.frames.len() - keep;
        self.remove_where(keep, dropped, |_| true);
        dropped
    }

    /// Drop everything queued, a partially written head included (the connection is ending) —
    /// except the frames a send in flight covers: the driver holds no reference to them and the
    /// kernel may read them until the send's completion (driver contract 3), so they stay, as
    /// they are, until [`unpin`](Self::unpin) and another `clear`.
    pub fn clear(&mut self) {
        if self.pinned > 0 {
            let keep = self.pinned as usize;
            self.remove_where(keep, self.frames.len() - keep, |_| true);
            return;
        }
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

    /// Drop everything queued like [`clear`](Self::clear), the frames of a send in flight
    /// included, and return a handle to the buffer of each of those: the caller keeps them
    /// until the send's completion (driver contract 3) while the queue and the ledger let go now
    /// (the connection is ending: nothing can release them sooner, so they are not charged).
    pub fn release_in_flight(&mut self) -> Vec<Bytes> {
        let held: Vec<Bytes> = self
            .frames
            .iter()
            .take(self.pinned as usize)
            .map(|f| f.bytes.clone())
            .collect();
        self.pinned = 0;
        self.clear();
        held
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
        // The waiting pong's index moves down by the removals in front of it (or it goes).
        let pong = (self.pong != NO_PONG).then_some(self.pong as usize);
        let (mut before_pong, mut pong_removed) = (0, false);
        self.frames.retain(|f| {
            let idx = i;
            i += 1;
            if idx >= from && count > 0 && pred(f) {
                count -= 1;
                removed.push(f.clone());
                match pong {
                    Some(p) if p == idx => pong_removed = true,
                    Some(p) if idx < p => before_pong += 1,
                    _ => {}
                }
                false
            } else {
                true
            }
        });
        self.pong = pong
            .filter(|_| !pong_removed)
            .map_or(NO_PONG, |p| (p - before_pong) as u32);
        for f in &removed {
            self.bytes -= f.len();
            Self::counted(f, -(f.len() as isize), -1);
        }
        if let Some(f) = removed.first() {
            let ledger = f.ledger.clone();
            drop(removed);
            self.recharge(&ledger);
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

    /// What own (unshared) frames of these lengths are charged.
    fn cost(lens: &[usize]) -> usize {
        lens.iter().map(|&n| frame_cost(n, false)).sum()
    }

    /// The entry array of a queue that holds at most four frames: its floor, not charged.
    const SLOTS: usize = slots_cost(QUEUE_FLOOR);

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
            cost(&[3, 2]) + SLOTS,
            "the empty frame was dropped too"
        );
        s.advance(3);
        assert_eq!(
            (s.len_bytes(), l.queued(), l.retained()),
            (2, 2, cost(&[2]) + SLOTS)
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
            cost(&[5, 5]) + SLOTS,
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
        let frame = l.shared_frame(Bytes::from(vec![7u8; 1000]), None, None);
        let mut queues: Vec<SendQueue> = (0..10_000).map(|_| SendQueue::new()).collect();
        for q in &mut queues {
            q.push(frame.clone());
        }
        drop(frame);
        let one = frame_cost(1000, true);
        assert_eq!(l.retained(), one + 10_000 * SLOTS);
        assert_eq!(l.queued(), 10_000 * 1000, "logical bytes count per queue");
        for q in &mut queues[..9_999] {
            q.advance(1000);
        }
        assert_eq!(
            l.retained(),
            one + SLOTS,
            "held until the last queue lets go"
        );
        queues[9_999].advance(999);
        assert_eq!(l.retained(), one + SLOTS);
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
        // Six frames grew the array to 8 entries; two left in it shrink nothing yet.
        assert_eq!(l.retained(), cost(&[4, 4]) + slots_cost(8));
        assert_eq!(s.clear_unstarted(), 1);
        assert_eq!(flat(&s), [0u8; 3]);
        assert_eq!((l.retained(), l.queued()), (cost(&[4]) + slots_cost(8), 3));
        s.advance(3);
        assert_eq!(s.clear_unstarted(), 0);
        assert_eq!(
            (l.retained(), l.queued(), l.entries()),
            (slots_cost(8), 0, 0)
        );
        s.trim(&l);
        assert_eq!(l.retained(), 0);
    }

    #[test]
    fn size_classes_are_jemallocs() {
        let classes = [
            (1, 8),
            (8, 8),
            (9, 16),
            (17, 32),
            (100, 112),
            (128, 128),
            (129, 160),
            (200, 224),
            (257, 320),
            (1000, 1024),
            (1025, 1280),
            (14_337, 16_384),
            (16_385, 20_480),
            ((1 << 20) + 10, (1 << 20) + (1 << 18)),
        ];
        for (n, class) in classes {
            assert_eq!(size_class(n), class, "{n}");
        }
        assert_eq!(SHARED_HEADER, 32);
        assert!(FRAME_HEADER >= 16 + std::mem::size_of::<QueuedFrame>());
    }

    #[test]
    fn a_ping_flood_queues_one_pong_and_a_started_pong_is_left_alone() {
        let l = ledger();
        let mut s = SendQueue::new();
        let pong = |p: &'static [u8]| l.frame(Bytes::from_static(p), None, None);
        s.push(l.frame(Bytes::from_static(b"data"), None, None));
        for p in [b"\x8a\x01a", b"\x8a\x01b", b"\x8a\x01c"] {
            s.push_pong(pong(p));
        }
        assert_eq!(flat(&s), b"data\x8a\x01c", "the latest ping answered, once");
        assert_eq!((s.len_frames(), l.entries(), l.queued()), (2, 2, 7));
        assert_eq!(l.retained(), cost(&[4, 3]) + SLOTS);
        // The data goes out and the pong starts: a newer pong waits behind it.
        s.advance(5);
        s.push_pong(pong(b"\x8a\x01d"));
        s.push_pong(pong(b"\x8a\x01e"));
        assert_eq!(flat(&s), b"\x01c\x8a\x01e");
        // Removals in front keep the index right.
        let t: Arc<str> = Arc::from("t");
        s.advance(2);
        s.push(l.frame(Bytes::from_static(b"t1"), Some(t.clone()), None));
        s.push_pong(pong(b"\x8a\x01f"));
        assert_eq!(flat(&s), b"\x8a\x01ft1");
        s.push(l.frame(Bytes::from_static(b"t2"), Some(t.clone()), None));
        s.advance(1);
        s.push_pong(pong(b"\x8a\x01g")); // the waiting pong is started: appended
        s.keep_newest("t", 0);
        s.push_pong(pong(b"\x8a\x01h"));
        assert_eq!(flat(&s), b"\x01f\x8a\x01h");
        s.clear();
        s.push_pong(pong(b"\x8a\x01i"));
        assert_eq!(flat(&s), b"\x8a\x01i");
        s.advance(3);
        assert_eq!((l.retained(), l.queued(), l.entries()), (0, 0, 0));
    }

    #[test]
    fn the_entry_array_is_charged_while_used_and_shrinks() {
        let l = ledger();
        let mut s = SendQueue::new();
        assert_eq!(s.push_cost(), 0, "the floor is a per-connection cost");
        for _ in 0..1000 {
            s.push(l.frame(Bytes::from_static(b"x"), None, None));
        }
        let big = s.frames.capacity();
        assert!(big >= 1000);
        assert_eq!(l.slot_bytes(), slots_cost(big));
        s.advance(495);
        assert!(!s.spare());
        s.advance(495);
        assert_eq!(
            s.frames.capacity(),
            big,
            "kept as it drains (no churn in a burst)..."
        );
        assert_eq!(l.slot_bytes(), slots_cost(big), "...and charged while kept");
        assert!(s.spare());
        s.trim(&l);
        assert!(s.frames.capacity() <= 40, "mostly spare: trimmed");
        assert_eq!(l.slot_bytes(), slots_cost(s.frames.capacity()));
        assert!(!s.spare());
        s.advance(10);
        assert!(s.spare());
        s.trim(&l);
        assert_eq!(
            s.frames.capacity(),
            QUEUE_FLOOR,
            "an empty queue keeps the floor"
        );
        assert_eq!(l.slot_bytes(), 0, "not charged while empty");
        assert_eq!(l.retained(), 0);
        assert!(!s.spare());
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
        s.trim(&l);
        assert_eq!((l.retained(), l.queued()), (0, 0));
        // A byte budget stops the gather after the first frame.
        s.push(l.frame(Bytes::from(vec![9; 10]), None, None));
        s.push(l.frame(Bytes::from(vec![9; 10]), None, None));
        assert_eq!(s.gather(10, 5, |_, _| ()), (1, 10));
    }

    #[test]
    fn clearing_keeps_the_frames_of_a_send_in_flight_until_it_completes() {
        let l = ledger();
        let mut s = SendQueue::new();
        for i in 0..4u8 {
            s.push(l.frame(Bytes::from(vec![i; 8]), None, None));
        }
        s.advance(3);
        let mut ptrs = Vec::new();
        assert_eq!(
            s.gather(2, usize::MAX, |b, off| ptrs.push(b[off..].as_ptr())),
            (2, 13)
        );
        // The connection ends while the kernel still reads the two gathered frames.
        s.clear();
        assert_eq!(s.len_frames(), 2, "the gathered frames stay");
        assert_eq!((s.len_bytes(), l.queued()), (13, 13));
        assert_eq!(l.retained(), cost(&[8, 8]) + SLOTS, "and stay counted");
        let still: Vec<_> = s
            .batch(usize::MAX, usize::MAX)
            .map(<[u8]>::as_ptr)
            .collect();
        assert_eq!(still, ptrs, "the memory the iovecs point into is unchanged");
        // The completion: unpinned, the next clear releases everything.
        s.unpin();
        s.clear();
        assert!(s.is_empty());
        assert_eq!((l.retained(), l.queued(), l.entries()), (0, 0, 0));
        // Or the connection ends: the queue and the ledger let go at once, and the caller keeps
        // the buffers the send reads until its completion.
        for i in 0..3u8 {
            s.push(l.frame(Bytes::from(vec![i; 8]), None, None));
        }
        s.advance(2);
        let mut ptrs = Vec::new();
        s.gather(2, usize::MAX, |b, off| ptrs.push(b[off..].as_ptr()));
        let held = s.release_in_flight();
        assert!(s.is_empty());
        s.trim(&l);
        assert_eq!((l.retained(), l.queued(), l.entries()), (0, 0, 0));
        assert_eq!(held.len(), 2);
        assert_eq!(held[0][2..].as_ptr(), ptrs[0], "the started head's rest");
        assert_eq!(held[1].as_ptr(), ptrs[1]);
        assert_eq!((&held[0][..], &held[1][..]), (&[0u8; 8][..], &[1u8; 8][..]));
        assert!(
            s.release_in_flight().is_empty(),
            "nothing in flight: nothing held"
        );
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
            let frames: usize = model.iter().map(|f| frame_cost(f.0.len(), false)).sum();
            assert_eq!(l.retained(), frames + s.slots_charged());
            assert_eq!(l.slot_bytes(), slots_cost(s.frames.capacity()));
        }
    }
}
