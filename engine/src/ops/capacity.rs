//! Capacity arithmetic: what one connection costs the host (descriptors, kernel and user
//! memory) and how many connections a host holds. The default `max_connections` (config) and
//! the preflight checks ([`super::preflight`]) both use it, so they never disagree; a leaf that
//! depends on nothing else in the crate.

/// Default `queue_ceiling_pct`: the share of the memory limit queued frames may hold.
pub const DEFAULT_QUEUE_CEILING_PCT: u32 = 5;

/// Descriptors needed besides connections: stdio, logs, and per shard its listener, io_uring or
/// epoll fd, eventfd doorbell and timer.
pub const NOFILE_HEADROOM: u64 = 64;
/// Extra descriptors per shard (see [`NOFILE_HEADROOM`]).
pub const NOFILE_PER_SHARD: u64 = 8;
/// Kernel memory per idle TCP socket (tcp_sock, socket inode, file): ~3.7 KB of slab measured
/// over 16,000 idle loopback sockets (docs/TUNING.md), rounded up.
pub const KERNEL_BYTES_PER_CONNECTION: u64 = 3_800;
/// shardcast's user-space memory per idle connection: ~250 B measured with engine v2
/// (docs/ENGINE.md, "Per-connection memory budget"), rounded up for a subscription or two and
/// the allocator's slack.
pub const USER_BYTES_PER_CONNECTION: u64 = 512;
/// Share of the memory limit the send-queue ceiling may use on top of idle connections: the
/// default `queue_ceiling_pct`.
pub const QUEUE_CEILING_PERCENT: u64 = DEFAULT_QUEUE_CEILING_PCT as u64;

/// Descriptors `max_connections` over `shards` need.
pub fn nofile_required(max_connections: usize, shards: usize) -> u64 {
    max_connections as u64 + NOFILE_HEADROOM + NOFILE_PER_SHARD * shards as u64
}

/// The default `max_connections`: as many connections as both the descriptor limit and the
/// memory limit allow, so a default start never promises more than the host can hold (and the
/// preflight's nofile and memory checks pass). `nofile_hard` is the hard RLIMIT_NOFILE, which the
/// server raises its soft limit to at start, minus the non-connection headroom; the memory
/// side is [`memory_required`] inverted. Returns the limit and which of the two set it
/// ("nofile" or "memory"); at least 1.
pub fn default_max_connections(
    nofile_hard: Option<u64>,
    shards: usize,
    memory_limit: u64,
) -> (usize, &'static str) {
    let per = KERNEL_BYTES_PER_CONNECTION + USER_BYTES_PER_CONNECTION;
    let by_memory =
        u128::from(memory_limit) * u128::from(100 - QUEUE_CEILING_PERCENT) / 100 / u128::from(per);
    let by_nofile = nofile_hard.map(|hard| {
        hard.saturating_sub(nofile_required(0, shards))
            .min(usize::MAX as u64) as u128
    });
    let (n, source) = match by_nofile {
        Some(f) if f <= by_memory => (f, "nofile"),
        _ => (by_memory, "memory"),
    };
    ((n.min(usize::MAX as u128) as usize).max(1), source)
}

/// Memory `max_connections` idle connections need, with the send-queue ceiling on top.
pub fn memory_required(max_connections: usize) -> u64 {
    let idle = max_connections as u64 * (KERNEL_BYTES_PER_CONNECTION + USER_BYTES_PER_CONNECTION);
    idle * 100 / (100 - QUEUE_CEILING_PERCENT)
}
