//! Teardown deadlines: a connection whose close frame was queued is gone within a bounded time,
//! whether or not its peer reads.
//!
//! Contract (sans-IO, time is an input in shard milliseconds, a wrapping `u32`): when a
//! closing connection's flush deadline passes (the core's deadline list, `shard/timers.rs`),
//! [`on_flush_deadline`] decides, from when its writes last made progress, whether to abort it
//! now (RST: `SO_LINGER {1, 0}` then close, so the descriptor and the kernel's buffers are
//! freed at once; both drivers cancel a send blocked on it) or to look again later.
//!
//! The rule: an eviction or any other close is aborted `close_flush_timeout_ms` after its
//! close was queued if it has not flushed by then. Shutdown gives a connection up to the
//! shutdown grace while it keeps draining, but never more than `close_flush_timeout_ms`
//! without progress, so shutdown never waits on a peer that does not read.

use crate::runtime::clock::reached;

/// Why a closing connection is aborted (counted as `aborts{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// Its close frame was not flushed within `close_flush_timeout_ms`.
    CloseTimeout,
    /// Shutdown: still not flushed at the end of `shutdown_grace_ms`, or no progress for
    /// `close_flush_timeout_ms`.
    Shutdown,
}

impl AbortReason {
    /// Every reason, in counter order.
    pub const ALL: [AbortReason; 2] = [AbortReason::CloseTimeout, AbortReason::Shutdown];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::CloseTimeout => "close_timeout",
            AbortReason::Shutdown => "shutdown",
        }
    }
}

/// What to do with a closing connection whose flush deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Reset it now.
    Abort(AbortReason),
    /// It is still draining (shutdown only): look again at this time.
    Recheck(u32),
}

/// At `now`, a closing connection's flush deadline passed; its writes last made progress at
/// `progress`. `shutdown_end` is the end of the shutdown grace while shutting down (`None`
/// otherwise).
pub fn on_flush_deadline(
    now: u32,
    progress: u32,
    flush_timeout_ms: u32,
    shutdown_end: Option<u32>,
) -> Decision {
    let Some(end) = shutdown_end else {
        return Decision::Abort(AbortReason::CloseTimeout);
    };
    let stuck_at = progress.wrapping_add(flush_timeout_ms);
    if reached(now, end) || reached(now, stuck_at) {
        return Decision::Abort(AbortReason::Shutdown);
    }
    // The earlier of the two.
    Decision::Recheck(if reached(stuck_at, end) {
        end
    } else {
        stuck_at
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_outside_shutdown_is_aborted_at_its_deadline() {
        assert_eq!(
            on_flush_deadline(1000, 999, 500, None),
            Decision::Abort(AbortReason::CloseTimeout),
            "progress does not extend an eviction's deadline"
        );
    }

    #[test]
    fn shutdown_waits_for_a_draining_peer_but_not_for_a_stuck_one() {
        // Draining: progress 100 ms ago, grace ends at 10 000.
        assert_eq!(
            on_flush_deadline(1000, 900, 500, Some(10_000)),
            Decision::Recheck(1400)
        );
        // No progress for the flush timeout.
        assert_eq!(
            on_flush_deadline(1400, 900, 500, Some(10_000)),
            Decision::Abort(AbortReason::Shutdown)
        );
        // The grace ends first.
        assert_eq!(
            on_flush_deadline(9900, 9800, 500, Some(10_000)),
            Decision::Recheck(10_000)
        );
        assert_eq!(
            on_flush_deadline(10_000, 9990, 500, Some(10_000)),
            Decision::Abort(AbortReason::Shutdown)
        );
    }

    #[test]
    fn deadlines_hold_across_the_clock_wrap() {
        let p = u32::MAX - 100;
        assert_eq!(
            on_flush_deadline(p.wrapping_add(50), p, 500, Some(p.wrapping_add(10_000))),
            Decision::Recheck(p.wrapping_add(500))
        );
        assert_eq!(
            on_flush_deadline(p.wrapping_add(500), p, 500, Some(p.wrapping_add(10_000))),
            Decision::Abort(AbortReason::Shutdown)
        );
    }
}
