//! What a shard runs on: the I/O drivers (io_uring, epoll) behind one contract
//! ([`driver`]), their selection, and the process plumbing around them (listeners, signals,
//! rlimits, the clock, the doorbell, the shutdown trigger).

// Isolation (issue 12): failed accepts (classify, count, reserve descriptor, bounded log).
pub mod accept;
pub mod bufring;
pub mod clock;
pub mod driver;
pub mod epoll;
pub mod listener;
pub mod rlimit;
pub mod select;
pub mod send;
pub mod shutdown;
pub mod signals;
pub mod sock;
pub mod sockword;
pub mod uring;
pub mod wake;

#[cfg(test)]
mod tests;
