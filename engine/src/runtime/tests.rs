//! The driver contract, tested against both drivers with a small handler (no shard core):
//! accept, receive, one gather send (a send record with iovecs into frames the handler keeps
//! until `sent`; io_uring: provided receive buffers), stop/restart reading, a close that cancels
//! a send blocked on a peer that never reads (RST), the doorbell waking a parked driver from
//! another thread, and two listeners (data and plain) each reported as itself until both stop.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::runtime::driver::{Admit, CloseMode, ConnId, Driver, Gather, Handler, IoRequest, Via};
use crate::runtime::epoll::Epoll;
use crate::runtime::uring::{self, Uring};

/// Echoes what it receives (when `echo`), and records every event.
#[derive(Default)]
struct H {
    next: u32,
    echo: bool,
    conns: Vec<ConnId>,
    got: HashMap<ConnId, Vec<u8>>,
    out: HashMap<ConnId, (VecDeque<Bytes>, usize)>,
    sending: Vec<ConnId>,
    results: Vec<(ConnId, Result<usize, std::io::ErrorKind>)>,
    eof: Vec<ConnId>,
    closed: Vec<ConnId>,
    io: VecDeque<IoRequest>,
    stopped: Vec<ConnId>,
    /// The listener each connection came through, in accept order.
    via: Vec<Via>,
}

impl H {
    fn queue(&mut self, id: ConnId, b: Bytes) {
        self.out.entry(id).or_default().0.push_back(b);
    }
}

impl Handler for H {
    fn accepted(&mut self, _peer: SocketAddr, via: Via) -> Admit {
        self.via.push(via);
        let id = ConnId {
            slot: self.next,
            gen: 7,
        };
        self.next += 1;
        self.conns.push(id);
        self.io.push_back(IoRequest::Read(id));
        Admit::Accept(id)
    }
    fn received(&mut self, id: ConnId, data: &mut [u8]) {
        self.got.entry(id).or_default().extend_from_slice(data);
        if self.echo {
            self.queue(id, Bytes::copy_from_slice(data));
        }
    }
    fn read_closed(&mut self, id: ConnId, _error: bool) {
        self.eof.push(id);
    }
    fn sent(&mut self, id: ConnId, result: std::io::Result<usize>) {
        self.sending.retain(|&s| s != id);
        // The socket is gone: what was queued for it is dropped, as the core does.
        if result.is_err() {
            self.out.remove(&id);
        }
        self.results
            .push((id, result.as_ref().map(|n| *n).map_err(|e| e.kind())));
        if let (Ok(mut n), Some((q, off))) = (result, self.out.get_mut(&id)) {
            while n > 0 {
                let left = q[0].len() - *off;
                if n >= left {
                    n -= left;
                    q.pop_front();
                    *off = 0;
                } else {
                    *off += n;
                    n = 0;
                }
            }
        }
    }
    fn closed(&mut self, id: ConnId) {
        self.closed.push(id);
    }
    fn reading(&self, id: ConnId) -> bool {
        !self.stopped.contains(&id)
    }
    fn poll_io(&mut self) -> Option<IoRequest> {
        self.io.pop_front()
    }
    fn poll_transmit(&mut self) -> Option<ConnId> {
        let id = *self
            .out
            .iter()
            .find(|(id, (q, _))| !q.is_empty() && !self.sending.contains(id))?
            .0;
        Some(id)
    }
    fn gather(&mut self, id: ConnId, out: &mut Gather<'_>) -> usize {
        let (q, off) = self.out.get(&id).expect("queued");
        let mut total = 0;
        for (i, b) in q.iter().enumerate() {
            let o = if i == 0 { *off } else { 0 };
            // SAFETY: `out` keeps every frame of `id` until `sent` says how much was written
            // (only then are they popped) or the socket is gone; a `Bytes`' memory does not
            // move when the deque holding it grows.
            unsafe { out.push(&b[o..]) };
            total += b.len() - o;
        }
        self.sending.push(id);
        total
    }
}

/// Turn `d` until `done(h)` or 5 s.
fn turn_until<D: Driver>(d: &mut D, h: &mut H, done: impl Fn(&H) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !done(h) {
        assert!(Instant::now() < end, "timed out");
        d.dispatch(h);
        d.flush(h);
        d.enter(Some(Duration::from_millis(5))).unwrap();
    }
}

fn contract<D: Driver>(make: impl Fn(TcpListener) -> D) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut d = make(l);
    let mut h = H {
        echo: true,
        ..H::default()
    };
    // Accept, receive, echo with one gather.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    turn_until(&mut d, &mut h, |h| !h.conns.is_empty());
    let id = h.conns[0];
    c.write_all(b"hello").unwrap();
    turn_until(&mut d, &mut h, |h| {
        h.got.get(&id).is_some_and(|g| g.len() == 5)
    });
    h.queue(id, Bytes::from_static(b" world"));
    turn_until(&mut d, &mut h, |h| {
        h.out.get(&id).is_some_and(|(q, _)| q.is_empty()) && h.sending.is_empty()
    });
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    // Stop reading: input waits in the kernel; restart: it arrives.
    h.echo = false;
    h.stopped.push(id);
    h.io.push_back(IoRequest::StopRead(id));
    turn_until(&mut d, &mut h, |h| h.io.is_empty());
    for _ in 0..5 {
        d.dispatch(&mut h);
        d.flush(&mut h);
        d.enter(Some(Duration::from_millis(2))).unwrap();
    }
    c.write_all(b"later").unwrap();
    for _ in 0..20 {
        d.dispatch(&mut h);
        d.flush(&mut h);
        d.enter(Some(Duration::from_millis(2))).unwrap();
    }
    assert_eq!(h.got[&id].len(), 5, "nothing delivered while stopped");
    h.stopped.clear();
    h.io.push_back(IoRequest::Read(id));
    turn_until(&mut d, &mut h, |h| h.got[&id].len() == 10);
    // A peer that never reads: fill its socket, then close with a send in flight (cancelled)
    // as an RST.
    let mut slow = TcpStream::connect(addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 2);
    let sid = h.conns[1];
    for _ in 0..64 {
        h.queue(sid, Bytes::from(vec![7u8; 1 << 20]));
    }
    turn_until(&mut d, &mut h, |h| {
        h.sending.contains(&sid) || h.results.len() > 2
    });
    for _ in 0..10 {
        d.dispatch(&mut h);
        d.flush(&mut h);
        d.enter(Some(Duration::from_millis(5))).unwrap();
    }
    h.io.push_back(IoRequest::Close(sid, CloseMode::Reset));
    turn_until(&mut d, &mut h, |h| h.closed.contains(&sid));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let reset = loop {
        match slow.read(&mut sink) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(reset, "closed with an RST");
    // EOF and an orderly close.
    drop(c);
    turn_until(&mut d, &mut h, |h| h.eof.contains(&id));
    h.io.push_back(IoRequest::Close(id, CloseMode::Graceful));
    turn_until(&mut d, &mut h, |h| h.closed.contains(&id));
    // The doorbell wakes a driver parked without a timeout.
    let waker = d.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    d.flush(&mut h);
    let start = Instant::now();
    d.enter(None).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

#[test]
fn epoll_keeps_the_contract() {
    contract(|l| Epoll::new(l, None, 16).unwrap());
}

#[test]
fn io_uring_keeps_the_contract() {
    if uring::probe().is_err() {
        return; // refused here (or by SHARDCAST_URING_REFUSE): the epoll test covers the host
    }
    contract(|l| Uring::new(l, None, 16).unwrap());
}

/// The first error or EOF reading `s` to its end: true for a reset, false for an orderly EOF.
fn ends_with_reset(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                return true;
            }
        }
    }
}

/// `CloseMode::ResetIfUnsent` (the end of a linger): a peer that stopped reading, whose bytes
/// the kernel still holds, is reset; a peer that took (and acknowledged) everything gets FIN.
fn reset_if_unsent<D: Driver>(make: impl Fn(TcpListener) -> D) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut d = make(l);
    let mut h = H::default();
    let mut stalled = TcpStream::connect(addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 1);
    let sid = h.conns[0];
    // 8 MiB it never reads: the socket buffers fill and the kernel keeps what they hold.
    h.queue(sid, Bytes::from(vec![7u8; 8 << 20]));
    turn_until(&mut d, &mut h, |h| {
        !h.results.is_empty() || h.sending.contains(&sid)
    });
    for _ in 0..10 {
        d.dispatch(&mut h);
        d.flush(&mut h);
        d.enter(Some(Duration::from_millis(5))).unwrap();
    }
    h.io.push_back(IoRequest::Close(sid, CloseMode::ResetIfUnsent));
    turn_until(&mut d, &mut h, |h| h.closed.contains(&sid));
    assert!(ends_with_reset(&mut stalled), "unsent bytes: reset");
    // A peer that read everything and answered (its data carries the ACK of ours): FIN.
    let mut fine = TcpStream::connect(addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 2);
    let fid = h.conns[1];
    h.queue(fid, Bytes::from_static(b"bye"));
    let mut buf = [0u8; 3];
    fine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    turn_until(&mut d, &mut h, |h| {
        h.out.get(&fid).is_some_and(|(q, _)| q.is_empty()) && !h.sending.contains(&fid)
    });
    fine.read_exact(&mut buf).unwrap();
    fine.write_all(b"ok").unwrap();
    turn_until(&mut d, &mut h, |h| {
        h.got.get(&fid).is_some_and(|g| g.len() == 2)
    });
    h.io.push_back(IoRequest::Close(fid, CloseMode::ResetIfUnsent));
    turn_until(&mut d, &mut h, |h| h.closed.contains(&fid));
    assert!(
        !ends_with_reset(&mut fine),
        "all acknowledged: orderly close"
    );
}

#[test]
fn epoll_resets_only_what_the_kernel_still_holds() {
    reset_if_unsent(|l| Epoll::new(l, None, 16).unwrap());
}

#[test]
fn io_uring_resets_only_what_the_kernel_still_holds() {
    if uring::probe().is_err() {
        return; // refused here (or by SHARDCAST_URING_REFUSE): the epoll test covers the host
    }
    reset_if_unsent(|l| Uring::new(l, None, 16).unwrap());
}

/// Two listeners (the data one and the plain one beside TLS): each connection is reported with
/// the listener that took it, and `StopAccepting` closes both.
fn two_listeners<D: Driver>(make: impl Fn(TcpListener, TcpListener) -> D) {
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let (data_addr, plain_addr) = (data.local_addr().unwrap(), plain.local_addr().unwrap());
    let mut d = make(data, plain);
    let mut h = H::default();
    let _a = TcpStream::connect(plain_addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 1);
    let _b = TcpStream::connect(data_addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 2);
    let _c = TcpStream::connect(plain_addr).unwrap();
    turn_until(&mut d, &mut h, |h| h.conns.len() == 3);
    assert_eq!(h.via, [Via::Plain, Via::Data, Via::Plain]);
    h.io.push_back(IoRequest::StopAccepting);
    turn_until(&mut d, &mut h, |h| h.io.is_empty());
    // Once the driver has handled the request (and io_uring reaped its cancellations), both
    // ports refuse connections.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        d.dispatch(&mut h);
        d.flush(&mut h);
        d.enter(Some(Duration::from_millis(5))).unwrap();
        let data_closed = TcpStream::connect(data_addr).is_err();
        let plain_closed = TcpStream::connect(plain_addr).is_err();
        if data_closed && plain_closed {
            break;
        }
        assert!(
            Instant::now() < end,
            "listeners still open after StopAccepting"
        );
    }
}

#[test]
fn epoll_reports_which_listener_accepted() {
    two_listeners(|l, p| Epoll::new(l, Some(p), 16).unwrap());
}

#[test]
fn io_uring_reports_which_listener_accepted() {
    if uring::probe().is_err() {
        return; // refused here (or by SHARDCAST_URING_REFUSE): the epoll test covers the host
    }
    two_listeners(|l, p| Uring::new(l, Some(p), 16).unwrap());
}
