//! Per-connection send queue of shared frames, counted in logical unsent bytes.
//!
//! Frames are `Bytes` clones of a frame encoded once per message; the queue never copies
//! payloads. After a partial write the head frame is re-sliced (`Bytes::slice`, no copy), so
//! `len_bytes` is always exactly what is still to be written.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// FIFO of frames waiting to be written to one socket.
#[derive(Debug, Default)]
pub struct SendQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl SendQueue {
    /// Empty queue (allocates nothing until the first push).
    pub const fn new() -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Append a frame; empty frames are ignored (nothing to write).
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Remove the head frame (possibly partially written: the rest of it).
    pub fn pop(&mut self) -> Option<Bytes> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.len();
        Some(f)
    }

    /// Logical unsent bytes, including the rest of a partially written head frame.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames (or frame remainders) queued.
    pub fn len_frames(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The first frames that fit in one writev: at most `max_frames` frames and, past the first
    /// frame, at most `max_bytes` bytes in total (the first frame is always included whole so a
    /// large frame still makes progress).
    pub fn batch(&self, max_frames: usize, max_bytes: usize) -> impl Iterator<Item = &Bytes> {
        let mut total = 0usize;
        self.frames
            .iter()
            .take(max_frames)
            .enumerate()
            .take_while(move |(i, f)| {
                total += f.len();
                *i == 0 || total <= max_bytes
            })
            .map(|(_, f)| f)
    }

    /// Drop `n` written bytes from the front: whole frames are popped, a partially written
    /// head frame is advanced in place. `n` must not exceed `len_bytes`.
    pub fn advance(&mut self, mut n: usize) {
        assert!(
            n <= self.bytes,
            "advance {n} past {} queued bytes",
            self.bytes
        );
        self.bytes -= n;
        while n > 0 {
            let head = self.frames.front_mut().expect("bytes accounted for");
            if n >= head.len() {
                n -= head.len();
                self.frames.pop_front();
            } else {
                head.advance(n);
                n = 0;
            }
        }
    }

    /// Drop everything queued.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(frames: &[&'static [u8]]) -> SendQueue {
        let mut q = SendQueue::new();
        for f in frames {
            q.push(Bytes::from_static(f));
        }
        q
    }

    #[test]
    fn push_pop_accounting() {
        let mut s = q(&[b"abc", b"", b"de"]);
        assert_eq!(
            (s.len_bytes(), s.len_frames()),
            (5, 2),
            "empty frame ignored"
        );
        assert_eq!(s.pop().unwrap(), &b"abc"[..]);
        assert_eq!(s.len_bytes(), 2);
        assert_eq!(s.pop().unwrap(), &b"de"[..]);
        assert!(s.pop().is_none());
        assert_eq!(s.len_bytes(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn partial_writes_reslice_without_copy() {
        let shared = Bytes::from_static(b"hello");
        let mut s = SendQueue::new();
        s.push(shared.clone());
        s.push(Bytes::from_static(b"world"));
        s.advance(2);
        assert_eq!(s.len_bytes(), 8);
        let head = s.batch(1, usize::MAX).next().unwrap().clone();
        assert_eq!(head, &b"llo"[..]);
        assert_eq!(head.as_ptr(), shared[2..].as_ptr(), "same memory, no copy");
        s.advance(3);
        assert_eq!((s.len_bytes(), s.len_frames()), (5, 1));
        s.advance(4);
        assert_eq!(s.pop().unwrap(), &b"d"[..]);
        assert_eq!(s.len_bytes(), 0);
        s.push(Bytes::from_static(b"xy"));
        s.advance(0);
        assert_eq!(s.len_bytes(), 2);
        s.advance(2);
        assert!(s.is_empty());
        assert_eq!(s.len_bytes(), 0);
    }

    #[test]
    fn advance_across_many_frames() {
        let mut s = q(&[b"a", b"bb", b"ccc", b"dddd"]);
        s.advance(4);
        assert_eq!(s.len_bytes(), 6);
        let rest: Vec<&[u8]> = s.batch(10, usize::MAX).map(|b| &b[..]).collect();
        assert_eq!(rest, vec![&b"cc"[..], &b"dddd"[..]]);
    }

    #[test]
    #[should_panic(expected = "advance")]
    fn advance_past_end_panics() {
        q(&[b"ab"]).advance(3);
    }

    #[test]
    fn batch_limits() {
        let s = q(&[b"aaaa", b"bb", b"cc", b"d"]);
        let lens = |fr: usize, by: usize| s.batch(fr, by).map(|b| b.len()).collect::<Vec<_>>();
        assert_eq!(lens(2, usize::MAX), vec![4, 2]);
        assert_eq!(lens(10, 6), vec![4, 2]);
        assert_eq!(lens(10, 8), vec![4, 2, 2]);
        assert_eq!(lens(10, 1), vec![4], "first frame always whole");
        assert_eq!(lens(0, 100), Vec::<usize>::new());
        assert_eq!(s.len_bytes(), 9, "batch does not consume");
    }

    #[test]
    fn randomized_accounting_matches_model() {
        let mut s = SendQueue::new();
        let mut model: Vec<u8> = Vec::new();
        let mut x: u32 = 12345;
        let mut next = |m: u32| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) % m
        };
        let mut counter = 0u8;
        for _ in 0..5000 {
            if next(2) == 0 {
                let len = next(20) as usize;
                let frame: Vec<u8> = (0..len)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                model.extend_from_slice(&frame);
                s.push(Bytes::from(frame));
            } else {
                let n = next(model.len() as u32 + 1) as usize;
                s.advance(n);
                model.drain(..n);
            }
            assert_eq!(s.len_bytes(), model.len());
            let flat: Vec<u8> = s
                .batch(usize::MAX, usize::MAX)
                .flat_map(|b| b.iter().copied())
                .collect();
            assert_eq!(flat, model);
        }
    }
}
