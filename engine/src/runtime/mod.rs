//! What a shard runs on: the I/O drivers (io_uring, epoll) behind one contract, and the
//! process plumbing around them (listeners, signals, rlimits, the clock, shard threads).

pub mod listener;
pub mod monoio;
pub mod rlimit;
pub mod signals;
pub mod sockio;
