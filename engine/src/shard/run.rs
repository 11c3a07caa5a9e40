//! The shard's loop: one thread, one driver, one core. Each turn:
//!
//! 1. `handle_time(now)`: the turn's one clock reading; due timers run;
//! 2. `drain_mesh`: other shards' broadcasts join this turn's queues (and pause notices are
//!    seen before publishers' input is decoded);
//! 3. `dispatch`: the driver's events (accepts, input, send completions, closes);
//! 4. `flush`: every dirty connection once, one gather send each (corking), and socket
//!    requests — queued as SQEs (io_uring) or made as syscalls (epoll);
//! 5. `flush_mesh`: ring the doorbells of parked consumers this turn sent to;
//! 6. `park` + `enter`: with nothing left to do, register the doorbell and wait for I/O, the
//!    doorbell or the next timer — one `io_uring_enter` submits the turn's SQEs and waits.

use std::io;
use std::time::{Duration, Instant};

use crate::runtime::driver::Driver;
use crate::runtime::shutdown::Shutdown;
use crate::shard::Core;

/// Run `core` on `driver` until graceful shutdown (triggered through `shutdown`) completes.
pub fn run<D: Driver>(mut driver: D, mut core: Core, shutdown: &Shutdown) -> io::Result<()> {
    let waker = driver.waker();
    shutdown.register(core.id(), &waker);
    loop {
        core.handle_time(Instant::now());
        if shutdown.is_triggered() {
            core.begin_shutdown();
        }
        if core.is_done() {
            break;
        }
        core.drain_mesh();
        driver.dispatch(&mut core);
        driver.flush(&mut core);
        core.flush_mesh();
        let timeout = if core.park(&waker) {
            core.poll_timeout()
        } else {
            Duration::ZERO
        };
        driver.enter(Some(timeout))?;
    }
    core.count_abandoned();
    tracing::info!(shard = core.id(), left = core.active(), "shard stopped");
    // The driver goes first: sends still in flight read frames the core keeps (driver contract
    // 3), so the core outlives the ring and the sockets.
    drop(driver);
    drop(core);
    Ok(())
}
