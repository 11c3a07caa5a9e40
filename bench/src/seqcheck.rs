//! Per-stream sequence checking: lost, duplicated and reordered messages, exactly (up to a cap
//! on remembered gaps, which a correct server never reaches).

use std::collections::BTreeSet;

/// Gaps remembered per stream before further gaps are only counted.
const GAP_CAP: usize = 1 << 20;

/// Tracks one publisher's sequence (0, 1, 2, ...) as seen by one receiver.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    next: u32,
    gaps: BTreeSet<u32>,
    uncounted_gaps: u64,
    /// Messages seen twice (or late beyond the gap memory).
    pub duplicated: u64,
    /// Messages that arrived after a later one (filling a gap).
    pub reordered: u64,
}

impl SeqTrack {
    /// Records the arrival of sequence number `n`.
    #[inline]
    pub fn observe(&mut self, n: u32) {
        if n == self.next {
            self.next += 1;
        } else if n > self.next {
            for missing in self.next..n {
                if self.gaps.len() < GAP_CAP {
                    self.gaps.insert(missing);
                } else {
                    self.uncounted_gaps += 1;
                }
            }
            self.next = n + 1;
        } else if self.gaps.remove(&n) {
            self.reordered += 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// Messages never received, given that the publisher sent `sent` of them.
    pub fn lost(&self, sent: u64) -> u64 {
        self.gaps.len() as u64 + self.uncounted_gaps + sent.saturating_sub(u64::from(self.next))
    }

    /// Whether anything from this stream arrived.
    pub fn seen_any(&self) -> bool {
        self.next > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_clean() {
        let mut t = SeqTrack::default();
        (0..10).for_each(|n| t.observe(n));
        assert_eq!((t.lost(10), t.duplicated, t.reordered), (0, 0, 0));
        assert_eq!(t.lost(12), 2);
    }

    #[test]
    fn gaps_duplicates_reorders() {
        let mut t = SeqTrack::default();
        for n in [0, 2, 1, 1, 5, 3] {
            t.observe(n);
        }
        assert_eq!(t.reordered, 2); // 1 and 3 filled gaps
        assert_eq!(t.duplicated, 1); // the second 1
        assert_eq!(t.lost(6), 1); // 4
        assert!(t.seen_any());
    }
}
