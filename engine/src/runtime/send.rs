//! A send in flight and the pool of them, for both drivers: the gather the core handed over,
//! as iovecs into frames the core keeps alive (pinned in the connection's queue) until it sees
//! the send's completion (`runtime::driver`, ownership rule 3). The record holds no reference
//! to the frames: a delivery costs an iovec, not a reference count taken and given back on
//! a shared cache line. Boxed, so the `msghdr` and iovecs keep their address while the kernel
//! holds them.

use crate::runtime::driver::{ConnId, Gather, Handler, MAX_IOVECS};

/// One send: its iovecs, and how far it got.
pub struct SendRecord {
    /// The message header an io_uring `SENDMSG` points at.
    pub msg: libc::msghdr,
    /// The gather (an epoll send advances it past what was written). It points into frames
    /// the handler keeps alive until the send's completion.
    pub iov: Vec<libc::iovec>,
    /// First iovec not fully written (epoll).
    pub next: usize,
    /// Bytes written so far (epoll).
    pub done: usize,
}

impl SendRecord {
    /// An empty record with room for `iovecs` iovecs.
    fn with_capacity(iovecs: usize) -> Box<SendRecord> {
        Box::new(SendRecord {
            // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
            iov: Vec::with_capacity(iovecs),
            next: 0,
            done: 0,
        })
    }
}

/// Records kept for reuse: small ones (a few iovecs), at most `max`; and, while gathers
/// keep being large, the full-size records of the last turn's large gathers.
pub struct SendPool {
    // Boxed: a record keeps its address while its send is in flight; the pool reuses them.
    #[allow(clippy::vec_box)]
    free: Vec<Box<SendRecord>>,
    max: usize,
    /// Free records of [`MAX_IOVECS`] iovecs. A burst to many connections makes a large
    /// gather per connection per turn: allocating each afresh put it on new pages (a page fault
    /// per few iovecs, and the allocator's purging behind it), so they are reused while large
    /// gathers go on and released after a turn without one ([`end_turn`](Self::end_turn)).
    #[allow(clippy::vec_box)]
    large: Vec<Box<SendRecord>>,
    /// A large gather was made this turn.
    large_used: bool,
    /// A large gather was made this turn or the last: finished full-size records are kept.
    keep_large: bool,
}

/// A record that a large gather grew past this many iovecs is not kept among the small ones.
const KEEP_IOVECS: usize = 64;

impl SendPool {
    /// A pool keeping at most `max` small records.
    pub fn new(max: usize) -> SendPool {
        SendPool {
            free: Vec::new(),
            max,
            large: Vec::new(),
            large_used: false,
            keep_large: false,
        }
    }

    /// A record of one gather of `id` from `h` (which keeps its frames alive until `sent`).
    pub fn gather<H: Handler>(&mut self, h: &mut H, id: ConnId) -> Box<SendRecord> {
        let frames = h.gather_frames(id).min(MAX_IOVECS);
        // A gather too large for a small record takes a full-size one, allocated once (never
        // grown from a small one by doubling: each move of a large array lands on new pages).
        let mut rec = if frames > KEEP_IOVECS {
            self.large_used = true;
            self.keep_large = true;
            self.large
                .pop()
                .unwrap_or_else(|| SendRecord::with_capacity(MAX_IOVECS))
        } else {
            // Small: most sends carry a frame or a few.
            self.free
                .pop()
                .unwrap_or_else(|| SendRecord::with_capacity(frames.max(4)))
        };
        let SendRecord { iov, msg, .. } = &mut *rec;
        iov.reserve(frames);
        h.gather(id, &mut Gather::new(iov));
        debug_assert!(iov.len() <= MAX_IOVECS);
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        rec
    }

    /// Take a finished record back.
    pub fn recycle(&mut self, mut rec: Box<SendRecord>) {
        rec.iov.clear();
        rec.next = 0;
        rec.done = 0;
        let cap = rec.iov.capacity();
        if cap >= MAX_IOVECS && self.keep_large {
            // At most one per send in flight: bounded by the connections a burst reaches.
            self.large.push(rec);
        } else if self.free.len() < self.max && cap <= KEEP_IOVECS {
            self.free.push(rec);
        }
    }

    /// The driver's turn is over (its transmits are made): full-size records are released
    /// unless a large gather was made during it.
    pub fn end_turn(&mut self) {
        if !self.large_used {
            self.large = Vec::new();
        }
        self.keep_large = self.large_used;
        self.large_used = false;
    }

    /// Full-size records kept for reuse.
    pub fn large_kept(&self) -> usize {
        self.large.len()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;

    use bytes::Bytes;

    use super::*;
    use crate::runtime::driver::{Admit, IoRequest};

    /// A handler whose every gather is `frames` frames of one byte.
    struct Frames {
        frames: usize,
        bytes: Bytes,
    }

    impl Handler for Frames {
        fn accepted(&mut self, _peer: SocketAddr, _via: crate::runtime::driver::Via) -> Admit {
            Admit::Refuse(Bytes::new())
        }
        fn received(&mut self, _id: ConnId, _data: &mut [u8]) {}
        fn read_closed(&mut self, _id: ConnId, _error: bool) {}
        fn sent(&mut self, _id: ConnId, _result: io::Result<usize>) {}
        fn closed(&mut self, _id: ConnId) {}
        fn reading(&self, _id: ConnId) -> bool {
            false
        }
        fn poll_io(&mut self) -> Option<IoRequest> {
            None
        }
        fn poll_transmit(&mut self) -> Option<ConnId> {
            None
        }
        fn gather_frames(&self, _id: ConnId) -> usize {
            self.frames
        }
        fn gather(&mut self, _id: ConnId, out: &mut Gather<'_>) -> usize {
            for _ in 0..self.frames {
                // SAFETY: `bytes` is static.
                unsafe { out.push(&self.bytes) };
            }
            self.frames
        }
    }

    const ID: ConnId = ConnId { slot: 0, gen: 0 };

    fn handler(frames: usize) -> Frames {
        Frames {
            frames,
            bytes: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_large_gather_takes_a_full_size_record_and_a_small_one_a_small_record() {
        let mut pool = SendPool::new(8);
        let rec = pool.gather(&mut handler(KEEP_IOVECS + 1), ID);
        assert_eq!(rec.iov.len(), KEEP_IOVECS + 1);
        assert_eq!(rec.msg.msg_iovlen as u64, rec.iov.len() as u64);
        assert_eq!(rec.msg.msg_iov.cast_const(), rec.iov.as_ptr());
        assert_eq!(rec.iov.capacity(), MAX_IOVECS, "allocated once, full size");
        let small = pool.gather(&mut handler(3), ID);
        assert!(small.iov.capacity() <= KEEP_IOVECS);
        assert_eq!(small.iov.len(), 3);
    }

    #[test]
    fn full_size_records_are_reused_while_large_gathers_go_on_and_released_after() {
        let mut pool = SendPool::new(8);
        let mut large = handler(MAX_IOVECS);
        // Turn 1: two large sends in flight.
        let a = pool.gather(&mut large, ID);
        let b = pool.gather(&mut large, ID);
        let (pa, pb) = (a.iov.as_ptr(), b.iov.as_ptr());
        pool.end_turn();
        // Turn 2: they complete (as an io_uring driver reaps them before its flush), then the
        // flush gathers large again: the same records come back, nothing is allocated.
        pool.recycle(a);
        pool.recycle(b);
        assert_eq!(pool.large_kept(), 2);
        let c = pool.gather(&mut large, ID);
        let d = pool.gather(&mut large, ID);
        let mut got = [c.iov.as_ptr(), d.iov.as_ptr()];
        got.sort();
        let mut want = [pa, pb];
        want.sort();
        assert_eq!(got, want, "the pooled records are reused");
        assert_eq!(pool.large_kept(), 0);
        pool.end_turn();
        // Turn 3: they complete; this turn's gathers are small: at its end the pool lets go.
        pool.recycle(c);
        pool.recycle(d);
        assert_eq!(pool.large_kept(), 2);
        let e = pool.gather(&mut handler(2), ID);
        pool.recycle(e);
        pool.end_turn();
        assert_eq!(
            pool.large_kept(),
            0,
            "released after a turn without a large gather"
        );
        // A large record finishing after that is not kept either.
        let f = pool.gather(&mut large, ID);
        pool.end_turn();
        pool.end_turn();
        pool.recycle(f);
        assert_eq!(pool.large_kept(), 0);
    }

    #[test]
    fn the_iovecs_point_into_the_handlers_frames() {
        let mut pool = SendPool::new(8);
        let mut h = handler(KEEP_IOVECS * 2);
        let rec = pool.gather(&mut h, ID);
        assert_eq!(rec.iov.len(), KEEP_IOVECS * 2);
        for v in &rec.iov {
            assert_eq!(
                v.iov_base as *const u8,
                h.bytes.as_ptr(),
                "no copy, no clone"
            );
            assert_eq!(v.iov_len, h.bytes.len());
        }
    }
}
