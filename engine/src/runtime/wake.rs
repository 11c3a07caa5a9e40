//! The shard's doorbell: an eventfd that wakes its parked driver from any thread.
//!
//! [`Doorbell::waker`] is a `std::task::Waker` whose `wake()` writes the eventfd, so everything
//! that wakes a consumer through a `Waker` — the mesh's parked/fence rule
//! (`MeshLink::poll_drain`), the shutdown trigger — wakes a shard the same way it wakes the NATS
//! bridge's tokio task. The parked driver watches the fd (io_uring: a `READ` SQE; epoll: the fd
//! in its set) and [`Doorbell::clear`]s it when it fires.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::{Wake, Waker};

/// An eventfd doorbell.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell; `nonblocking` for a readiness driver that reads it after `EPOLLIN`
    /// (io_uring reads a blocking one: the read completes when it is rung).
    pub fn new(nonblocking: bool) -> io::Result<Arc<Doorbell>> {
        let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
        // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Doorbell {
            // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// The eventfd, for the driver to watch.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Ring: add 1 to the counter (wakes a watcher).
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; an eventfd write never blocks short of
        // overflowing a 2^64-2 counter.
        let _ = unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter (nonblocking doorbells only; a blocking one is read by io_uring).
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// A waker that rings this doorbell.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

impl Wake for Doorbell {
    fn wake(self: Arc<Self>) {
        self.ring();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_rings_and_clear_resets() {
        let bell = Doorbell::new(true).unwrap();
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own eventfd.
        let empty = unsafe { libc::read(bell.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(empty, -1, "nothing rung yet (EAGAIN)");
        bell.waker().wake_by_ref();
        bell.waker().wake();
        // SAFETY: as above.
        let n = unsafe { libc::read(bell.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(v, 2, "both rings counted");
        bell.ring();
        bell.clear();
        // SAFETY: as above.
        let n = unsafe { libc::read(bell.fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, -1);
    }
}
