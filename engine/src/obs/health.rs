//! The overload rule, one home: a shard whose retained bytes (queued frames plus its mesh
//! backlog) are above [`OVERLOAD_PCT`] of its ceiling share is overloaded. `/health` reports it
//! (503) and the NATS bridge stops pulling messages for that shard.

/// Above this percentage of its ceiling share a shard is overloaded.
pub const OVERLOAD_PCT: u64 = 90;

/// True if `retained` bytes are over [`OVERLOAD_PCT`] of `ceiling` (never while the ceiling is
/// unknown, 0).
pub fn overloaded(retained: u64, ceiling: u64) -> bool {
    // u128: retained × 100 cannot overflow for any u64 byte count.
    ceiling > 0 && u128::from(retained) * 100 > u128::from(ceiling) * u128::from(OVERLOAD_PCT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_ninety_percent() {
        assert!(!overloaded(900, 1000));
        assert!(overloaded(901, 1000));
        assert!(!overloaded(u64::MAX, 0), "no ceiling known yet");
        assert!(overloaded(u64::MAX, u64::MAX / 2));
    }
}
