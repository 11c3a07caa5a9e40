//! Plain socket syscalls on raw descriptors, for both drivers: nonblocking reads and gather
//! writes (always `MSG_DONTWAIT`, so they never block whatever the descriptor's mode; writes
//! `MSG_NOSIGNAL`, so a closed peer is EPIPE, not SIGPIPE), half-close, RST close, accept, and
//! the best-effort refusal of a connection over the limits.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One nonblocking `recv` into `buf`; `Ok(0)` is end of stream, `WouldBlock` means no data.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// One nonblocking gather write of `iov`.
///
/// # Safety
/// Every iovec must point at memory valid for reads of its length until the call returns.
pub unsafe fn sendmsg(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<usize> {
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: msghdr is plain data; the fields we do not set stay zero (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the caller guarantees the iovecs; `msg` lives across the call.
    result(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// One nonblocking `send` of `data`.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the duration of the call.
    result(unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Half-close: FIN after what was written.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor the caller owns.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// `SO_LINGER` with a zero timeout: the next `close` sends an RST and drops the socket buffer.
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` lives across the call and its size is passed alongside the pointer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Close a descriptor the caller owns.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Disable Nagle: frames are already batched by the flush.
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and its size is passed alongside the pointer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The peer address in a `sockaddr_storage` filled by the kernel.
pub fn peer_of(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET); storage is larger
            // and suitably aligned.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above for sockaddr_in6 (family AF_INET6).
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Accept one connection, nonblocking (`nonblocking`: the new socket too).
pub fn accept(listener: RawFd, nonblocking: bool) -> io::Result<(RawFd, SocketAddr)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: `storage` and `len` are valid for writes and `len` is the storage's size.
    let fd = unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = peer_of(&storage).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((fd, peer))
}

/// The peer of a connected socket.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes and `len` is the storage's size.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| peer_of(&storage)).flatten()
}

/// Refuse a just-accepted connection: write `response` if the socket takes it now, half-close,
/// discard what the client already sent (so the close is a FIN rather than a reset that could
/// destroy the response), close. Never waits.
pub fn refuse(fd: RawFd, response: &[u8]) {
    let _ = send(fd, response);
    shutdown_write(fd);
    let mut sink = [0u8; 1024];
    while matches!(recv(fd, &mut sink), Ok(n) if n > 0) {}
    close(fd);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn gather_send_recv_and_eof() {
        let (mut a, b) = pair();
        let parts: [&[u8]; 3] = [b"hello ", b"", b"world"];
        let mut iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut _,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: the iovecs point into static byte strings.
        assert_eq!(unsafe { sendmsg(b.as_raw_fd(), &mut iov) }.unwrap(), 11);
        let mut got = [0u8; 11];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        let mut small = [0u8; 4];
        assert_eq!(
            recv(b.as_raw_fd(), &mut small).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        a.write_all(b"ab").unwrap();
        drop(a);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            match recv(b.as_raw_fd(), &mut small) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&small[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(std::time::Instant::now() < deadline);
        }
        assert_eq!(seen, b"ab");
        assert_eq!(
            peer_addr(b.as_raw_fd()).map(|p| p.ip().is_loopback()),
            Some(true)
        );
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = pair();
        drop(a);
        let big = vec![0u8; 1 << 16];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let err = loop {
            match send(b.as_raw_fd(), &big) {
                Ok(_) => assert!(std::time::Instant::now() < deadline),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break e,
            }
        };
        assert!(matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn refusal_is_read_before_the_close_and_reset_close_is_an_rst() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (fd, peer) = accept(l.as_raw_fd(), true)
            .or_else(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                accept(l.as_raw_fd(), true)
            })
            .unwrap();
        assert!(peer.ip().is_loopback());
        std::thread::sleep(std::time::Duration::from_millis(20));
        refuse(fd, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let mut out = String::new();
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        a.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");

        let (mut c, d) = pair();
        let d = d.into_raw_fd();
        set_linger_zero(d);
        close(d);
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        let e = c.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}
