//! Clients that subscribe and then never read: raw blocking sockets with a small receive buffer,
//! so the server's queue for them grows as soon as the kernel buffers between us are full.
//! Afterwards they are drained to learn how the server ended them (close frame and code, FIN,
//! reset, or still open).

use crate::clock;
use crate::scan::{End, Scanner};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// TCP_ESTABLISHED in `tcp_info.tcpi_state` (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// A subscribed connection that is not being read.
pub struct Stalled {
    stream: TcpStream,
    /// Bytes after the 101 response head, received before we stopped reading.
    leftover: Vec<u8>,
    /// When the kernel first showed the connection no longer established (FIN or RST from the
    /// server), `CLOCK_MONOTONIC` ns; the close frame itself may still sit unread behind data.
    pub left_established_ns: Option<u64>,
}

/// How a stalled connection ended, learnt by draining it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A close frame, with its status code if it had one.
    CloseFrame(Option<u16>),
    /// End of stream without a close frame.
    Eof,
    /// A read error (reset).
    Error(String),
    /// Still open and sending data when the drain deadline passed: never evicted.
    Open,
}

impl Stalled {
    /// Connects with a `rcvbuf`-byte receive buffer (set before connecting, so the window is
    /// small from the start) and upgrades on `path`; then stops reading.
    pub fn connect(addr: SocketAddr, path: &str, rcvbuf: usize) -> io::Result<Stalled> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_recv_buffer_size(rcvbuf)?;
        sock.connect_timeout(&addr.into(), Duration::from_secs(10))?;
        let mut stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes())?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        let end = loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during upgrade",
                ));
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > 8192 {
                return Err(io::Error::other("upgrade response head too large"));
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
            return Err(io::Error::other(format!("upgrade refused: {line}")));
        }
        Ok(Stalled {
            leftover: head[end..].to_vec(),
            stream,
            left_established_ns: None,
        })
    }

    /// The client's local port (the server sees it as the remote port).
    pub fn local_port(&self) -> Option<u16> {
        self.stream.local_addr().ok().map(|a| a.port())
    }

    /// Checks (without reading) whether the connection left ESTABLISHED; records when first seen.
    pub fn poll_state(&mut self) {
        if self.left_established_ns.is_none() && tcp_state(&self.stream) != Some(TCP_ESTABLISHED) {
            self.left_established_ns = Some(clock::now_ns());
        }
    }

    /// Reads everything until the server's close frame, end of stream, an error or `deadline`.
    pub fn drain(self, deadline: Instant) -> Outcome {
        drain_stream(self.stream, self.leftover, deadline)
    }
}

/// Reads `stream` (after `pending` bytes already received) until it ends or `deadline` passes.
pub fn drain_stream(mut stream: TcpStream, mut pending: Vec<u8>, deadline: Instant) -> Outcome {
    let mut scanner = Scanner::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match scanner.scan(&pending, |_| {}) {
            Ok(used) => {
                pending.drain(..used);
            }
            Err(End::Closed(code)) => return Outcome::CloseFrame(code),
            Err(End::Protocol(e)) => return Outcome::Error(format!("protocol: {e}")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Open;
        }
        // A zero timeout means "block forever" to set_read_timeout; left is non-zero here.
        if stream.set_read_timeout(Some(left)).is_err() {
            return Outcome::Error("set_read_timeout".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Eof,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Open
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::Error(e.to_string()),
        }
    }
}

/// `tcp_info.tcpi_state` of a socket (its first byte), or `None` if the query failed.
fn tcp_state(stream: &TcpStream) -> Option<u8> {
    // Large enough for any kernel's struct tcp_info; the kernel copies at most this many bytes.
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and `len` is a valid socklen_t the kernel
    // updates to the bytes it wrote; the descriptor is owned by `stream`, alive for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server: answers the upgrade with 101, then runs `after` on the socket.
    fn serve_once(after: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
            after(s);
        });
        addr
    }

    #[test]
    fn close_code_behind_data_is_found_by_the_drain() {
        let addr = serve_once(|mut s| {
            // 300 KB of data frames (more than the small buffers hold), then close 1013.
            let mut frame = vec![0x82, 126, 0x10, 0x00];
            frame.extend(vec![7u8; 4096]);
            for _ in 0..75 {
                s.write_all(&frame).unwrap();
            }
            s.write_all(&[0x88, 0x02, 0x03, 0xF5]).unwrap();
        });
        let c = Stalled::connect(addr, "/ws/t", 4096).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let out = c.drain(Instant::now() + Duration::from_secs(10));
        assert_eq!(out, Outcome::CloseFrame(Some(1013)));
    }

    #[test]
    fn reset_and_eof_and_open_are_told_apart() {
        let addr = serve_once(drop);
        let mut c = Stalled::connect(addr, "/ws/t", 4096).unwrap();
        let t = Instant::now();
        while c.left_established_ns.is_none() && t.elapsed() < Duration::from_secs(5) {
            c.poll_state();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(c.left_established_ns.is_some(), "FIN seen without reading");
        assert_eq!(
            c.drain(Instant::now() + Duration::from_secs(5)),
            Outcome::Eof
        );

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let addr = serve_once(move |s| {
            let _ = rx.recv_timeout(Duration::from_secs(5));
            drop(s);
        });
        let mut c = Stalled::connect(addr, "/ws/t", 4096).unwrap();
        c.poll_state();
        assert!(c.left_established_ns.is_none());
        let out = c.drain(Instant::now() + Duration::from_millis(50));
        assert_eq!(out, Outcome::Open);
        tx.send(()).unwrap();
    }

    #[test]
    fn refused_upgrade_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        assert!(Stalled::connect(addr, "/nope", 4096).is_err());
    }
}
