//! Epochs: the name of one numbering of a topic.
//!
//! Contract: an `(topic, epoch, seq)` triple names at most one message, ever. An epoch is 64
//! bits, written as exactly 16 lowercase hex digits. A host draws a random seed at start; a
//! home shard's [`EpochSource`] derives epochs from it with a generation counter it advances
//! whenever a topic's numbering must restart within the process (the topic's state was
//! dropped and re-created, a change of origin, the [`MAX_SEQ`](super::MAX_SEQ) limit). The
//! derivation is a bijection of `seed + generation` (SplitMix64's finalizer), so within one
//! process two generations never share an epoch, and across processes and hosts a collision
//! needs two random 64-bit seeds to land within a few generations of each other.
//!
//! Most topics share the current generation's epoch, so a client resuming many topics usually
//! names one epoch (`&epoch=`) for all of them.

use std::fmt;

/// One numbering of a topic (16 lowercase hex digits on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

/// Why a string is not an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEpoch;

impl fmt::Display for BadEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an epoch is 16 hex digits")
    }
}

impl Epoch {
    /// The epoch with this value.
    pub const fn from_u64(v: u64) -> Epoch {
        Epoch(v)
    }

    /// Its value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Parse exactly 16 hex digits (either case; written back in lowercase).
    pub fn parse(s: &str) -> Result<Epoch, BadEpoch> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadEpoch);
        }
        u64::from_str_radix(s, 16).map(Epoch).map_err(|_| BadEpoch)
    }

    /// The 16 lowercase hex digits.
    pub fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).unwrap_or("?"))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// SplitMix64's finalizer: a bijection on u64 that scatters consecutive inputs.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A home shard's supply of epochs: the host's seed and a generation counter.
#[derive(Clone, Debug)]
pub struct EpochSource {
    seed: u64,
    generation: u64,
}

impl EpochSource {
    /// Epochs derived from `seed` (the same seed on every shard of a host: topics created in
    /// the same generation share an epoch whichever shard is their home).
    pub fn new(seed: u64) -> EpochSource {
        EpochSource {
            seed,
            generation: 0,
        }
    }

    /// The current generation's epoch.
    pub fn current(&self) -> Epoch {
        Epoch(mix(self.seed.wrapping_add(self.generation)))
    }

    /// Start a new generation and return its epoch (never returned before by this source).
    pub fn advance(&mut self) -> Epoch {
        self.generation += 1;
        self.current()
    }

    /// How many times [`advance`](Self::advance) was called.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A fresh random seed for this process: std's `RandomState` keys come from the OS; mixed with
/// the pid and the wall clock so even a platform without OS randomness differs per start.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(nanos);
    h.finish()
}

/// The process's seed, drawn once ([`random_seed`]) and shared by every shard, so the topics
/// of a host share their epoch until something restarts a numbering.
pub fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(random_seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hex_round_trip() {
        for v in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            let e = Epoch::from_u64(v);
            let s = e.to_string();
            assert_eq!(s.len(), 16);
            assert_eq!(Epoch::parse(&s), Ok(e));
            assert_eq!(Epoch::parse(&s.to_uppercase()), Ok(e));
        }
        assert_eq!(Epoch::from_u64(0xab).to_string(), "00000000000000ab");
        for bad in [
            "",
            "abc",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "+123456789abcdef",
        ] {
            assert_eq!(Epoch::parse(bad), Err(BadEpoch), "{bad:?}");
        }
    }

    #[test]
    fn generations_never_repeat_and_shards_agree() {
        let mut a = EpochSource::new(42);
        let b = EpochSource::new(42);
        assert_eq!(a.current(), b.current(), "same seed, same first epoch");
        let mut seen = HashSet::new();
        seen.insert(a.current());
        for _ in 0..10_000 {
            assert!(seen.insert(a.advance()), "a generation repeated an epoch");
        }
        assert_eq!(a.generation(), 10_000);
        assert_ne!(EpochSource::new(43).current(), b.current());
    }

    #[test]
    fn seeds_differ() {
        let s: HashSet<u64> = (0..64).map(|_| random_seed()).collect();
        assert_eq!(s.len(), 64);
    }
}
