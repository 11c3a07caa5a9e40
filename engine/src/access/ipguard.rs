//! Per source address limits at accept: connection attempts per window, and optionally
//! concurrent connections.
//!
//! Contract: sans-IO; time is an input (ms on a monotonic clock). Addresses are keyed by
//! [`key_of`]: an IPv4 address (or IPv4-mapped IPv6) by itself, an IPv6 address by its /64
//! (one subscriber line or host usually owns a whole /64). [`IpTable::handle_attempt`] is
//! called once per accepted TCP connection and either admits it (the caller must call
//! [`IpTable::release`] with the returned ticket when it closes; the ticket is 0, nothing to
//! release, unless a concurrent limit is on) or refuses it with the time
//! until the window resets (`429` + `Retry-After`). Windows are fixed: they start at the
//! first attempt after the previous window ended. Every attempt counts, refused ones too.
//!
//! Memory is bounded whatever the traffic: a fixed number of slots (24 bytes each),
//! set-associative (8 ways per bucket, bucket chosen by a keyed hash with a per-process random
//! key, so a client cannot aim its addresses at someone else's bucket). A new address takes a
//! free or expired slot of its bucket, else evicts the idle entry (no open connection) with the
//! oldest window — counted, since it forgets that address's attempts. When all eight hold open
//! connections the attempt is admitted untracked (counted): at worst the limit fails open for
//! that address, never the memory bound. [`IpGuard`] splits the table into stripes behind
//! their own mutexes, touched once per accept and once per close, never per message.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// Slots per bucket.
const WAYS: usize = 8;
/// Independent stripes of [`IpGuard`] (each its own lock).
const STRIPES: usize = 16;

/// The table key of an address: IPv4 as `0x0000_ffff_<addr>` (a range no global IPv6 /64
/// uses), IPv6 by its /64 prefix. Never 0 for a routable address; 0 means "no ticket".
pub fn key_of(ip: IpAddr) -> u64 {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    match (v4, ip) {
        (Some(v4), _) => 0x0000_ffff_0000_0000 | u64::from(u32::from(v4)),
        (None, IpAddr::V6(v6)) => (u128::from(v6) >> 64) as u64,
        (None, IpAddr::V4(_)) => unreachable!("handled above"),
    }
}

/// Limits per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLimits {
    /// Connection attempts per window (0 = no limit).
    pub attempts: u32,
    /// Window length in ms.
    pub window_ms: u64,
    /// Concurrent connections (0 = no limit).
    pub concurrent: u32,
}

impl IpLimits {
    /// True when any limit is on.
    pub fn is_on(&self) -> bool {
        self.attempts > 0 || self.concurrent > 0
    }
}

/// What to do with an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; pass `ticket` to [`IpTable::release`] at close (0: nothing to release).
    Admit {
        /// Key to release, or 0 when the attempt was not tracked.
        ticket: u64,
    },
    /// Over the attempt limit; the window resets in `retry_after_ms`.
    TooManyAttempts {
        /// Until the window ends.
        retry_after_ms: u64,
    },
    /// Over the concurrent-connection limit.
    TooManyConcurrent,
}

/// Side effects on the table worth counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A live entry (window not over) was evicted to make room.
    pub evicted: bool,
    /// No slot could be had: the attempt was admitted without being tracked.
    pub untracked: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// 0 = free.
    key: u64,
    window_start: u64,
    attempts: u32,
    concurrent: u32,
}

/// One stripe's slots.
#[derive(Debug)]
pub struct IpTable {
    slots: Box<[Slot]>,
}

impl IpTable {
    /// A table of at least `capacity` slots (rounded up to whole buckets of 8). Zeroed memory
    /// from the allocator: pages become resident only as addresses land in them, so a
    /// 65,536-slot table costs no RSS on a host that sees few addresses.
    pub fn new(capacity: usize) -> IpTable {
        let buckets = capacity.div_ceil(WAYS).max(1);
        let n = buckets * WAYS;
        let layout = std::alloc::Layout::array::<Slot>(n).expect("table size fits in memory");
        // SAFETY: the layout is not zero-sized (n ≥ 8 slots of 24 B); all-zero bytes are a valid
        // `Slot` (plain integers: `Slot::default()`, a free slot), so every element is
        // initialized (`new_table_is_all_free_slots`); the pointer comes from the global
        // allocator with the layout of `[Slot; n]`, which is what `Box<[Slot]>` frees with.
        let slots = unsafe {
            let ptr = std::alloc::alloc_zeroed(layout).cast::<Slot>();
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
        };
        IpTable { slots }
    }

    /// Slots (memory: 24 bytes each).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn bucket(&mut self, hash: u64) -> &mut [Slot] {
        let buckets = self.slots.len() / WAYS;
        let b = (hash % buckets as u64) as usize;
        &mut self.slots[b * WAYS..(b + 1) * WAYS]
    }

    /// One connection attempt from `key` (hashed to `hash`) at `now`.
    pub fn handle_attempt(
        &mut self,
        key: u64,
        hash: u64,
        now: u64,
        limits: &IpLimits,
    ) -> (Verdict, Effects) {
        let mut effects = Effects::default();
        let window = limits.window_ms.max(1);
        let expired = |s: &Slot| now.saturating_sub(s.window_start) >= window;
        let bucket = self.bucket(hash);
        let idx = match bucket.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                let free = bucket
                    .iter()
                    .position(|s| s.key == 0 || (s.concurrent == 0 && expired(s)));
                let victim = free.or_else(|| {
                    bucket
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.concurrent == 0)
                        .min_by_key(|(_, s)| s.window_start)
                        .map(|(i, _)| i)
                });
                let Some(i) = victim else {
                    effects.untracked = true;
                    return (Verdict::Admit { ticket: 0 }, effects);
                };
                effects.evicted = free.is_none();
                bucket[i] = Slot {
                    key,
                    window_start: now,
                    attempts: 0,
                    concurrent: 0,
                };
                i
            }
        };
        let slot = &mut bucket[idx];
        if expired(slot) {
            slot.window_start = now;
            slot.attempts = 0;
        }
        slot.attempts = slot.attempts.saturating_add(1);
        if limits.attempts > 0 && slot.attempts > limits.attempts {
            let retry_after_ms = (slot.window_start + window).saturating_sub(now);
            return (Verdict::TooManyAttempts { retry_after_ms }, effects);
        }
        if limits.concurrent > 0 && slot.concurrent >= limits.concurrent {
            return (Verdict::TooManyConcurrent, effects);
        }
        // Open connections are tracked only under a concurrent limit: without one the
        // connection needs no ticket (nothing to release at close, nothing kept per connection).
        if limits.concurrent == 0 {
            return (Verdict::Admit { ticket: 0 }, effects);
        }
        slot.concurrent += 1;
        (Verdict::Admit { ticket: key }, effects)
    }

    /// A connection admitted with `ticket` (hashed to `hash`) closed.
    pub fn release(&mut self, ticket: u64, hash: u64) {
        if ticket == 0 {
            return;
        }
        if let Some(s) = self.bucket(hash).iter_mut().find(|s| s.key == ticket) {
            s.concurrent = s.concurrent.saturating_sub(1);
        }
    }

    /// Entries currently holding an address.
    pub fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| s.key != 0).count()
    }
}

/// The process-wide guard: [`IpTable`] stripes behind mutexes, the limits, the hash key.
#[derive(Debug)]
pub struct IpGuard {
    limits: IpLimits,
    exempt_loopback: bool,
    hasher: std::collections::hash_map::RandomState,
    stripes: Box<[Mutex<IpTable>]>,
}

impl IpGuard {
    /// A guard with `capacity` slots in all (at least one bucket per stripe).
    pub fn new(limits: IpLimits, exempt_loopback: bool, capacity: usize) -> IpGuard {
        let per_stripe = capacity.div_ceil(STRIPES);
        let stripes = if limits.is_on() {
            (0..STRIPES)
                .map(|_| Mutex::new(IpTable::new(per_stripe)))
                .collect()
        } else {
            Box::default()
        };
        IpGuard {
            limits,
            exempt_loopback,
            hasher: Default::default(),
            stripes,
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> IpLimits {
        self.limits
    }

    /// Slots over every stripe (0 when no limit is on).
    pub fn capacity(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().map_or(0, |t| t.capacity()))
            .sum()
    }

    fn stripe(&self, key: u64) -> (&Mutex<IpTable>, u64) {
        let hash = self.hasher.hash_one(key);
        let stripe = &self.stripes[(hash as usize) % self.stripes.len()];
        (stripe, hash / STRIPES as u64)
    }

    /// One accepted connection from `peer` at `now` (ms).
    pub fn handle_attempt(&self, peer: IpAddr, now: u64) -> (Verdict, Effects) {
        if !self.limits.is_on() || (self.exempt_loopback && super::trust::is_loopback(peer)) {
            return (Verdict::Admit { ticket: 0 }, Effects::default());
        }
        let key = key_of(peer);
        let (stripe, hash) = self.stripe(key);
        // A poisoned stripe (a panic while held) fails open rather than taking accept down.
        match stripe.lock() {
            Ok(mut t) => t.handle_attempt(key, hash, now, &self.limits),
            Err(_) => (Verdict::Admit { ticket: 0 }, Effects::default()),
        }
    }

    /// A connection admitted with `ticket` closed.
    pub fn release(&self, ticket: u64) {
        if ticket == 0 || self.stripes.is_empty() {
            return;
        }
        let (stripe, hash) = self.stripe(ticket);
        if let Ok(mut t) = stripe.lock() {
            t.release(ticket, hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: IpLimits = IpLimits {
        attempts: 3,
        window_ms: 1000,
        concurrent: 0,
    };

    fn admit(v: Verdict) -> u64 {
        match v {
            Verdict::Admit { ticket } => ticket,
            other => panic!("refused: {other:?}"),
        }
    }

    #[test]
    fn new_table_is_all_free_slots() {
        let t = IpTable::new(100);
        assert_eq!(t.capacity(), 104, "whole buckets");
        assert!(t.slots.iter().all(|s| {
            let d = Slot::default();
            (s.key, s.window_start, s.attempts, s.concurrent)
                == (d.key, d.window_start, d.attempts, d.concurrent)
        }));
        assert_eq!(t.occupied(), 0);
    }

    #[test]
    fn keys_group_ipv6_by_64_and_keep_ipv4_apart() {
        let k = |s: &str| key_of(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("10.1.2.3"), k("::ffff:10.1.2.3"));
        assert_ne!(k("10.1.2.3"), k("10.1.2.4"));
        assert_ne!(k("10.1.2.3"), 0);
        assert_ne!(k("0.0.0.0"), 0);
    }

    #[test]
    fn attempts_per_fixed_window_with_retry_after() {
        let mut t = IpTable::new(64);
        for i in 0..3 {
            admit(t.handle_attempt(7, 7, 100 + i, &L).0);
        }
        assert_eq!(
            t.handle_attempt(7, 7, 400, &L).0,
            Verdict::TooManyAttempts {
                retry_after_ms: 700
            }
        );
        admit(t.handle_attempt(8, 8, 400, &L).0);
        assert_eq!(
            t.handle_attempt(7, 7, 1099, &L).0,
            Verdict::TooManyAttempts { retry_after_ms: 1 }
        );
        admit(t.handle_attempt(7, 7, 1100, &L).0);
    }

    #[test]
    fn concurrent_limit_and_release() {
        let l = IpLimits {
            attempts: 0,
            window_ms: 1000,
            concurrent: 2,
        };
        let mut t = IpTable::new(8);
        let a = admit(t.handle_attempt(5, 5, 0, &l).0);
        let _b = admit(t.handle_attempt(5, 5, 1, &l).0);
        assert_eq!(t.handle_attempt(5, 5, 2, &l).0, Verdict::TooManyConcurrent);
        t.release(a, 5);
        admit(t.handle_attempt(5, 5, 3, &l).0);
        t.release(0, 5); // untracked tickets release nothing
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_addresses() {
        let mut t = IpTable::new(64);
        let mut evicted = 0;
        for key in 1..=100_000u64 {
            let hash = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (v, e) = t.handle_attempt(key, hash, key, &L);
            // Each connection closes before the next address arrives.
            t.release(admit(v), hash);
            evicted += u32::from(e.evicted);
            assert!(!e.untracked);
        }
        assert_eq!(t.capacity(), 64);
        assert!(t.occupied() <= 64);
        assert!(evicted > 99_000, "{evicted}");
    }

    #[test]
    fn entries_with_open_connections_are_never_evicted() {
        const L: IpLimits = IpLimits {
            concurrent: 100,
            ..super::tests::L
        };
        let mut t = IpTable::new(8); // one bucket
        for key in 1..=8u64 {
            admit(t.handle_attempt(key, 0, 0, &L).0);
        }
        // All eight hold a connection: a ninth address is admitted untracked.
        let (v, e) = t.handle_attempt(9, 0, 5000, &L);
        assert_eq!((v, e.untracked), (Verdict::Admit { ticket: 0 }, true));
        // One closes and its window is over: its slot is reused without an eviction.
        t.release(3, 0);
        let (v, e) = t.handle_attempt(9, 0, 5000, &L);
        assert_eq!((v, e), (Verdict::Admit { ticket: 9 }, Effects::default()));
        // Address 3 is forgotten; 1..=8 minus 3 still counted.
        t.release(1, 0);
        t.release(2, 0);
        let (_, e) = t.handle_attempt(10, 0, 5001, &L);
        assert!(!e.evicted && !e.untracked, "expired idle slot reused");
    }

    #[test]
    fn idle_live_entry_is_evicted_oldest_first_and_counted() {
        let mut t = IpTable::new(8);
        for key in 1..=8u64 {
            let ticket = admit(t.handle_attempt(key, 0, key * 10, &L).0);
            t.release(ticket, 0);
        }
        let (_, e) = t.handle_attempt(99, 0, 100, &L);
        assert!(e.evicted);
        // Key 1 (oldest window) was the victim: it starts over.
        let (_, e) = t.handle_attempt(1, 0, 101, &L);
        assert!(e.evicted);
    }

    #[test]
    fn guard_exempts_loopback_and_shares_across_threads() {
        let g = std::sync::Arc::new(IpGuard::new(L, true, 1024));
        assert!(g.capacity() >= 1024);
        for _ in 0..100 {
            assert_eq!(
                g.handle_attempt("127.0.0.1".parse().unwrap(), 0).0,
                Verdict::Admit { ticket: 0 }
            );
        }
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    matches!(g.handle_attempt(peer, 0).0, Verdict::Admit { .. })
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .filter(|_| true)
            .map(|t| t.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(admitted, 3);
        assert!(matches!(
            g.handle_attempt(peer, 1).0,
            Verdict::TooManyAttempts { .. }
        ));
        let off = IpGuard::new(
            IpLimits {
                attempts: 0,
                window_ms: 1,
                concurrent: 0,
            },
            false,
            1024,
        );
        assert_eq!(off.capacity(), 0, "no table without limits");
        assert_eq!(off.handle_attempt(peer, 0).0, Verdict::Admit { ticket: 0 });
    }
}
