//! Deep history: the part of a topic's numbering older than the home shard's ring, read back
//! from a JetStream stream that captured the topic's NATS subject (docs/CONTINUITY.md, "Deep
//! history").
//!
//! Sans-IO: what a fetch asks for ([`Fetch`]), what comes back ([`Fetched`]), how the bridge
//! finds where the range starts in the stream ([`Bisect`]) and which stream messages it keeps
//! ([`Collect`]). The I/O (JetStream requests on the bridge's tokio runtime) is in
//! `bridge/deep.rs`; the connection's shard applies the result with
//! [`Resume::handle_deep`](super::resume::Resume::handle_deep).
//!
//! Why a bisection: a subject's messages sit in the stream in publishing order, interleaved
//! with every other subject's, so the stream sequence of the message numbered `first` is not
//! computable. Within one epoch the topic's numbers grow with the stream sequence (one origin,
//! one NATS connection, published in number order), so "the subject's first message at or
//! after stream sequence S is numbered ≥ `first`" is monotone in S, and a binary search over
//! the stream's sequences finds the start in O(log n) single-message reads. Messages of other
//! epochs (a previous numbering of the topic) and unnumbered ones (external publishers) come
//! before the current epoch's in the stream: they count as "before".

use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::MessageKind;

use super::resume::Replayed;
use super::{Epoch, Position, Seq};

/// A connection's shard → the bridge: fetch `first..=last` of `epoch` of `topic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The pending subscription's ticket (echoed in the result).
    pub ticket: u64,
    /// The shard that asked (where the result goes).
    pub shard: usize,
    /// The topic.
    pub topic: Arc<str>,
    /// The numbering.
    pub epoch: Epoch,
    /// First number wanted.
    pub first: Seq,
    /// Last number wanted.
    pub last: Seq,
    /// Most messages in the result (the replay chunk bound).
    pub max_messages: usize,
    /// Most payload bytes in the result (at least one message is always kept).
    pub max_bytes: usize,
}

/// Why a fetch returned nothing (the client is then told `trimmed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// JetStream did not answer within the fetch timeout.
    Timeout,
    /// No JetStream, no stream, or an error from it.
    Unavailable,
}

impl Failure {
    /// The name in /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unavailable => "unavailable",
        }
    }
}

/// The bridge → the connection's shard: what a [`Fetch`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The fetch's ticket.
    pub ticket: u64,
    /// Messages numbered within the range, ascending (any subset), or why there are none.
    pub result: Result<Vec<Replayed>, Failure>,
}

impl Fetched {
    /// Payload bytes it carries (its mesh charge).
    pub fn payload_bytes(&self) -> usize {
        self.result
            .as_ref()
            .map_or(0, |v| v.iter().map(|r| r.payload.len()).sum())
    }
}

/// Where a stream message stands relative to the start of the wanted range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Before it: an older number, another epoch, or no number.
    Before,
    /// At or after the range's first number (same epoch).
    AtOrAfter,
}

/// Classify a message carrying `numbering` against `(epoch, first)`.
pub fn classify(numbering: Option<Position>, epoch: Epoch, first: Seq) -> Probe {
    match numbering {
        Some(p) if p.epoch == epoch && p.seq >= first => Probe::AtOrAfter,
        _ => Probe::Before,
    }
}

/// A fetch found nothing of its range: true when the topic's last stored message (`stored`)
/// is of the range's epoch and older than the range, i.e. the stream has not stored the range
/// yet (it is behind the host that asked) rather than dropped it.
pub fn stream_behind(stored: Option<Position>, epoch: Epoch, first: Seq) -> bool {
    stored.is_some_and(|p| p.epoch == epoch && p.seq < first)
}

/// Binary search for the smallest stream sequence S whose subject's next message (the first at
/// stream sequence ≥ S) is at or after the range, or absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bisect {
    lo: u64,
    hi: u64,
    /// Probe `lo` first (a hint said the range starts right there).
    eager: bool,
}

impl Bisect {
    /// Search the stream's sequences `first_seq..=last_seq` (its current state).
    pub fn new(first_seq: u64, last_seq: u64) -> Bisect {
        Bisect {
            lo: first_seq,
            hi: last_seq.saturating_add(1).max(first_seq),
            eager: false,
        }
    }

    /// The same search when the previous fetch of this range's epoch ended with the number just
    /// before the range, stored at stream sequence `after`: everything up to it is before the
    /// range, and the range most likely starts with the subject's next message, which is
    /// probed first (one read instead of log₂ n for a replay's consecutive chunks).
    pub fn after(first_seq: u64, last_seq: u64, after: u64) -> Bisect {
        let mut b = Bisect::new(first_seq, last_seq);
        b.lo = b.lo.max(after.saturating_add(1)).min(b.hi);
        b.eager = b.lo < b.hi;
        b
    }

    /// The stream sequence to probe next (read the subject's next message from it), or `None`
    /// when the search is over.
    pub fn probe(&self) -> Option<u64> {
        if self.eager {
            return Some(self.lo);
        }
        (self.lo < self.hi).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    /// The probe at `at` found the subject's next message at stream sequence `found.0`,
    /// classified `found.1`, or found none.
    pub fn handle(&mut self, at: u64, found: Option<(u64, Probe)>) {
        self.eager = false;
        match found {
            None | Some((_, Probe::AtOrAfter)) => self.hi = at,
            // Everything up to the message found is before the range: skip past it.
            Some((s, Probe::Before)) => self.lo = s.max(at).saturating_add(1).min(self.hi),
        }
    }

    /// Where to start reading (the answer once [`probe`](Self::probe) is `None`).
    pub fn start(&self) -> u64 {
        self.lo
    }
}

/// Keeps the stream messages of a fetch, in stream order: those numbered in `first..=last` of
/// the epoch, contiguous or not (the resume keeps the complete run), bounded by the chunk
/// limits.
#[derive(Debug)]
pub struct Collect {
    epoch: Epoch,
    first: Seq,
    last: Seq,
    max_messages: usize,
    max_bytes: usize,
    bytes: usize,
    got: Vec<Replayed>,
}

/// Whether to keep reading after [`Collect::offer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next message.
    More,
    /// The range is complete or a bound is reached.
    Done,
}

impl Collect {
    /// Start collecting for `fetch`.
    pub fn new(fetch: &Fetch) -> Collect {
        Collect {
            epoch: fetch.epoch,
            first: fetch.first,
            last: fetch.last,
            max_messages: fetch.max_messages.max(1),
            max_bytes: fetch.max_bytes,
            bytes: 0,
            got: Vec::new(),
        }
    }

    /// Messages kept so far.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    /// True when nothing was kept yet.
    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    /// The next stream message of the subject: its numbering, kind and payload.
    pub fn offer(
        &mut self,
        numbering: Option<Position>,
        kind: MessageKind,
        payload: Bytes,
    ) -> Flow {
        let Some(p) = numbering.filter(|p| p.epoch == self.epoch) else {
            return Flow::More; // another numbering of the topic, or an external publisher's
        };
        if p.seq > self.last {
            return Flow::Done;
        }
        // Below the range, or not above the last kept (a duplicate in the stream).
        if p.seq < self.first || self.got.last().is_some_and(|r| r.seq >= p.seq) {
            return Flow::More;
        }
        if !self.got.is_empty() && self.bytes + payload.len() > self.max_bytes {
            return Flow::Done;
        }
        self.bytes += payload.len();
        self.got.push(Replayed {
            seq: p.seq,
            kind,
            payload,
        });
        if self.got.len() >= self.max_messages || p.seq == self.last {
            Flow::Done
        } else {
            Flow::More
        }
    }

    /// What was kept.
    pub fn finish(self) -> Vec<Replayed> {
        self.got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch::from_u64(0xe);

    fn fetch(first: Seq, last: Seq, max_messages: usize, max_bytes: usize) -> Fetch {
        Fetch {
            ticket: 1,
            shard: 0,
            topic: Arc::from("t"),
            epoch: E,
            first,
            last,
            max_messages,
            max_bytes,
        }
    }

    fn at(epoch: Epoch, seq: Seq) -> Option<Position> {
        Some(Position { epoch, seq })
    }

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    /// A stream: per stream sequence (from 1), the topic's message numbering or another
    /// subject's message (`None` in the outer option).
    fn search(stream: &[Option<Option<Position>>], first: Seq) -> (u64, usize) {
        let mut b = Bisect::new(1, stream.len() as u64);
        let mut probes = 0;
        while let Some(s) = b.probe() {
            probes += 1;
            let found = stream
                .iter()
                .enumerate()
                .skip(s as usize - 1)
                .find_map(|(i, m)| m.map(|n| (i as u64 + 1, classify(n, E, first))));
            b.handle(s, found);
        }
        (b.start(), probes)
    }

    #[test]
    fn bisection_finds_the_first_message_of_the_range() {
        // Stream: an older epoch's messages, unnumbered ones, then epoch E numbered 1..=500,
        // every third stream slot another subject's message.
        let old = Epoch::from_u64(0xd);
        let mut stream: Vec<Option<Option<Position>>> = Vec::new();
        for s in 1..=50 {
            stream.push(Some(at(old, s)));
            stream.push(Some(None));
        }
        let mut where_is = std::collections::HashMap::new();
        for s in 1..=500 {
            if s % 3 == 0 {
                stream.push(None);
            }
            stream.push(Some(at(E, s)));
            where_is.insert(s, stream.len() as u64);
        }
        stream.push(None);
        for first in [1, 2, 17, 250, 499, 500] {
            let (start, probes) = search(&stream, first);
            // The first message of the subject from `start` is the one numbered `first`.
            let next = stream[start as usize - 1..]
                .iter()
                .position(|m| m.is_some())
                .map(|i| start + i as u64);
            assert_eq!(next, Some(where_is[&first]), "first {first}");
            assert!(probes <= 12, "{probes} probes for {}", stream.len());
        }
        // Beyond the last number: the search ends past the subject's last message.
        let (start, _) = search(&stream, 501);
        assert!(stream[start as usize - 1..].iter().all(|m| m.is_none()));
        // An empty stream, and a stream without the subject.
        assert_eq!(search(&[], 1).0, 1);
        assert_eq!(search(&[None, None], 1).0, 1);
    }

    #[test]
    fn a_hint_from_the_previous_chunk_finds_the_start_in_one_read() {
        // Epoch E numbered 1..=100 at stream sequences 2, 4, 6, … (another subject between).
        let at_seq = |s: u64| 2 * s;
        let next = |from: u64, first: Seq| {
            let s = from.div_ceil(2).max(1);
            (s <= 100).then(|| (at_seq(s), classify(at(E, s), E, first)))
        };
        // The previous chunk ended with 40 at stream sequence 80: the next starts at 41.
        let mut b = Bisect::after(1, 201, at_seq(40));
        let mut probes = 0;
        while let Some(s) = b.probe() {
            probes += 1;
            b.handle(s, next(s, 41));
        }
        assert_eq!((b.start(), probes), (81, 1));
        // A stale hint (the range starts later than it says): still found, by bisection.
        let mut b = Bisect::after(1, 201, at_seq(10));
        while let Some(s) = b.probe() {
            b.handle(s, next(s, 41));
        }
        assert_eq!(next(b.start(), 41).map(|(s, _)| s), Some(at_seq(41)));
        // A hint past the stream's end: nothing to search.
        assert_eq!(Bisect::after(1, 201, 500).probe(), None);
    }

    #[test]
    fn an_empty_fetch_waits_only_for_a_stream_that_is_behind() {
        assert!(
            stream_behind(at(E, 9), E, 10),
            "stored up to 9, the range starts at 10"
        );
        assert!(
            !stream_behind(at(E, 50), E, 10),
            "stored past the range: it was dropped"
        );
        assert!(
            !stream_behind(at(Epoch::from_u64(1), 5), E, 10),
            "another numbering"
        );
        assert!(!stream_behind(None, E, 10), "nothing stored of the topic");
    }

    #[test]
    fn collect_keeps_the_range_of_the_epoch_within_the_bounds() {
        let mut c = Collect::new(&fetch(10, 20, 100, 1 << 20));
        let other = Epoch::from_u64(1);
        assert_eq!(c.offer(at(E, 9), MessageKind::Text, msg(1)), Flow::More);
        assert_eq!(
            c.offer(at(other, 10), MessageKind::Text, msg(1)),
            Flow::More
        );
        assert_eq!(c.offer(None, MessageKind::Text, msg(1)), Flow::More);
        for s in 10..20 {
            assert_eq!(c.offer(at(E, s), MessageKind::Binary, msg(1)), Flow::More);
        }
        // A duplicate in the stream is skipped.
        assert_eq!(c.offer(at(E, 19), MessageKind::Binary, msg(1)), Flow::More);
        assert_eq!(c.offer(at(E, 20), MessageKind::Binary, msg(1)), Flow::Done);
        let got = c.finish();
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (10..=20).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|r| r.kind == MessageKind::Binary));
        // Past the range: done without keeping it.
        let mut c = Collect::new(&fetch(10, 20, 100, 1 << 20));
        assert_eq!(c.offer(at(E, 21), MessageKind::Text, msg(1)), Flow::Done);
        assert!(c.is_empty());
    }

    #[test]
    fn collect_stops_at_the_chunk_bounds_but_always_keeps_one() {
        let mut c = Collect::new(&fetch(1, 100, 3, 1 << 20));
        for s in 1..=2 {
            assert_eq!(c.offer(at(E, s), MessageKind::Text, msg(10)), Flow::More);
        }
        assert_eq!(c.offer(at(E, 3), MessageKind::Text, msg(10)), Flow::Done);
        assert_eq!(c.len(), 3);
        let mut c = Collect::new(&fetch(1, 100, 100, 25));
        assert_eq!(c.offer(at(E, 1), MessageKind::Text, msg(100)), Flow::More);
        assert_eq!(c.len(), 1, "one message even over the byte bound");
        assert_eq!(c.offer(at(E, 2), MessageKind::Text, msg(1)), Flow::Done);
        assert_eq!(c.len(), 1);
        let mut c = Collect::new(&fetch(1, 100, 100, 25));
        for s in 1..=2 {
            assert_eq!(c.offer(at(E, s), MessageKind::Text, msg(10)), Flow::More);
        }
        assert_eq!(c.offer(at(E, 3), MessageKind::Text, msg(10)), Flow::Done);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_hole_in_the_stream_is_kept_for_the_resume_to_judge() {
        // The origin failed to publish 13 (its NATS buffer was full): the fetch returns what
        // the stream has; `Resume::handle_deep` keeps the run that ends it and says `trimmed`.
        let mut c = Collect::new(&fetch(10, 20, 100, 1 << 20));
        for s in (10..=20).filter(|&s| s != 13) {
            c.offer(at(E, s), MessageKind::Text, msg(1));
        }
        let got = c.finish();
        assert_eq!(got.len(), 10);
        let f = Fetched {
            ticket: 1,
            result: Ok(got),
        };
        assert_eq!(f.payload_bytes(), 10);
        assert_eq!(Failure::Timeout.name(), "timeout");
    }
}
