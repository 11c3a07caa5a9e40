//! Teardown deadlines: a connection whose close frame was queued is gone within a bounded time,
//! whether or not its peer reads.
//!
//! Contract (sans-IO, time is an input in shard milliseconds, a wrapping `u32`):
//! - [`ClosingSet::handle_close`] when a connection's final close frame is queued (eviction 1013,
//!   heartbeat or protocol close, the peer's own close, shutdown), with the longest it may take
//!   in all (`hard_ms`) and why it would be aborted.
//! - [`ClosingSet::poll_expired`] on every sweep (at most [`sweep_period`] apart), given `now`
//!   and a look at each connection: `None` once it has ended by itself (the entry is dropped),
//!   else its unsent bytes. It returns the connections to abort now (RST: `SO_LINGER {1, 0}`
//!   then close, so the descriptor and the kernel's buffers are freed at once).
//!
//! The rule: abort when `hard_ms` has passed since the close was queued, or when
//! `flush_timeout_ms` passed without the unsent bytes going down (progress is seen at sweep
//! granularity). Evictions and other closes use `hard_ms = flush_timeout_ms`; shutdown gives a
//! connection up to the shutdown grace while it keeps draining, but no longer than
//! `flush_timeout_ms` without progress, so shutdown never waits on a peer that does not read.

use std::time::Duration;

/// Why a closing connection is aborted (counted as `aborts{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// Its close frame was not flushed within `close_flush_timeout_ms` (or it made no progress
    /// for that long).
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

/// How often the closing sweep runs for a flush timeout of `flush_timeout_ms`: a quarter of
/// it, between 10 ms and 250 ms, so an abort is late by at most a quarter of the timeout.
pub fn sweep_period(flush_timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(flush_timeout_ms / 4).clamp(10, 250))
}

struct Entry<T> {
    item: T,
    /// When the close was queued.
    since: u32,
    /// When unsent bytes last went down (or `since`).
    progress: u32,
    /// Unsent bytes at the last look.
    unsent: usize,
    hard_ms: u32,
    why: AbortReason,
}

/// The closing connections of one shard, each with its deadline.
pub struct ClosingSet<T> {
    entries: Vec<Entry<T>>,
    flush_timeout_ms: u32,
}

/// `now - since` on the wrapping clock.
fn elapsed(now: u32, since: u32) -> u32 {
    now.wrapping_sub(since)
}

impl<T> ClosingSet<T> {
    /// An empty set; `flush_timeout_ms` is the longest a closing connection may go without
    /// progress.
    pub fn new(flush_timeout_ms: u32) -> Self {
        ClosingSet {
            entries: Vec::new(),
            flush_timeout_ms,
        }
    }

    /// The flush timeout this set applies.
    pub fn flush_timeout_ms(&self) -> u32 {
        self.flush_timeout_ms
    }

    /// A close frame was queued on `item` at `now` with `unsent` bytes in front of and
    /// including it; abort it at the latest `hard_ms` later.
    pub fn handle_close(
        &mut self,
        item: T,
        now: u32,
        unsent: usize,
        hard_ms: u32,
        why: AbortReason,
    ) {
        self.entries.push(Entry {
            item,
            since: now,
            progress: now,
            unsent,
            hard_ms,
            why,
        });
    }

    /// Connections being watched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is closing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// At `now`: drop the entries whose connection ended (`look` returns `None`), and remove
    /// and return the ones to abort, with why.
    pub fn poll_expired(
        &mut self,
        now: u32,
        mut look: impl FnMut(&T) -> Option<usize>,
    ) -> Vec<(T, AbortReason)> {
        let timeout = self.flush_timeout_ms;
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let e = &mut self.entries[i];
            let Some(unsent) = look(&e.item) else {
                self.entries.swap_remove(i);
                continue;
            };
            if unsent < e.unsent {
                e.progress = now;
            }
            e.unsent = unsent;
            let hard = elapsed(now, e.since) >= e.hard_ms;
            let stuck = elapsed(now, e.progress) >= timeout;
            if hard || stuck {
                let e = self.entries.swap_remove(i);
                expired.push((e.item, e.why));
                continue;
            }
            i += 1;
        }
        expired
    }

    /// Remove and return every entry (the end of a shutdown: abort whatever is left).
    pub fn drain(&mut self) -> impl Iterator<Item = (T, AbortReason)> + '_ {
        self.entries.drain(..).map(|e| (e.item, e.why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fake connection: its unsent bytes, or gone.
    struct Fake(Cell<Option<usize>>);

    fn look(c: &&Fake) -> Option<usize> {
        c.0.get()
    }

    #[test]
    fn aborts_exactly_at_the_flush_deadline_when_nothing_moves() {
        let c = Fake(Cell::new(Some(100)));
        let mut set = ClosingSet::new(500);
        set.handle_close(&c, 1000, 100, 500, AbortReason::CloseTimeout);
        assert!(set.poll_expired(1499, look).is_empty());
        let out = set.poll_expired(1500, look);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, AbortReason::CloseTimeout);
        assert!(set.is_empty());
    }

    #[test]
    fn a_connection_that_ends_by_itself_is_forgotten() {
        let c = Fake(Cell::new(Some(10)));
        let mut set = ClosingSet::new(500);
        set.handle_close(&c, 0, 10, 500, AbortReason::CloseTimeout);
        c.0.set(None);
        assert!(set.poll_expired(100, look).is_empty());
        assert!(set.is_empty());
        assert!(set.poll_expired(10_000, look).is_empty());
    }

    #[test]
    fn progress_does_not_extend_an_eviction_past_its_hard_deadline() {
        let c = Fake(Cell::new(Some(1000)));
        let mut set = ClosingSet::new(500);
        set.handle_close(&c, 0, 1000, 500, AbortReason::CloseTimeout);
        for t in (100..500).step_by(100) {
            c.0.set(Some(1000 - t as usize)); // a trickle
            assert!(set.poll_expired(t, look).is_empty(), "at {t}");
        }
        assert_eq!(set.poll_expired(500, look).len(), 1);
    }

    #[test]
    fn shutdown_waits_for_a_draining_peer_but_not_for_a_stuck_one() {
        let draining = Fake(Cell::new(Some(10_000)));
        let stuck = Fake(Cell::new(Some(10_000)));
        let mut set = ClosingSet::new(500);
        set.handle_close(&draining, 0, 10_000, 5000, AbortReason::Shutdown);
        set.handle_close(&stuck, 0, 10_000, 5000, AbortReason::Shutdown);
        let mut aborted = Vec::new();
        for t in (100..=6000).step_by(100) {
            draining.0.set(Some(10_000 - t as usize)); // keeps reading
            for (c, why) in set.poll_expired(t, look) {
                assert_eq!(why, AbortReason::Shutdown);
                aborted.push((t, std::ptr::eq(c, &stuck)));
            }
        }
        // The stuck one after the flush timeout; the draining one at the grace.
        assert_eq!(aborted, vec![(500, true), (5000, false)]);
    }

    #[test]
    fn deadlines_hold_across_the_clock_wrap() {
        let c = Fake(Cell::new(Some(1)));
        let mut set = ClosingSet::new(300);
        let start = u32::MAX - 100;
        set.handle_close(&c, start, 1, 300, AbortReason::CloseTimeout);
        assert!(set.poll_expired(start.wrapping_add(299), look).is_empty());
        assert_eq!(set.poll_expired(start.wrapping_add(300), look).len(), 1);
    }

    #[test]
    fn drain_returns_everything_left() {
        let (a, b) = (Fake(Cell::new(Some(1))), Fake(Cell::new(Some(1))));
        let mut set = ClosingSet::new(500);
        set.handle_close(&a, 0, 1, 5000, AbortReason::Shutdown);
        set.handle_close(&b, 0, 1, 500, AbortReason::CloseTimeout);
        let whys: Vec<_> = set.drain().map(|(_, w)| w).collect();
        assert_eq!(whys, vec![AbortReason::Shutdown, AbortReason::CloseTimeout]);
        assert!(set.is_empty());
    }

    #[test]
    fn sweep_period_is_a_quarter_within_bounds() {
        assert_eq!(sweep_period(500), Duration::from_millis(125));
        assert_eq!(sweep_period(1), Duration::from_millis(10));
        assert_eq!(sweep_period(60_000), Duration::from_millis(250));
    }
}
