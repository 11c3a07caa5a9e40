//! A send in flight and the pool of them, for both drivers: the gather the core handed over,
//! as iovecs plus a `Bytes` clone of every frame they point into, so the memory a submitted
//! send reads stays valid until its completion whatever the core does to its queue
//! (`runtime::driver`, ownership rule). Boxed, so the `msghdr` and iovecs keep their address
//! while the kernel holds them.

use bytes::Bytes;

use crate::runtime::driver::{ConnId, Handler};

/// One send: what its iovecs point into, and how far it got.
pub struct SendRecord {
    /// The message header an io_uring `SENDMSG` points at.
    pub msg: libc::msghdr,
    /// The gather (an epoll send advances it past what was written).
    pub iov: Vec<libc::iovec>,
    /// A clone of every frame the iovecs point into.
    pub hold: Vec<Bytes>,
    /// First iovec not fully written (epoll).
    pub next: usize,
    /// Bytes written so far (epoll).
    pub done: usize,
}

/// Records kept for reuse: small ones (a few iovecs), at most `max`.
pub struct SendPool {
    // Boxed: a record keeps its address while its send is in flight; the pool reuses them.
    #[allow(clippy::vec_box)]
    free: Vec<Box<SendRecord>>,
    max: usize,
}

/// A record that a large gather grew past this many iovecs is not kept.
const KEEP_IOVECS: usize = 64;

impl SendPool {
    /// A pool keeping at most `max` records.
    pub fn new(max: usize) -> SendPool {
        SendPool {
            free: Vec::new(),
            max,
        }
    }

    /// A record holding one gather of `id` from `h` (which pins it until `sent`).
    pub fn gather<H: Handler>(&mut self, h: &mut H, id: ConnId) -> Box<SendRecord> {
        let mut rec = self.free.pop().unwrap_or_else(|| {
            Box::new(SendRecord {
                // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
                msg: unsafe { std::mem::zeroed() },
                // Small: most sends carry a frame or a few; a burst's record grows as needed.
                iov: Vec::with_capacity(4),
                hold: Vec::with_capacity(4),
                next: 0,
                done: 0,
            })
        });
        let SendRecord { iov, hold, msg, .. } = &mut *rec;
        h.gather(id, &mut |b, offset| {
            hold.push(b.clone());
            let held = hold.last().expect("just pushed");
            iov.push(libc::iovec {
                iov_base: held[offset..].as_ptr() as *mut libc::c_void,
                iov_len: held.len() - offset,
            });
        });
        debug_assert!(iov.len() <= crate::runtime::driver::MAX_IOVECS);
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        rec
    }

    /// Take a finished record back (its holds are released now).
    pub fn recycle(&mut self, mut rec: Box<SendRecord>) {
        rec.iov.clear();
        rec.hold.clear();
        rec.next = 0;
        rec.done = 0;
        if self.free.len() < self.max && rec.iov.capacity() <= KEEP_IOVECS {
            self.free.push(rec);
        }
    }
}
