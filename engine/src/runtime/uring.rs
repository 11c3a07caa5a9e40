//! The io_uring driver: the shard owns its ring.
//!
//! Contract (`runtime::driver`, in short): events in — completions reaped after each enter:
//! multishot `ACCEPT` (one SQE for every connection), multishot `RECV` per connection from the
//! shard's provided-buffer ring (`runtime::bufring`: a buffer is lent only while data is there;
//! the core copies what it keeps and the buffer goes back in the same turn), `SENDMSG`
//! results, the doorbell's `READ`, and closes (reported once the last completion of a closing
//! socket was reaped). Submissions out — queued as SQEs during [`Driver::flush`] and submitted
//! with the one `io_uring_enter` that also waits ([`Driver::enter`], with `EXT_ARG` and a
//! timeout): one `SENDMSG` per transmit from a boxed send record (`msghdr` and iovecs into frames
//! the core keeps alive until it sees the completion) that lives until its completion, `RECV` re-arms,
//! `ASYNC_CANCEL`s for stopped reads and closes.
//!
//! Sockets stay in blocking mode: the kernel completes a send or a receive when it can (its
//! internal poll), never with `EAGAIN`; the synchronous helpers pass `MSG_DONTWAIT`. Closing:
//! cancel the receive and the send in flight, wait for their last completions, then `close`
//! (after `SO_LINGER` 0 for an RST) and report it: only then may the core reuse the slot, and
//! every `user_data` carries the slot's generation as well.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::runtime::accept;
use crate::runtime::bufring::BufRing;
use crate::runtime::driver::{
    Admit, CloseMode, ConnId, Driver, DriverKind, Gather, Handler, IoRequest, Via,
};
use crate::runtime::send::{SendPool, SendRecord};
use crate::runtime::sock;
use crate::runtime::sockword::{SockWord, DRIVER_BIT, OPEN};
use crate::runtime::wake::Doorbell;

/// Submission queue entries per shard ring (the completion queue is twice that).
pub const ENTRIES: u32 = 4096;

/// Provided receive buffers per shard, and their size: 1 MiB per shard, touched only as used.
pub const RECV_BUFFERS: u16 = 256;
/// Size of one provided receive buffer.
pub const RECV_BUFFER_BYTES: usize = 4096;

const BUF_GROUP: u16 = 0;

/// Send records kept for reuse: one per connection of a broadcast in flight at once, each small
/// (a few iovecs) unless a large gather grew it, which is then not kept.
const POOLED_RECORDS: usize = 4096;

/// Most socket slots reserved up front (address space: 16 B each).
pub const MAX_RESERVED_SOCKETS: usize = 1 << 22;

const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_BELL: u8 = 4;
const OP_CANCEL: u8 = 5;

/// One socket's state: 16 bytes per connection, in a table reserved up front.
#[derive(Default)]
struct Sock {
    fd: RawFd,
    /// The slot's short generation and the state bits ([`OPEN`], [`WANT_READ`], [`RECV_ARMED`],
    /// [`EOF`], and the close requested, if any, under [`CLOSING`]).
    word: SockWord,
    send: Option<Box<SendRecord>>,
}

/// The core wants input.
const WANT_READ: u32 = 1 << DRIVER_BIT;
/// A multishot receive is in flight.
const RECV_ARMED: u32 = 1 << (DRIVER_BIT + 1);
/// Input ended (EOF or error): never re-armed.
const EOF: u32 = 1 << (DRIVER_BIT + 2);
/// The close requested (none, or a [`CloseMode`]: 2 bits); done once nothing is in flight.
const CLOSING: u32 = 3 << (DRIVER_BIT + 3);

impl Sock {
    fn new(fd: RawFd, id: ConnId) -> Sock {
        let word = SockWord::open(id);
        Sock {
            fd,
            word,
            send: None,
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.word.has(bit)
    }

    fn set(&mut self, bit: u32, on: bool) {
        self.word.set(bit, on);
    }

    fn closing(&self) -> Option<CloseMode> {
        match self.word.field(CLOSING) {
            0 => None,
            1 => Some(CloseMode::Graceful),
            2 => Some(CloseMode::Reset),
            _ => Some(CloseMode::ResetIfUnsent),
        }
    }

    fn set_closing(&mut self, mode: CloseMode) {
        let code = match mode {
            CloseMode::Graceful => 1,
            CloseMode::Reset => 2,
            CloseMode::ResetIfUnsent => 3,
        };
        self.word.set_field(CLOSING, code);
    }
}

/// One shard's io_uring driver. Field order matters: the ring is dropped before the buffers and
/// records its SQEs point into.
pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
    /// The shard's listeners by [`Via`] index (the plain one only beside TLS); `None` once
    /// closed (graceful shutdown).
    listeners: [Option<TcpListener>; 2],
    /// A multishot accept is in flight on that listener.
    accept_armed: [bool; 2],
    /// Accepting resumes at this time after a failed accept (isolation).
    accept_paused: Option<Instant>,
    /// A spare descriptor to answer clients 503 when out of descriptors (isolation).
    reserve: accept::Reserve,
    bell: Arc<Doorbell>,
    bell_buf: Box<u64>,
    bell_armed: bool,
    socks: Vec<Sock>,
    pool: SendPool,
    cqes: Vec<(u64, i32, u32)>,
    rearm: Vec<ConnId>,
}

fn sock_of(socks: &mut [Sock], id: ConnId) -> Option<&mut Sock> {
    socks
        .get_mut(id.slot as usize)
        .filter(|s| s.has(OPEN) && s.word.gen() == id.short_gen())
}

/// Set up a ring as the driver would (the environment may refuse it: `runtime::select`).
fn setup(entries: u32) -> io::Result<IoUring> {
    if let Some(e) = crate::runtime::select::refused_by_env() {
        return Err(e);
    }
    setup_ring(entries)
}

fn setup_ring(entries: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries * 2)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let ring = match b.build(entries) {
        Ok(r) => r,
        // Kernels before 6.1 have no DEFER_TASKRUN: cooperative task work is the next best.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut b = IoUring::builder();
            b.setup_cqsize(entries * 2)
                .setup_submit_all()
                .setup_coop_taskrun();
            b.build(entries)?
        }
        Err(e) => return Err(e),
    };
    let p = ring.params();
    if !(p.is_feature_nodrop() && p.is_feature_fast_poll() && p.is_feature_ext_arg()) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks NODROP, FAST_POLL or EXT_ARG (Linux 5.11+)",
        ));
    }
    Ok(ring)
}

/// Whether the io_uring driver can run here: a small ring with a provided-buffer ring is set
/// up and torn down (so a seccomp refusal, a disabled io_uring or an old kernel shows here).
pub fn probe() -> io::Result<()> {
    if let Some(e) = crate::runtime::select::refused_by_env() {
        return Err(e);
    }
    probe_kernel()
}

/// [`probe`] without the environment's refusal: what this kernel and sandbox allow.
pub fn probe_kernel() -> io::Result<()> {
    let ring = setup_ring(8)?;
    let bufs = BufRing::new(&ring, BUF_GROUP, 1, 64)?;
    drop(ring);
    drop(bufs);
    Ok(())
}

impl Uring {
    /// A driver accepting on `listener` and `plain` (if any; set to blocking mode: the ring
    /// waits, not the fd), with room for `max_conns` sockets reserved up front: address space
    /// only, resident as slots are used, and never moved (a growing table would leave its old
    /// copy behind in the allocator).
    pub fn new(
        listener: TcpListener,
        plain: Option<TcpListener>,
        max_conns: usize,
    ) -> io::Result<Uring> {
        listener.set_nonblocking(false)?;
        if let Some(p) = &plain {
            p.set_nonblocking(false)?;
        }
        let ring = setup(ENTRIES)?;
        let bufs = BufRing::new(&ring, BUF_GROUP, RECV_BUFFERS, RECV_BUFFER_BYTES)?;
        Ok(Uring {
            ring,
            bufs,
            listeners: [Some(listener), plain],
            accept_armed: [false; 2],
            accept_paused: None,
            reserve: accept::Reserve::open(),
            bell: Doorbell::new(false)?,
            bell_buf: Box::new(0),
            bell_armed: false,
            socks: Vec::with_capacity(max_conns.min(MAX_RESERVED_SOCKETS)),
            pool: SendPool::new(POOLED_RECORDS),
            cqes: Vec::with_capacity(ENTRIES as usize * 2),
            rearm: Vec::new(),
        })
    }

    /// Queue `sqe`, submitting first if the submission queue is full.
    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: every SQE queued here points only into memory kept alive until its
            // completion: send records (boxed, held in their socket until the send completes)
            // whose iovecs point into frames the handler keeps until it sees that completion
            // (driver contract 3, `Gather::push`), `bell_buf` (boxed, lives as long as the
            // driver), the provided-buffer ring (registered for the ring's life) — or into
            // nothing (accept, cancel).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
                return;
            }
        }
    }

    fn sock(&mut self, id: ConnId) -> Option<&mut Sock> {
        sock_of(&mut self.socks, id)
    }

    fn arm_recv(&mut self, id: ConnId) {
        let group = self.bufs.group();
        let Some(s) = self.sock(id) else {
            return;
        };
        if s.has(RECV_ARMED) || s.has(EOF) || !s.has(WANT_READ) || s.closing().is_some() {
            return;
        }
        s.set(RECV_ARMED, true);
        let fd = s.fd;
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), group)
                .build()
                .user_data(id.pack(OP_RECV)),
        );
    }

    fn cancel(&mut self, id: ConnId, op: u8) {
        self.push(
            opcode::AsyncCancel::new(id.pack(op))
                .build()
                .user_data(ConnId { slot: 0, gen: 0 }.pack(OP_CANCEL)),
        );
    }

    /// Close `id` if nothing is in flight on it any more.
    fn try_finish_close<H: Handler>(&mut self, h: &mut H, id: ConnId) {
        let Some(s) = self.sock(id) else {
            return;
        };
        let Some(mode) = s.closing() else {
            return;
        };
        if s.has(RECV_ARMED) || s.send.is_some() {
            return;
        }
        s.set(OPEN, false);
        let fd = s.fd;
        if mode.resets(fd) {
            sock::set_linger_zero(fd);
        }
        sock::close(fd);
        h.closed(id);
    }

    fn accepted<H: Handler>(&mut self, h: &mut H, via: Via, res: i32, flags: u32) {
        let i = via as usize;
        if !cqueue::more(flags) {
            self.accept_armed[i] = false;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                // Counted, answered through the reserve descriptor when out of descriptors,
                // and accepting backs off (isolation). (Logged at most once per
                // 10 s by the shard.)
                let e = io::Error::from_raw_os_error(-res);
                if let Some(lfd) = self.listeners[i].as_ref().map(|l| l.as_raw_fd()) {
                    let reserve = &mut self.reserve;
                    h.accept_failed(&e, &mut |r| reserve.refuse_batch(lfd, r));
                }
                self.accept_paused = Some(Instant::now() + accept::BACKOFF);
            }
            return;
        }
        let fd = res;
        let peer = sock::peer_addr(fd).unwrap_or_else(|| std::net::SocketAddr::from(([0; 4], 0)));
        match h.accepted(peer, via) {
            Admit::Accept(id) => {
                sock::set_nodelay(fd);
                let slot = id.slot as usize;
                if self.socks.len() <= slot {
                    self.socks.resize_with(slot + 1, Sock::default);
                }
                self.socks[slot] = Sock::new(fd, id);
            }
            Admit::Refuse(response) => sock::refuse(fd, &response),
        }
    }

    fn received<H: Handler>(&mut self, h: &mut H, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(s) = sock_of(&mut self.socks, id) else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            s.set(RECV_ARMED, false);
        }
        let closing = s.closing().is_some();
        if res > 0 {
            let bid = bid.expect("a multishot receive with data names its buffer");
            if !closing {
                let data = self.bufs.get(bid, res as usize);
                h.received(id, data);
            }
            self.bufs.recycle(bid);
            if !more && !closing {
                self.rearm.push(id);
            }
        } else if res == 0 || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED) {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            s.set(EOF, true);
            if !closing {
                h.read_closed(id, res < 0);
            }
        } else if res == -libc::ENOBUFS && !closing {
            // The pool ran dry: re-armed at the end of the turn, when buffers came back.
            self.rearm.push(id);
        }
        if closing {
            self.try_finish_close(h, id);
        }
    }

    fn sent<H: Handler>(&mut self, h: &mut H, id: ConnId, res: i32) {
        let Some(s) = self.sock(id) else {
            return;
        };
        let Some(rec) = s.send.take() else {
            return;
        };
        let closing = s.closing().is_some();
        if res > 0 && !closing {
            h.kernel_held(id, sock::kernel_after_send(s.fd, res as usize));
        }
        self.pool.recycle(rec);
        let result = if res >= 0 {
            Ok(res as usize)
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        h.sent(id, result);
        if closing {
            self.try_finish_close(h, id);
        }
    }

    fn apply<H: Handler>(&mut self, h: &mut H, req: IoRequest) {
        match req {
            IoRequest::Read(id) => {
                if let Some(s) = self.sock(id) {
                    s.set(WANT_READ, true);
                }
                self.arm_recv(id);
            }
            IoRequest::StopRead(id) => {
                let Some(s) = self.sock(id) else {
                    return;
                };
                s.set(WANT_READ, false);
                if s.has(RECV_ARMED) {
                    self.cancel(id, OP_RECV);
                }
            }
            IoRequest::ShutdownWrite(id) => {
                if let Some(s) = self.sock(id) {
                    sock::shutdown_write(s.fd);
                }
            }
            IoRequest::Close(id, mode) => {
                let Some(s) = self.sock(id) else {
                    return;
                };
                if s.closing().is_some() {
                    return;
                }
                s.set_closing(mode);
                s.set(WANT_READ, false);
                let (recv, send) = (s.has(RECV_ARMED), s.send.is_some());
                if recv {
                    self.cancel(id, OP_RECV);
                }
                // A send to a peer that stopped reading would wait for room forever.
                if send {
                    self.cancel(id, OP_SEND);
                }
                self.try_finish_close(h, id);
            }
            IoRequest::StopAccepting => {
                for via in Via::ALL {
                    let i = via as usize;
                    if let Some(l) = self.listeners[i].take() {
                        if self.accept_armed[i] {
                            self.cancel(
                                ConnId {
                                    slot: i as u32,
                                    gen: 0,
                                },
                                OP_ACCEPT,
                            );
                        }
                        // The accept SQE holds its own reference to the socket until cancelled.
                        drop(l);
                    }
                }
            }
        }
    }

    fn transmit<H: Handler>(&mut self, h: &mut H, id: ConnId) {
        let Some(fd) = self
            .sock(id)
            .filter(|s| s.closing().is_none())
            .map(|s| s.fd)
        else {
            // Nothing is submitted: the gather is dropped and the send reported failed at once.
            let mut unused = Vec::new();
            h.gather(id, &mut Gather::new(&mut unused));
            h.sent(id, Err(io::ErrorKind::NotConnected.into()));
            return;
        };
        let rec = self.pool.gather(h, id);
        let msg: *const libc::msghdr = &rec.msg;
        if let Some(s) = self.sock(id) {
            s.send = Some(rec);
        }
        self.push(
            opcode::SendMsg::new(types::Fd(fd), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(id.pack(OP_SEND)),
        );
    }
}

impl Driver for Uring {
    fn kind(&self) -> DriverKind {
        DriverKind::Uring
    }

    fn waker(&self) -> Waker {
        self.bell.waker()
    }

    fn dispatch<H: Handler>(&mut self, h: &mut H) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &cqes {
            let (op, id) = ConnId::unpack(data);
            match op {
                OP_ACCEPT => self.accepted(h, Via::ALL[id.slot as usize & 1], res, flags),
                OP_RECV => self.received(h, id, res, flags),
                OP_SEND => self.sent(h, id, res),
                OP_BELL => self.bell_armed = false,
                _ => {}
            }
        }
        cqes.clear();
        self.cqes = cqes;
        self.bufs.publish();
    }

    fn flush<H: Handler>(&mut self, h: &mut H) {
        loop {
            while let Some(req) = h.poll_io() {
                self.apply(h, req);
            }
            match h.poll_transmit() {
                Some(id) => self.transmit(h, id),
                None => break,
            }
        }
        for id in std::mem::take(&mut self.rearm) {
            self.arm_recv(id);
        }
        self.pool.end_turn();
        if self.accept_paused.is_some_and(|at| Instant::now() < at) {
            // Backing off after a failed accept.
        } else {
            self.accept_paused = None;
            for via in Via::ALL {
                let i = via as usize;
                if self.accept_armed[i] {
                    continue;
                }
                if let Some(fd) = self.listeners[i].as_ref().map(|l| l.as_raw_fd()) {
                    self.accept_armed[i] = true;
                    // The listener's index rides in the slot field of the user data.
                    self.push(
                        opcode::AcceptMulti::new(types::Fd(fd))
                            .flags(libc::SOCK_CLOEXEC)
                            .build()
                            .user_data(
                                ConnId {
                                    slot: i as u32,
                                    gen: 0,
                                }
                                .pack(OP_ACCEPT),
                            ),
                    );
                }
            }
        }
        if !self.bell_armed {
            self.bell_armed = true;
            let (fd, buf) = (self.bell.fd(), &mut *self.bell_buf as *mut u64);
            self.push(
                opcode::Read::new(types::Fd(fd), buf.cast(), 8)
                    .build()
                    .user_data(ConnId { slot: 0, gen: 0 }.pack(OP_BELL)),
            );
        }
    }

    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = timeout;
        if let Some(at) = self.accept_paused {
            let left = at.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // What is still open when the shard stops (the end of the shutdown grace) is reset:
        // never left to the kernel in FIN_WAIT1 behind a peer that does not read.
        for s in self.socks.iter().filter(|s| s.has(OPEN)) {
            sock::set_linger_zero(s.fd);
            sock::close(s.fd);
        }
    }
}

#[cfg(test)]
mod sock_tests {
    use super::*;

    #[test]
    fn a_socket_keeps_its_generation_state_and_close_mode_in_one_word() {
        assert_eq!(std::mem::size_of::<Sock>(), 16);
        let id = ConnId {
            slot: 3,
            gen: (1 << ConnId::GEN_BITS) + 0xab_cdef,
        };
        let mut s = Sock::new(7, id);
        assert_eq!((s.fd, s.word.gen(), s.has(OPEN)), (7, 0xab_cdef, true));
        for bit in [WANT_READ, RECV_ARMED, EOF] {
            assert!(!s.has(bit));
            s.set(bit, true);
            assert!(s.has(bit));
        }
        assert_eq!(s.closing(), None);
        for mode in [
            CloseMode::Reset,
            CloseMode::ResetIfUnsent,
            CloseMode::Graceful,
        ] {
            s.set_closing(mode);
            assert_eq!(s.closing(), Some(mode));
        }
        s.set(RECV_ARMED, false);
        s.set(OPEN, false);
        assert!(!s.has(RECV_ARMED) && !s.has(OPEN) && s.has(WANT_READ) && s.has(EOF));
        assert_eq!(
            (s.word.gen(), s.closing()),
            (0xab_cdef, Some(CloseMode::Graceful)),
            "the other bits are untouched"
        );
    }
}
