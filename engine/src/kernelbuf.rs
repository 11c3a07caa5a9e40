//! Kernel send buffers in the budget: which full sockets are stalled.
//!
//! What a socket holds unsent in its kernel send buffer is memory a peer makes the host keep
//! (up to 2 × `SO_SNDBUF`, or tcp_wmem's max with autotuning) that no user-space counter
//! sees. The connection's high-water mark counts it as soon as it is sampled. The shard's
//! ceiling charges it only once the socket has *stalled*: full and not draining for
//! [`STALL_MS`]. A subscriber that keeps up also fills its socket for a moment now and then
//! (a burst, a scheduling hiccup on its side); charging those moments to the ceiling would
//! evict fast clients for a backlog they are already taking.
//!
//! Contract (sans-IO, time is an input in shard milliseconds, a wrapping `u32`):
//! - [`FullSockets::handle_full`] when a write finds a socket full (no syscall on that path:
//!   the sweep samples).
//! - [`FullSockets::poll`] on every sweep with `look`, which samples the socket now and says
//!   what it holds: `None` once the connection ended, else `(held, drained)` where `held` is
//!   its queue plus kernel bytes and `drained` that the kernel holds nothing any more.
//!   `apply` is told each socket's verdict: [`Verdict::Drained`] (forgotten),
//!   [`Verdict::Draining`] (full but moving: not charged) or [`Verdict::Stalled`] (charged).

/// How long a full socket may go without its held bytes going down before the ceiling
/// charges its kernel bytes.
pub const STALL_MS: u32 = 250;

/// What the sweep concluded about one full socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its kernel buffer is empty again (or the connection ended): no longer watched.
    Drained,
    /// Still full, but it drained some since the last look (or stalled only briefly).
    Draining,
    /// Full and not draining for [`STALL_MS`]: its kernel bytes count toward the ceiling.
    Stalled,
}

struct Entry<T> {
    item: T,
    /// When its held bytes last went down (or it was found full).
    progress: u32,
    /// Held bytes at the last look.
    held: usize,
}

/// The full sockets of one shard.
pub struct FullSockets<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for FullSockets<T> {
    fn default() -> Self {
        FullSockets {
            entries: Vec::new(),
        }
    }
}

impl<T> FullSockets<T> {
    /// A write found `item`'s socket full at `now` (call once per episode: the caller keeps a
    /// flag until `poll` reports it drained).
    pub fn handle_full(&mut self, item: T, now: u32) {
        self.entries.push(Entry {
            item,
            progress: now,
            held: usize::MAX,
        });
    }

    /// Sockets being watched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no socket is full.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Look at every watched socket at `now` (see the module contract).
    pub fn poll(
        &mut self,
        now: u32,
        mut look: impl FnMut(&T) -> Option<(usize, bool)>,
        mut apply: impl FnMut(&T, Verdict),
    ) {
        let mut i = 0;
        while i < self.entries.len() {
            let e = &mut self.entries[i];
            match look(&e.item) {
                None | Some((_, true)) => {
                    apply(&e.item, Verdict::Drained);
                    self.entries.swap_remove(i);
                    continue;
                }
                Some((held, false)) => {
                    // The first look (held unknown) is a baseline, not progress.
                    if held < e.held && e.held != usize::MAX {
                        e.progress = now;
                    }
                    e.held = held;
                    let stalled = now.wrapping_sub(e.progress) >= STALL_MS;
                    let verdict = if stalled {
                        Verdict::Stalled
                    } else {
                        Verdict::Draining
                    };
                    apply(&e.item, verdict);
                }
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fake socket: (held bytes, drained), or gone.
    struct Sock(Cell<Option<(usize, bool)>>);

    fn run(set: &mut FullSockets<&Sock>, now: u32) -> Vec<Verdict> {
        let mut out = Vec::new();
        set.poll(now, |s| s.0.get(), |_, v| out.push(v));
        out
    }

    #[test]
    fn a_socket_that_never_drains_is_charged_after_the_stall_time() {
        let s = Sock(Cell::new(Some((1000, false))));
        let mut set = FullSockets::default();
        set.handle_full(&s, 0);
        assert_eq!(run(&mut set, 125), vec![Verdict::Draining]);
        assert_eq!(run(&mut set, 249), vec![Verdict::Draining]);
        assert_eq!(run(&mut set, 250), vec![Verdict::Stalled]);
        assert_eq!(run(&mut set, 5000), vec![Verdict::Stalled]);
    }

    #[test]
    fn a_draining_socket_is_never_charged_and_is_forgotten_when_empty() {
        let s = Sock(Cell::new(Some((10_000, false))));
        let mut set = FullSockets::default();
        set.handle_full(&s, 0);
        for t in 1..40u32 {
            s.0.set(Some((10_000 - t as usize * 100, false))); // slow but moving
            assert_eq!(run(&mut set, t * 125), vec![Verdict::Draining], "at {t}");
        }
        s.0.set(Some((0, true)));
        assert_eq!(run(&mut set, 5000), vec![Verdict::Drained]);
        assert!(set.is_empty());
    }

    #[test]
    fn a_stalled_socket_that_moves_again_is_uncharged() {
        let s = Sock(Cell::new(Some((500, false))));
        let mut set = FullSockets::default();
        set.handle_full(&s, 0);
        run(&mut set, 0);
        assert_eq!(run(&mut set, 300), vec![Verdict::Stalled]);
        s.0.set(Some((400, false)));
        assert_eq!(run(&mut set, 400), vec![Verdict::Draining]);
        s.0.set(None);
        assert_eq!(run(&mut set, 500), vec![Verdict::Drained]);
        assert_eq!(set.len(), 0);
    }
}
