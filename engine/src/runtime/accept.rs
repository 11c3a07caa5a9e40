//! What a shard does when `accept` fails: classify, count, back off, refuse with a reserve
//! descriptor, and log at a bounded rate.
//!
//! Out of descriptors (EMFILE: this process; ENFILE: the system), a listener's backlog keeps
//! connections the shard cannot accept: left there, their clients hang with no answer, and an
//! accept loop that retries at once spins. The classic answer (libev, nginx) is a reserve
//! descriptor: close it, accept one pending connection into the freed slot, answer it 503 and
//! close it, reopen the reserve; a batch of at most [`REFUSE_BATCH`] per round, then
//! [`BACKOFF`] before accepting again.
//!
//! The decision is sans-IO: [`AcceptErrorReason::of`] classifies an errno (the log line is
//! rate-limited by `warn_limited!`, one home for every repeated warning). The I/O (the reserve
//! descriptor, the raw accept) is [`Reserve`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Pause before accepting again after an error.
pub const BACKOFF: Duration = Duration::from_millis(10);

/// Most pending connections refused through the reserve descriptor per error round.
pub const REFUSE_BATCH: usize = 64;

/// Why an accept failed (counted as `accept_errors{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptErrorReason {
    /// EMFILE: the process is at its open-file limit (RLIMIT_NOFILE).
    ProcessFiles,
    /// ENFILE: the system is at its open-file limit (fs.file-max).
    SystemFiles,
    /// ENOMEM / ENOBUFS: the kernel could not allocate the socket.
    Memory,
    /// Anything else (ECONNABORTED, EPERM from a firewall hook, ...).
    Other,
}

impl AcceptErrorReason {
    /// Every reason, in counter order.
    pub const ALL: [AcceptErrorReason; 4] = [
        AcceptErrorReason::ProcessFiles,
        AcceptErrorReason::SystemFiles,
        AcceptErrorReason::Memory,
        AcceptErrorReason::Other,
    ];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            AcceptErrorReason::ProcessFiles => "emfile",
            AcceptErrorReason::SystemFiles => "enfile",
            AcceptErrorReason::Memory => "memory",
            AcceptErrorReason::Other => "other",
        }
    }

    /// The reason for an accept error.
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EMFILE) => AcceptErrorReason::ProcessFiles,
            Some(libc::ENFILE) => AcceptErrorReason::SystemFiles,
            Some(libc::ENOMEM) | Some(libc::ENOBUFS) => AcceptErrorReason::Memory,
            _ => AcceptErrorReason::Other,
        }
    }

    /// True when out of descriptors: the reserve descriptor can answer a pending client.
    pub fn out_of_descriptors(self) -> bool {
        matches!(
            self,
            AcceptErrorReason::ProcessFiles | AcceptErrorReason::SystemFiles
        )
    }
}

/// A spare descriptor (`/dev/null`), given up to accept one connection when the process is
/// out of descriptors.
pub struct Reserve(Option<OwnedFd>, Option<OwnedFd>);

impl Reserve {
    /// Open the reserve (none if even that fails).
    pub fn open() -> Self {
        // The second is never given up: the reserve is taken back by duplicating it.
        Reserve(open_dev_null(), open_dev_null())
    }

    /// True while the reserve is held.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Out of descriptors: free the reserve, accept one pending connection on `listener` into
    /// it, answer it with `response` (one nonblocking write, a half-close, bounded) and close
    /// it, then take the reserve back. True if a connection was refused; false if none was
    /// pending, or there was no reserve to give up.
    pub fn refuse_one(&mut self, listener: RawFd, response: &[u8]) -> bool {
        // The io_uring driver keeps its listener blocking: accept only what is pending.
        let mut pfd = libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0 (never waits).
        if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
            return false;
        }
        if self.0.take().is_none() {
            self.0 = reopen();
            return false;
        }
        // The number the reserve freed can be taken for a moment by another thread's descriptor
        // allocation (another shard's io_uring accept takes a number before it looks for a
        // pending client, and gives it back when there is none). Without retrying, this shard
        // would lose its reserve for good while descriptors stay exhausted, and its clients
        // would wait unanswered. So: a few retries, yielding in between (microseconds, and only
        // here, out of descriptors).
        let mut fd = -1;
        for _ in 0..STOLEN_RETRIES {
            // SAFETY: accept4 with null address arguments on a listening socket we own; the
            // result is checked before use.
            fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 || !out_of_descriptors_now() {
                break;
            }
            std::thread::yield_now();
        }
        if fd < 0 {
            self.0 = reopen();
            return false;
        }
        use crate::runtime::sock;
        let _ = sock::send(fd, response);
        sock::shutdown_write(fd);
        let mut sink = [0u8; 4096];
        let _ = sock::recv(fd, &mut sink);
        // Close the connection and keep its descriptor number as the new reserve in one step
        // (dup3 replaces it atomically): closing first would let another thread's accept take
        // the slot, and this shard would be left without a reserve while its clients wait.
        let template = self.1.as_ref().map_or(-1, |t| t.as_raw_fd());
        // SAFETY: `fd` is the connection just accepted, owned here; `template` is open (or -1,
        // which dup3 refuses).
        if unsafe { libc::dup3(template, fd, libc::O_CLOEXEC) } == fd {
            // SAFETY: `fd` now refers to a duplicate of /dev/null, owned by nobody else.
            self.0 = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        } else {
            sock::close(fd);
            self.0 = reopen();
        }
        true
    }
}

impl Reserve {
    /// [`refuse_one`](Self::refuse_one) up to [`REFUSE_BATCH`] times; returns how many were
    /// refused.
    pub fn refuse_batch(&mut self, listener: RawFd, response: &[u8]) -> usize {
        (0..REFUSE_BATCH)
            .take_while(|_| self.refuse_one(listener, response))
            .count()
    }
}

/// Attempts to win back a descriptor number another thread holds for a moment (see
/// [`Reserve::refuse_one`]).
const STOLEN_RETRIES: usize = 64;

/// True if the last call failed for want of a descriptor.
fn out_of_descriptors_now() -> bool {
    matches!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// Take the reserve back, retrying while another thread holds the number for a moment.
fn reopen() -> Option<OwnedFd> {
    for _ in 0..STOLEN_RETRIES {
        if let Some(fd) = open_dev_null() {
            return Some(fd);
        }
        std::thread::yield_now();
    }
    None
}

fn open_dev_null() -> Option<OwnedFd> {
    // SAFETY: open(2) with a static NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: a descriptor just returned by open(2), owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_errno() {
        let of = |n| AcceptErrorReason::of(&io::Error::from_raw_os_error(n));
        assert_eq!(of(libc::EMFILE), AcceptErrorReason::ProcessFiles);
        assert_eq!(of(libc::ENFILE), AcceptErrorReason::SystemFiles);
        assert_eq!(of(libc::ENOBUFS), AcceptErrorReason::Memory);
        assert_eq!(of(libc::ECONNABORTED), AcceptErrorReason::Other);
        assert!(of(libc::EMFILE).out_of_descriptors() && !of(libc::ENOMEM).out_of_descriptors());
        for (i, r) in AcceptErrorReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn the_reserve_refuses_a_pending_connection_with_the_response() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let mut reserve = Reserve::open();
        assert!(reserve.is_held());
        assert!(!reserve.refuse_one(l.as_raw_fd(), b"x"), "nothing pending");
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !reserve.refuse_one(l.as_raw_fd(), b"HTTP/1.1 503 x\r\n\r\n") {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(reserve.is_held(), "taken back");
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HTTP/1.1 503 x\r\n\r\n");
    }
}
