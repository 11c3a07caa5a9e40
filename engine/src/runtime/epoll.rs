//! The epoll driver: readiness plus nonblocking syscalls.
//!
//! Contract (`runtime::driver`, in short): events in — accepts (`accept4`, as many as the
//! listener has), input (after `EPOLLIN`, up to [`READS_PER_TURN`] nonblocking `recv`s into the
//! shard's 64 KiB scratch buffer, asking the handler before each whether it still wants
//! input), EOF and errors, send completions, and closes (reported as soon as the descriptor is
//! closed: nothing can be pending on it). Submissions out — made as syscalls during
//! [`Driver::flush`]: one nonblocking `sendmsg` gather per transmit, `EPOLL_CTL_ADD/MOD` for
//! read interest, `shutdown`, `close` (RST with `SO_LINGER` 0).
//!
//! A send completes as a blocking one would (and as io_uring's does): when all of its gather is
//! written. One that would block keeps its send record (its iovecs) and its frames stay pinned
//! in the handler's queue, which keeps them alive until `sent` (or `closed`: a close drops a
//! waiting send); `EPOLLOUT` resumes it where it stopped. So both drivers present the same in-flight send to the core (a policy cannot drop a
//! frame between two halves of one send).
//! Waiting: `epoll_wait` with the loop's timeout; the doorbell eventfd is in the set.
//!
//! Level-triggered, so a connection with more input than one turn reads is simply reported
//! again next turn: one firehose cannot starve the rest, and a stopped publisher's interest is
//! dropped so its unread input stays in the kernel (TCP back-pressure reaches the producer).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::runtime::accept;
use crate::runtime::driver::{Admit, ConnId, Driver, DriverKind, Handler, IoRequest, Via};
use crate::runtime::send::{SendPool, SendRecord};
use crate::runtime::sock;
use crate::runtime::sockword::{SockWord, DRIVER_BIT, OPEN};
use crate::runtime::wake::Doorbell;

/// Reads per readable connection per turn: 128 KiB, so one turn's burst from a publisher stays
/// small next to a high-water mark before the flush writes it (a turn's queueing is corked),
/// and one firehose cannot starve the rest.
pub const READS_PER_TURN: usize = 2;

/// Size of the shard's read scratch buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Accepts per turn (the rest are taken next turn; the listener stays readable).
const ACCEPTS_PER_TURN: usize = 256;

const LISTENER: u64 = u64::MAX;
const BELL: u64 = u64::MAX - 1;
const PLAIN_LISTENER: u64 = u64::MAX - 2;

/// The event data of the listener `via`.
fn listener_token(via: Via) -> u64 {
    match via {
        Via::Data => LISTENER,
        Via::Plain => PLAIN_LISTENER,
    }
}

/// One socket's state: 16 bytes per connection, in a table reserved up front.
#[derive(Default)]
struct Sock {
    fd: RawFd,
    /// The slot's short generation and the state bits ([`OPEN`], [`REGISTERED`], and the
    /// interest registered: [`WANT_IN`], [`WANT_OUT`]).
    word: SockWord,
    /// A send in flight, waiting for `EPOLLOUT`.
    pending: Option<Box<SendRecord>>,
}

/// In the epoll set (with no interest when neither of the next two is set).
const REGISTERED: u32 = 1 << DRIVER_BIT;
/// `EPOLLIN` is registered.
const WANT_IN: u32 = 1 << (DRIVER_BIT + 1);
/// `EPOLLOUT` is registered.
const WANT_OUT: u32 = 1 << (DRIVER_BIT + 2);

impl Sock {
    fn new(fd: RawFd, id: ConnId) -> Sock {
        let (word, pending) = (SockWord::open(id), None);
        Sock { fd, word, pending }
    }

    /// The events registered: only `EPOLLIN` and `EPOLLOUT` are ever asked for.
    fn events(&self) -> u32 {
        let bit = |on: bool, ev: libc::c_int| if on { ev as u32 } else { 0 };
        bit(self.word.has(WANT_IN), libc::EPOLLIN) | bit(self.word.has(WANT_OUT), libc::EPOLLOUT)
    }

    fn set_events(&mut self, events: u32) {
        debug_assert_eq!(events & !((libc::EPOLLIN | libc::EPOLLOUT) as u32), 0);
        self.word.set(REGISTERED, true);
        self.word.set(WANT_IN, events & libc::EPOLLIN as u32 != 0);
        self.word.set(WANT_OUT, events & libc::EPOLLOUT as u32 != 0);
    }
}

/// One shard's epoll driver.
pub struct Epoll {
    ep: OwnedFd,
    /// The shard's listeners by [`Via`] index (the plain one only beside TLS); `None` once
    /// closed (graceful shutdown).
    listeners: [Option<TcpListener>; 2],
    accept_paused: Option<Instant>,
    /// A spare descriptor to answer clients 503 when out of descriptors (isolation).
    reserve: accept::Reserve,
    bell: Arc<Doorbell>,
    socks: Vec<Sock>,
    events: Vec<libc::epoll_event>,
    ready: usize,
    scratch: Vec<u8>,
    pool: SendPool,
}

fn ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` lives across the call; epoll_ctl reads it (ignored for DEL).
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Epoll {
    /// A driver accepting on `listener` and `plain` (if any; made nonblocking), with room for
    /// `max_conns` sockets reserved up front (address space only, resident as used, never
    /// moved).
    pub fn new(
        listener: TcpListener,
        plain: Option<TcpListener>,
        max_conns: usize,
    ) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` was just returned by epoll_create1 and is owned by nothing else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let listeners = [Some(listener), plain];
        for (l, via) in listeners.iter().zip(Via::ALL) {
            if let Some(l) = l {
                l.set_nonblocking(true)?;
                ctl(
                    ep.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    l.as_raw_fd(),
                    libc::EPOLLIN as u32,
                    listener_token(via),
                )?;
            }
        }
        let bell = Doorbell::new(true)?;
        ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            bell.fd(),
            libc::EPOLLIN as u32,
            BELL,
        )?;
        Ok(Epoll {
            ep,
            listeners,
            accept_paused: None,
            reserve: accept::Reserve::open(),
            bell,
            socks: Vec::with_capacity(max_conns.min(crate::runtime::uring::MAX_RESERVED_SOCKETS)),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            ready: 0,
            scratch: vec![0; SCRATCH_BYTES],
            pool: SendPool::new(64),
        })
    }

    fn sock(&mut self, id: ConnId) -> Option<&mut Sock> {
        self.socks
            .get_mut(id.slot as usize)
            .filter(|s| s.word.has(OPEN) && s.word.gen() == id.short_gen())
    }

    fn set_events(&mut self, id: ConnId, events: u32) {
        let ep = self.ep.as_raw_fd();
        let Some(s) = self.sock(id) else {
            return;
        };
        if s.word.has(REGISTERED) && s.events() == events {
            return;
        }
        let op = if s.word.has(REGISTERED) {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        if ctl(ep, op, s.fd, events, id.pack(0)).is_ok() {
            s.set_events(events);
        }
    }

    fn interest(&mut self, id: ConnId, add: u32, remove: u32) {
        let Some(s) = self.sock(id) else {
            return;
        };
        let events = (s.events() | add) & !remove;
        self.set_events(id, events);
    }

    /// Add the listener `via` to the set (for input) or remove it, if it is open; an error
    /// (EEXIST, ENOENT) means it already was.
    fn listener_ctl(&self, via: Via, op: libc::c_int) {
        if let Some(l) = self.listeners[via as usize].as_ref() {
            let events = if op == libc::EPOLL_CTL_ADD {
                libc::EPOLLIN as u32
            } else {
                0
            };
            let _ = ctl(
                self.ep.as_raw_fd(),
                op,
                l.as_raw_fd(),
                events,
                listener_token(via),
            );
        }
    }

    fn accept_all<H: Handler>(&mut self, h: &mut H, via: Via) {
        let Some(l) = self.listeners[via as usize].as_ref() else {
            return;
        };
        let lfd = l.as_raw_fd();
        for _ in 0..ACCEPTS_PER_TURN {
            match sock::accept(lfd, true) {
                Ok((fd, peer)) => match h.accepted(peer, via) {
                    Admit::Accept(id) => {
                        sock::set_nodelay(fd);
                        let slot = id.slot as usize;
                        if self.socks.len() <= slot {
                            self.socks.resize_with(slot + 1, Sock::default);
                        }
                        self.socks[slot] = Sock::new(fd, id);
                    }
                    Admit::Refuse(response) => sock::refuse(fd, &response),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE and friends: counted, answered through the reserve
                    // descriptor (isolation), and a back-off instead of spinning on a
                    // listener that stays readable.
                    let reserve = &mut self.reserve;
                    h.accept_failed(&e, &mut |r| reserve.refuse_batch(lfd, r));
                    self.listener_ctl(via, libc::EPOLL_CTL_DEL);
                    self.accept_paused = Some(Instant::now() + accept::BACKOFF);
                    return;
                }
            }
        }
    }

    fn read<H: Handler>(&mut self, h: &mut H, id: ConnId, fd: RawFd) {
        for _ in 0..READS_PER_TURN {
            if !h.reading(id) {
                return;
            }
            match sock::recv(fd, &mut self.scratch) {
                Ok(0) => {
                    self.interest(id, 0, libc::EPOLLIN as u32);
                    h.read_closed(id, false);
                    return;
                }
                Ok(n) => {
                    h.received(id, &mut self.scratch[..n]);
                    if n < self.scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.interest(id, 0, libc::EPOLLIN as u32);
                    h.read_closed(id, true);
                    return;
                }
            }
        }
    }

    fn apply<H: Handler>(&mut self, h: &mut H, req: IoRequest) {
        match req {
            IoRequest::Read(id) => self.interest(id, libc::EPOLLIN as u32, 0),
            IoRequest::StopRead(id) => self.interest(id, 0, libc::EPOLLIN as u32),
            IoRequest::ShutdownWrite(id) => {
                if let Some(s) = self.sock(id) {
                    sock::shutdown_write(s.fd);
                }
            }
            IoRequest::Close(id, mode) => {
                let Some(s) = self.sock(id) else {
                    return;
                };
                let fd = s.fd;
                s.word.set(OPEN, false);
                // A waiting send ends with the socket; the handler keeps its frames until the
                // `closed` below (driver contract 3).
                if let Some(rec) = s.pending.take() {
                    self.pool.recycle(rec);
                }
                if mode.resets(fd) {
                    sock::set_linger_zero(fd);
                }
                // Closing the only descriptor of the socket also drops it from the set.
                sock::close(fd);
                h.closed(id);
            }
            IoRequest::StopAccepting => {
                for via in Via::ALL {
                    self.listener_ctl(via, libc::EPOLL_CTL_DEL);
                    self.listeners[via as usize] = None;
                }
                self.accept_paused = None;
            }
        }
    }

    fn transmit<H: Handler>(&mut self, h: &mut H, id: ConnId) {
        let rec = self.pool.gather(h, id);
        self.resume(h, id, rec);
    }

    /// Write what is left of `rec`; report the send when it is all written (or failed), else
    /// keep it for `EPOLLOUT`.
    fn resume<H: Handler>(&mut self, h: &mut H, id: ConnId, mut rec: Box<SendRecord>) {
        let Some(fd) = self.sock(id).map(|s| s.fd) else {
            self.finish(h, id, rec, Err(io::ErrorKind::NotConnected.into()));
            return;
        };
        while rec.next < rec.iov.len() {
            let next = rec.next;
            // SAFETY: every iovec points into frames the handler keeps alive until it sees this
            // send's `sent` (or the socket's `closed`), both after this call (driver contract 3,
            // `Gather::push`).
            match unsafe { sock::sendmsg(fd, &mut rec.iov[next..]) } {
                Ok(0) => return self.finish(h, id, rec, Err(io::ErrorKind::WriteZero.into())),
                Ok(mut n) => {
                    rec.done += n;
                    while n > 0 {
                        let v = &mut rec.iov[rec.next];
                        if n >= v.iov_len {
                            n -= v.iov_len;
                            rec.next += 1;
                        } else {
                            // SAFETY: advancing within the same held buffer (n < iov_len).
                            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                            v.iov_len -= n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(s) = self.sock(id) {
                        s.pending = Some(rec);
                    }
                    self.interest(id, libc::EPOLLOUT as u32, 0);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.finish(h, id, rec, Err(e)),
            }
        }
        let done = rec.done;
        self.finish(h, id, rec, Ok(done));
    }

    fn finish<H: Handler>(
        &mut self,
        h: &mut H,
        id: ConnId,
        rec: Box<SendRecord>,
        result: io::Result<usize>,
    ) {
        self.pool.recycle(rec);
        if let (Ok(n), Some(s)) = (&result, self.sock(id)) {
            let fd = s.fd;
            h.kernel_held(id, sock::kernel_after_send(fd, *n));
        }
        h.sent(id, result);
    }
}

impl Driver for Epoll {
    fn kind(&self) -> DriverKind {
        DriverKind::Epoll
    }

    fn waker(&self) -> Waker {
        self.bell.waker()
    }

    fn dispatch<H: Handler>(&mut self, h: &mut H) {
        if let Some(at) = self.accept_paused {
            if Instant::now() >= at {
                self.accept_paused = None;
                // Back after the pause (a listener still registered answers EEXIST: fine).
                for via in Via::ALL {
                    self.listener_ctl(via, libc::EPOLL_CTL_ADD);
                }
            }
        }
        for i in 0..std::mem::take(&mut self.ready) {
            let ev = self.events[i];
            let (data, revents) = (ev.u64, ev.events);
            match data {
                LISTENER => self.accept_all(h, Via::Data),
                PLAIN_LISTENER => self.accept_all(h, Via::Plain),
                BELL => self.bell.clear(),
                _ => {
                    let (_, id) = ConnId::unpack(data);
                    let Some(s) = self.sock(id) else {
                        continue;
                    };
                    let (fd, events) = (s.fd, s.events());
                    if revents & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0
                        && events & libc::EPOLLOUT as u32 != 0
                    {
                        self.interest(id, 0, libc::EPOLLOUT as u32);
                        if let Some(rec) = self.sock(id).and_then(|s| s.pending.take()) {
                            self.resume(h, id, rec);
                        }
                    }
                    let input = (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if revents & input != 0 {
                        if h.reading(id) {
                            self.read(h, id, fd);
                        } else if revents & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                            // Not reading, but the socket is dead: say so once.
                            self.interest(id, 0, libc::EPOLLIN as u32);
                            h.read_closed(id, true);
                        }
                    }
                }
            }
        }
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
        // Closes requested by the last sends.
        while let Some(req) = h.poll_io() {
            self.apply(h, req);
        }
        self.pool.end_turn();
    }

    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = timeout;
        if let Some(at) = self.accept_paused {
            let left = at.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        let ms = match timeout {
            None => -1,
            // Round up: waking early would only spin.
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: `events` is a live buffer of `events.len()` epoll_event entries.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        self.ready = n as usize;
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // What is still open when the shard stops (the end of the shutdown grace) is reset:
        // never left to the kernel in FIN_WAIT1 behind a peer that does not read.
        for s in self.socks.iter().filter(|s| s.word.has(OPEN)) {
            sock::set_linger_zero(s.fd);
            sock::close(s.fd);
        }
    }
}

#[cfg(test)]
mod sock_tests {
    use super::*;

    #[test]
    fn a_socket_keeps_its_generation_state_and_interest_in_one_word() {
        assert_eq!(std::mem::size_of::<Sock>(), 16);
        let id = ConnId { slot: 1, gen: 5 };
        let mut s = Sock::new(9, id);
        assert_eq!(
            (s.word.gen(), s.word.has(OPEN), s.word.has(REGISTERED)),
            (5, true, false)
        );
        assert_eq!(s.events(), 0);
        let (i, o) = (libc::EPOLLIN as u32, libc::EPOLLOUT as u32);
        for ev in [i, i | o, o, 0, i] {
            s.set_events(ev);
            assert_eq!(s.events(), ev);
            assert!(s.word.has(REGISTERED), "registered, even with no interest");
        }
        assert_eq!((s.word.gen(), s.word.has(OPEN)), (5, true));
    }
}
