//! The driver contract: what an I/O driver promises the shard core, and what it asks of it.
//!
//! A driver owns the shard's sockets (listeners, connections, doorbell) and moves bytes; the core
//! ([`Handler`], implemented by `shard::Core`) decides everything else. Both backends
//! (`runtime::uring`, `runtime::epoll`) implement this contract:
//!
//! 1. **Events in.** [`Driver::dispatch`] hands every event since the last turn to the handler:
//!    [`Handler::accepted`] (with the [`Via`] listener that took it: the handler admits the
//!    connection and assigns it a [`ConnId`], or
//!    refuses it with a response the driver writes best effort before closing),
//!    [`Handler::received`] (a slice the handler copies what it keeps out of; the buffer is
//!    the driver's again when the call returns), [`Handler::read_closed`] (EOF or an error:
//!    no more input), [`Handler::sent`] (the one send in flight completed: all its bytes were
//!    taken by the kernel, or an error — a send that would block stays in flight, with its
//!    frames pinned, until it can finish, as a blocking send does) and [`Handler::closed`] (the
//!    socket is released and every operation on it has completed: only now may the handler
//!    reuse the slot). Per connection, events keep their
//!    order.
//! 2. **Submissions out.** [`Driver::flush`] asks for work: [`Handler::poll_io`] (start or
//!    stop reading, half-close, close, stop accepting) and [`Handler::poll_transmit`] (a
//!    connection with frames to write and no send in flight), for which the handler fills one
//!    gather with [`Handler::gather`]. The driver submits one send per such connection.
//! 3. **Ownership until completion.** Whatever a submitted operation points into stays valid
//!    until its completion is reaped, whatever else happens meanwhile. The driver owns the send
//!    record (its `msghdr` and iovecs) and a provided receive buffer; the **handler** owns the
//!    bytes of every frame a gather covers ([`Gather::push`]) and keeps them allocated and
//!    unchanged until it sees [`Handler::sent`] for that send, or [`Handler::closed`] for the
//!    connection (a driver may drop a send that never started at close: epoll). The core does
//!    that by pinning the gathered frames in the connection's queue (`flow::queue`: a pinned
//!    frame is never dropped or conflated) and, when the connection ends first, by keeping a
//!    `Bytes` handle to each (`shard::State::ended_in_flight`); the driver holds no reference.
//! 4. **At most one send in flight per socket**: the handler never offers a connection to
//!    `poll_transmit` between `gather` and `sent`.
//! 5. **Close is final.** After [`IoRequest::Close`] the driver cancels what is pending on the
//!    socket, waits for the last completions, closes it (with `SO_LINGER` 0 for
//!    [`CloseMode::Reset`], and for [`CloseMode::ResetIfUnsent`] when the kernel still holds
//!    unsent bytes) and then reports [`Handler::closed`]. Completions reaped in between
//!    are still delivered.
//! 6. **Slot reuse.** [`ConnId`] is a slot plus its generation; every submission carries both
//!    (io_uring `user_data`, the epoll event's data), and the handler ignores an event whose
//!    generation is not the slot's current one. Because a slot is freed only after `closed`,
//!    that never happens; the check makes it an assertion rather than a hope.
//! 7. **Waiting.** [`Driver::enter`] submits everything queued in the turn and waits for an
//!    event, the doorbell or `timeout` (io_uring: one `io_uring_enter`; epoll: `epoll_wait`).
//!    The doorbell ([`Driver::waker`]) wakes a parked driver from any thread.

use std::io;
use std::net::SocketAddr;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;

pub use crate::runtime::select::DriverKind;

/// A connection: its slot in the shard's slab and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Index in the slab.
    pub slot: u32,
    /// Generation of the slot when this connection got it.
    pub gen: u32,
}

impl ConnId {
    /// Bits of the generation carried in 64-bit submission data (with the slot and an
    /// operation code); generations are compared modulo this.
    pub const GEN_BITS: u32 = 24;

    /// The generation as carried in submissions.
    pub fn short_gen(self) -> u32 {
        self.gen & ((1 << Self::GEN_BITS) - 1)
    }

    /// Pack with an 8-bit operation code into 64 bits: `op << 56 | gen << 32 | slot`.
    pub fn pack(self, op: u8) -> u64 {
        u64::from(op) << 56 | u64::from(self.short_gen()) << 32 | u64::from(self.slot)
    }

    /// Unpack what [`pack`](Self::pack) made: (op, id with its short generation).
    pub fn unpack(data: u64) -> (u8, ConnId) {
        let id = ConnId {
            slot: data as u32,
            gen: (data >> 32) as u32 & ((1 << Self::GEN_BITS) - 1),
        };
        ((data >> 56) as u8, id)
    }
}

/// Which of the shard's listeners accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The data listener (`listen`): wss:// when TLS is configured, else ws://.
    Data = 0,
    /// The plain listener beside a TLS one (`listen_plain`): ws:// for internal traffic.
    Plain = 1,
}

impl Via {
    /// Both, in index order (a driver keeps its listeners in an array by this index).
    pub const ALL: [Via; 2] = [Via::Data, Via::Plain];
}

/// What the handler says to a just-accepted connection.
#[derive(Debug)]
pub enum Admit {
    /// Serve it as this connection.
    Accept(ConnId),
    /// Write this response (best effort, never waiting), then close it.
    Refuse(Bytes),
}

/// How to close a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Plain `close`: the kernel still sends what is in the socket buffer, then FIN.
    Graceful,
    /// `SO_LINGER` 0, then `close`: an RST now, the socket buffer is dropped (a peer that does
    /// not read must not pin kernel memory).
    Reset,
    /// [`Reset`](Self::Reset) if the kernel still holds unsent or unacknowledged bytes of the
    /// socket (the peer stopped reading: a plain close would leave them pinned in an orphaned
    /// socket for minutes), else [`Graceful`](Self::Graceful). For the end of a close whose
    /// frames were all handed to the kernel.
    ResetIfUnsent,
}

impl CloseMode {
    /// Whether closing `fd` this way resets it (asks the kernel for [`ResetIfUnsent`](Self::ResetIfUnsent)).
    pub fn resets(self, fd: std::os::fd::RawFd) -> bool {
        match self {
            CloseMode::Graceful => false,
            CloseMode::Reset => true,
            CloseMode::ResetIfUnsent => crate::runtime::sock::send_buffer_held(fd) > 0,
        }
    }
}

/// Something the handler asks the driver to do to a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRequest {
    /// Deliver input from this connection (after accept, and after a pause).
    Read(ConnId),
    /// Stop delivering input (a publisher held back by back-pressure); bytes already on their
    /// way may still arrive.
    StopRead(ConnId),
    /// Half-close: send FIN after what was written.
    ShutdownWrite(ConnId),
    /// Release the connection (see the module docs, 5).
    Close(ConnId, CloseMode),
    /// Close the listeners: no more connections (graceful shutdown).
    StopAccepting,
}

/// The shard core as the driver sees it.
pub trait Handler {
    /// A connection was accepted from `peer` on the listener `via`.
    fn accepted(&mut self, peer: SocketAddr, via: Via) -> Admit;
    /// `data` arrived on `id` (the handler may modify it in place: unmasking).
    fn received(&mut self, id: ConnId, data: &mut [u8]);
    /// No more input on `id`: end of stream (`error` false) or a socket error.
    fn read_closed(&mut self, id: ConnId, error: bool);
    /// The send in flight on `id` completed.
    fn sent(&mut self, id: ConnId, result: io::Result<usize>);
    /// Reported just before a successful [`sent`](Self::sent): what `id`'s kernel send buffer
    /// holds now (`sock::kernel_after_send`: sampled after a large send, else 0). Isolation:
    /// it counts toward the connection's high-water mark (and, while it is slow, the ceiling).
    fn kernel_held(&mut self, _id: ConnId, _bytes: usize) {}
    /// An accept on the listener failed with `error` (isolation): the handler counts and logs
    /// it; out of descriptors it calls `refuse(response)`, which answers pending clients
    /// through the driver's reserve descriptor and returns how many it refused. The driver
    /// backs off accepting for `runtime::accept::BACKOFF` either way.
    fn accept_failed(&mut self, _error: &io::Error, _refuse: &mut dyn FnMut(&[u8]) -> usize) {}
    /// `id` is closed and nothing is pending on it any more; its slot may be reused.
    fn closed(&mut self, id: ConnId);
    /// True while the handler wants input from `id` (a driver reading in a loop asks before
    /// every read).
    fn reading(&self, id: ConnId) -> bool;
    /// The next socket request, if any.
    fn poll_io(&mut self) -> Option<IoRequest>;
    /// The next connection to write to (frames queued, no send in flight), if any.
    fn poll_transmit(&mut self) -> Option<ConnId>;
    /// At most how many frames the next [`gather`](Self::gather) of `id` hands over (0: not
    /// known). A driver sizes the send record from it: a large gather then takes one
    /// allocation per array rather than a doubling series of reallocations, each of which
    /// lands a large array on fresh pages (page faults on every send of a burst).
    fn gather_frames(&self, _id: ConnId) -> usize {
        0
    }
    /// Fill one gather for `id` ([`Gather::push`] for every frame of the batch, in order, each
    /// without the part already written). Returns the bytes gathered; from now until
    /// [`sent`](Self::sent) a send is in flight on `id`, and the handler keeps what it pushed
    /// alive until then (module docs, 3).
    fn gather(&mut self, id: ConnId, out: &mut Gather<'_>) -> usize;
}

/// An I/O driver for one shard (see the module docs for the contract).
pub trait Driver {
    /// Which backend this is.
    fn kind(&self) -> DriverKind;
    /// A waker that wakes this driver from [`enter`](Self::enter), from any thread.
    fn waker(&self) -> Waker;
    /// Hand every event reaped since the last call to `h`.
    fn dispatch<H: Handler>(&mut self, h: &mut H);
    /// Take the handler's requests and transmits and queue (io_uring) or perform (epoll) them.
    fn flush<H: Handler>(&mut self, h: &mut H);
    /// Submit what is queued and wait for events, the doorbell or `timeout` (`None`: no
    /// limit; zero: do not wait).
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

/// One send's gather as the handler fills it: an iovec per frame, in the driver's send record.
pub struct Gather<'a> {
    iov: &'a mut Vec<libc::iovec>,
}

impl<'a> Gather<'a> {
    /// A gather appending to `iov`.
    pub fn new(iov: &'a mut Vec<libc::iovec>) -> Self {
        Gather { iov }
    }

    /// Append `bytes` to the send.
    ///
    /// # Safety
    ///
    /// The memory `bytes` points into must stay allocated and unchanged until the handler sees
    /// [`Handler::sent`] for this send or [`Handler::closed`] for its connection: the kernel
    /// reads it until the send's completion (module docs, 3). The driver keeps no reference.
    #[inline]
    pub unsafe fn push(&mut self, bytes: &[u8]) {
        self.iov.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
    }

    /// Frames pushed so far.
    pub fn len(&self) -> usize {
        self.iov.len()
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.iov.is_empty()
    }
}

/// Most iovecs in one gather (Linux IOV_MAX).
pub const MAX_IOVECS: usize = 1024;

/// Most bytes in one gather past its first frame (a large first frame is always included
/// whole, so it still makes progress).
pub const MAX_GATHER_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_pack_and_unpack() {
        let id = ConnId {
            slot: 0xdead_beef,
            gen: 0x0123_4567,
        };
        let (op, back) = ConnId::unpack(id.pack(7));
        assert_eq!(op, 7);
        assert_eq!(back.slot, id.slot);
        assert_eq!(back.gen, id.short_gen());
        assert_eq!(back.short_gen(), 0x23_4567);
        let (op, back) = ConnId::unpack(ConnId { slot: 0, gen: 0 }.pack(255));
        assert_eq!((op, back), (255, ConnId { slot: 0, gen: 0 }));
    }
}
