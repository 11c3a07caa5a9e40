//! Raw, nonblocking socket I/O after readiness.
//!
//! Connections wait for readiness with monoio (`readable()`/`writable()`: a poll op on
//! io_uring, epoll on the legacy driver) and then move bytes with plain syscalls. Reads go into
//! a per-shard scratch buffer, so an idle connection owns no read buffer; writes are one
//! `sendmsg` with up to [`MAX_IOVECS`] iovecs over the queued `Bytes`, which also means at
//! most one write is ever in flight per socket. Keeping this behind these few functions is the
//! seam where provided-buffer rings / multishot recv can go later.

use std::io;
use std::os::fd::RawFd;

/// Most iovecs per `sendmsg` (Linux IOV_MAX is 1024).
pub const MAX_IOVECS: usize = 1024;

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

/// One nonblocking `recv` appending up to `max` bytes to `buf`'s spare capacity.
pub fn recv_append(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: the kernel writes at most `len` bytes into the spare capacity, which is valid
    // for writes; we only extend the length by what recv reports as written.
    let n = result(unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) })?;
    // SAFETY: `n <= len` bytes past the old length were initialized by recv.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// One nonblocking gather write of `frames` (MSG_NOSIGNAL: a closed peer gives EPIPE, not
/// SIGPIPE). `iovecs` is caller-owned scratch, reused across calls.
pub fn send_frames<'a>(
    fd: RawFd,
    frames: impl Iterator<Item = &'a [u8]>,
    iovecs: &mut Vec<libc::iovec>,
) -> io::Result<usize> {
    iovecs.clear();
    for f in frames.take(MAX_IOVECS) {
        iovecs.push(libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        });
    }
    if iovecs.is_empty() {
        return Ok(0);
    }
    // SAFETY: msghdr is plain data; the fields we do not set stay zero (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_mut_ptr();
    msg.msg_iovlen = iovecs.len() as _;
    // SAFETY: every iovec points into a slice borrowed for this call, valid for reads of
    // `iov_len` bytes; the kernel only reads them.
    let n = result(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) });
    iovecs.clear();
    n
}

/// One nonblocking `send` of `data` (MSG_NOSIGNAL, like [`send_frames`]).
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

/// Write all of `data` to a nonblocking socket, waiting for writability as needed.
pub async fn write_all(stream: &monoio::net::TcpStream, fd: RawFd, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match send(fd, &data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read at least one byte (appending up to `max`), waiting for readability as needed;
/// `Ok(0)` is end of stream.
pub async fn read_some(
    stream: &monoio::net::TcpStream,
    fd: RawFd,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    loop {
        match recv_append(fd, buf, max) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn gather_send_and_recv() {
        let (mut a, b) = pair();
        let frames = [
            Bytes::from_static(b"hello "),
            Bytes::from_static(b""),
            Bytes::from_static(b"world"),
        ];
        let mut iov = Vec::new();
        let n = send_frames(b.as_raw_fd(), frames.iter().map(|f| &f[..]), &mut iov).unwrap();
        assert_eq!(n, 11);
        let mut got = [0u8; 11];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        assert_eq!(
            send_frames(b.as_raw_fd(), std::iter::empty(), &mut iov).unwrap(),
            0
        );

        a.write_all(b"abcdef").unwrap();
        let mut buf = vec![b'x'; 2];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while buf.len() < 8 {
            match recv_append(b.as_raw_fd(), &mut buf, 4) {
                Ok(n) => assert!(n <= 4),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            assert!(std::time::Instant::now() < deadline);
        }
        assert_eq!(buf, b"xxabcdef");
        let mut small = [0u8; 4];
        assert_eq!(
            recv(b.as_raw_fd(), &mut small).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match recv(b.as_raw_fd(), &mut small) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("{other:?}"),
            }
            assert!(std::time::Instant::now() < deadline);
        }
    }

    #[test]
    fn send_to_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = pair();
        drop(a);
        let frame = [Bytes::from(vec![0u8; 1 << 16])];
        let mut iov = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let err = loop {
            match send_frames(b.as_raw_fd(), frame.iter().map(|f| &f[..]), &mut iov) {
                Ok(_) => assert!(std::time::Instant::now() < deadline),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }

    #[test]
    fn partial_write_when_socket_buffer_fills() {
        let (a, b) = pair();
        b.set_nonblocking(true).unwrap();
        let big = Bytes::from(vec![7u8; 8 << 20]);
        let mut iov = Vec::new();
        let n = send_frames(b.as_raw_fd(), std::iter::once(&big[..]), &mut iov).unwrap();
        assert!(n > 0 && n < big.len(), "expected a partial write, got {n}");
        drop(a);
    }
}
