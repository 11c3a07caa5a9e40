//! The queue ceiling: how much memory queued frames may hold, and which connections to evict
//! when a shard would go over its share or has too many slow clients. Pure decisions here;
//! the hub applies them.
//!
//! The ceiling is `queue_ceiling_pct` of the memory limit, split statically over the shards:
//! SO_REUSEPORT spreads connections evenly and every shard receives every broadcast, so the
//! shards' needs are alike, and a static split needs no shared counter on the hot path.
//!
//! A shard's charge is its local queues' retained bytes plus its mesh backlog (what it keeps
//! alive for other shards). Evicting local subscribers cannot release the backlog, so the
//! backlog has its own limit, [`MESH_SHARE_PCT`] of the budget: above it the shard stops
//! taking publishes until the backlog is back at half that.

/// Fraction of its budget a shard evicts down to once it would go over (in percent), so one
/// eviction round makes room for many messages instead of one.
pub const EVICT_TO_PCT: usize = 80;

/// Share of its budget a shard's mesh backlog may reach before its publishers are stopped
/// (in percent). With eviction rounds aiming at [`EVICT_TO_PCT`], local queues keep at least
/// 80 - 25 = 55% of the budget whatever the other shards' lag.
pub const MESH_SHARE_PCT: usize = 25;

/// Slow clients (queues above their high-water mark) tolerated per 1000 connections.
pub const SLOW_PER_MILLE: usize = 5;

/// Slow clients always tolerated, whatever the connection count: with 10 connections one slow
/// client is 10%, but it is not a fleet-wide problem worth evicting for.
pub const SLOW_MIN: usize = 8;

/// One shard's share of the ceiling and its eviction rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Governor {
    /// Bytes this shard's queued frames may retain.
    pub budget: usize,
    /// What an eviction round brings retained bytes down to.
    pub evict_to: usize,
    /// Mesh backlog above which the shard stops taking publishes.
    pub mesh_limit: usize,
    /// Mesh backlog at or below which stopped publishers resume (hysteresis: half the limit,
    /// so a backlog hovering at the limit does not wake every publisher per message).
    pub mesh_resume: usize,
}

impl Governor {
    /// The share of `ceiling` for one of `shards` shards.
    pub fn new(ceiling: u64, shards: usize) -> Self {
        let budget = (ceiling / shards.max(1) as u64) as usize;
        let pct = |p: usize| budget / 100 * p + budget % 100 * p / 100;
        let mesh_limit = pct(MESH_SHARE_PCT);
        Governor {
            budget,
            evict_to: pct(EVICT_TO_PCT),
            mesh_limit,
            mesh_resume: mesh_limit / 2,
        }
    }

    /// True if a mesh backlog of `mesh` bytes must stop this shard's publishers.
    pub fn mesh_over(&self, mesh: usize) -> bool {
        mesh > self.mesh_limit
    }

    /// True if retaining `extra` more bytes on top of `retained` stays within the budget.
    pub fn fits(&self, retained: usize, extra: usize) -> bool {
        retained.saturating_add(extra) <= self.budget
    }

    /// True once an eviction round has done enough: at or below `evict_to` and room for
    /// `extra`.
    pub fn relieved(&self, retained: usize, extra: usize) -> bool {
        retained <= self.evict_to && self.fits(retained, extra)
    }

    /// Most slow clients tolerated among `connections`: 0.5% (rounded up), at least
    /// [`SLOW_MIN`].
    pub fn slow_limit(connections: usize) -> usize {
        (connections * SLOW_PER_MILLE).div_ceil(1000).max(SLOW_MIN)
    }

    /// Eviction order: candidates `(unsent bytes, id)` sorted by most unsent bytes first
    /// (ties: lower id first, so the order is deterministic).
    pub fn order<K: Ord + Copy>(candidates: Vec<(usize, K)>) -> Vec<K> {
        Self::ranked(candidates)
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    }

    /// [`order`](Self::order), keeping each candidate's unsent bytes.
    pub fn ranked<K: Ord + Copy>(mut candidates: Vec<(usize, K)>) -> Vec<(usize, K)> {
        candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        candidates
    }

    /// Whether an eviction round that is back within the budget goes on (toward
    /// [`evict_to`](Self::evict_to)) with a candidate holding `unsent` bytes, when the round's
    /// first eviction held `first`: only with stragglers, at least half as far behind. A
    /// connection much closer to the head is keeping up with the publishers; what keeps the
    /// shard above `evict_to` then is what no eviction releases (the mesh backlog, heads being
    /// written), and evicting a reader that keeps up would only break the isolation promise.
    pub fn straggler(first: usize, unsent: usize) -> bool {
        unsent >= first / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_split_and_thresholds() {
        // 64 MiB at 5% = 3,355,443 B over 2 shards.
        let g = Governor::new((64u64 << 20) * 5 / 100, 2);
        assert_eq!(g.budget, 1_677_721);
        assert_eq!(g.evict_to, 1_342_176);
        assert_eq!((g.mesh_limit, g.mesh_resume), (419_430, 209_715));
        assert!(!g.mesh_over(g.mesh_limit) && g.mesh_over(g.mesh_limit + 1));
        assert!(g.fits(g.budget - 10, 10));
        assert!(!g.fits(g.budget - 10, 11));
        assert!(!g.relieved(g.evict_to + 1, 0));
        assert!(g.relieved(g.evict_to, 10));
        assert_eq!(Governor::slow_limit(10), SLOW_MIN);
        assert_eq!(Governor::slow_limit(10_000), 50);
        assert_eq!(Governor::slow_limit(10_001), 51);
        assert_eq!(
            Governor::order(vec![(5, 1), (9, 2), (5, 0), (1, 3)]),
            vec![2, 0, 1, 3]
        );
        assert!(Governor::straggler(1000, 500) && !Governor::straggler(1000, 499));
    }
}
