//! The queue ledger against the allocator: what `Ledger::retained` charges for queued frames
//! matches, within 10%, what a counting global allocator (jemalloc, the binary's allocator,
//! measured by usable size) sees allocated for them, over randomized mixes of frame sizes
//! (pong-sized to max-message-sized), shared and own frames, subscriber counts and partial
//! writes.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use shardcast::flow::queue::{Ledger, SendQueue};
use shardcast_proto::{encode_frame, OpCode};
use tikv_jemallocator::Jemalloc;

/// jemalloc, counting the usable bytes this thread has allocated and not freed.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

// SAFETY: every call is forwarded to jemalloc unchanged; the counter only reads the usable
// size of pointers jemalloc returned (before they are freed).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { Jemalloc.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` was just returned by jemalloc.
            count(unsafe { tikv_jemallocator::usable_size(p) } as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live (the caller frees it now) and came from jemalloc.
        count(-(unsafe { tikv_jemallocator::usable_size(ptr) } as isize));
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live and came from jemalloc.
        let old = unsafe { tikv_jemallocator::usable_size(ptr) } as isize;
        // SAFETY: forwarded unchanged.
        let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // SAFETY: `p` was just returned by jemalloc.
            count(unsafe { tikv_jemallocator::usable_size(p) } as isize - old);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// xorshift64: no allocation, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A frame payload size: mostly small (pongs, ticks), sometimes large, now and then near
    /// the 1 MiB limit.
    fn size(&mut self) -> usize {
        match self.below(10) {
            0..=3 => self.below(16) as usize,
            4..=7 => 16 + self.below(2000) as usize,
            8 => 2000 + self.below(64 << 10) as usize,
            _ => (1 << 20) - self.below(4096) as usize,
        }
    }
}

/// One randomized run: `subs` queues, `steps` operations; returns the worst relative error
/// seen at a checkpoint (with at least 4 KiB charged).
fn run(seed: u64, subs: usize, steps: usize) -> f64 {
    let ledger = Rc::new(Ledger::default());
    let topic: Arc<str> = Arc::from("t");
    let mut queues: Vec<SendQueue> = (0..subs).map(|_| SendQueue::new()).collect();
    let mut rng = Rng(seed);
    // Queues hold at least their empty floor once used; prime them outside the measurement.
    for q in &mut queues {
        q.push(ledger.frame(encode_frame(OpCode::Binary, b"x"), None, None));
        let n = q.len_bytes();
        q.advance(n);
    }
    assert_eq!(ledger.retained(), 0);
    let base = live();
    let mut worst: f64 = 0.0;
    for step in 0..steps {
        match rng.below(10) {
            // A published frame to a random subset (shared buffer, one wrapper).
            0..=3 => {
                let payload = vec![7u8; rng.size()];
                let encoded = encode_frame(OpCode::Binary, &payload);
                drop(payload);
                let f = ledger.shared_frame(encoded.clone(), Some(topic.clone()), None);
                drop(encoded); // the envelope's copy goes; the buffer stays shared
                let every = 1 + rng.below(4) as usize;
                for (i, q) in queues.iter_mut().enumerate() {
                    if i % every == 0 {
                        q.push(f.clone());
                    }
                }
            }
            // A connection's own frame (reply, echo) or pong.
            4..=5 => {
                let i = rng.below(subs as u64) as usize;
                let payload = vec![1u8; rng.size().min(125 * (rng.below(2) as usize + 1))];
                if rng.below(2) == 0 {
                    let f = ledger.frame(
                        encode_frame(OpCode::Pong, &payload[..payload.len().min(125)]),
                        None,
                        None,
                    );
                    queues[i].push_pong(f);
                } else {
                    let f = ledger.frame(encode_frame(OpCode::Text, &payload), None, None);
                    queues[i].push(f);
                }
            }
            // Partial and whole writes, and now and then the shard's tick trimming a queue.
            6..=8 => {
                let i = rng.below(subs as u64) as usize;
                let q = &mut queues[i];
                let n = rng.below(q.len_bytes() as u64 + 1) as usize;
                q.advance(n);
                if q.spare() && rng.below(2) == 0 {
                    q.trim(&ledger);
                }
            }
            // Drop-oldest / conflate, or an eviction's clear.
            _ => {
                let i = rng.below(subs as u64) as usize;
                if rng.below(3) == 0 {
                    queues[i].clear_unstarted();
                } else {
                    queues[i].keep_newest("t", rng.below(3) as usize);
                }
            }
        }
        if step % 16 == 0 {
            let charged = ledger.retained() as f64;
            let real = (live() - base) as f64;
            if charged >= 4096.0 {
                let err = (charged - real).abs() / real;
                worst = worst.max(err);
                assert!(
                    err <= 0.10,
                    "seed {seed}, {subs} queues, step {step}: ledger {charged} vs allocated {real} ({:.1}%)",
                    err * 100.0
                );
            }
        }
    }
    for q in &mut queues {
        q.clear();
        // A drained queue keeps its entry array until trimmed (the shard does it on its tick).
        q.trim(&ledger);
    }
    assert_eq!(ledger.retained(), 0);
    assert!(
        (live() - base).abs() < 4096,
        "everything charged was freed: {} left",
        live() - base
    );
    worst
}

#[test]
fn ledger_matches_the_allocator_within_ten_percent() {
    let mut worst: f64 = 0.0;
    for (seed, subs) in [(1, 1), (2, 3), (3, 10), (4, 50), (5, 200), (6, 1000)] {
        worst = worst.max(run(0x9E37_79B9_7F4A_7C15 ^ seed, subs, 3000));
    }
    println!("worst ledger error: {:.2}%", worst * 100.0);
}
