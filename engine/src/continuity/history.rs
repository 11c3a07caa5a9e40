//! A topic's history: the last messages, bounded by count, bytes and age, looked up by `since`.
//!
//! Contract:
//! - Entries are kept in sequence order; the newest entry is always the topic's head (a
//!   message that cannot be kept, because it alone is over the byte bound, empties the ring,
//!   so the ring never has an invisible hole at its end).
//! - After every call, `len ≤ messages`, `Σ entry bytes ≤ bytes` and (after
//!   [`HistoryRing::trim_age`]) no entry is older than `age_ms`. `messages = 0` turns history
//!   off: nothing is kept.
//! - [`HistoryRing::retained_bytes`] is exact for what the ring owns: every entry's charge
//!   (the bytes its payload keeps alive, given by the caller: the whole shared frame when the
//!   payload is a slice of it) plus the ring's slot arrays at their capacity.
//! - A hole (the numbering skipped: [`Change::Lost`](super::sequence::Change)) is remembered
//!   until it leaves the ring, so a lookup never replays across it.
//! - [`HistoryRing::locate`] answers "everything after `seq`": covered (from this index to
//!   the end), trimmed (the ring starts later), or lost (a hole lies in the range: resume at
//!   the last hole).

use std::collections::VecDeque;
use std::str::FromStr;

use bytes::Bytes;
use shardcast_proto::MessageKind;

use super::Seq;
use crate::bytesize::ByteSize;
use crate::flow::policy::glob;

/// Bounds of one topic's history. `messages = 0`: off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most messages kept.
    pub messages: usize,
    /// Most bytes kept (entry charges, see [`HistoryRing::push`]).
    pub bytes: usize,
    /// Oldest message kept, in ms; 0 = no age bound.
    pub age_ms: u64,
}

impl Limits {
    /// No history.
    pub const OFF: Limits = Limits {
        messages: 0,
        bytes: 0,
        age_ms: 0,
    };

    /// The default for topics no rule matches: small, so that a client cut off for a moment
    /// resumes without loss out of the box, and bounded further by the shard's history budget.
    pub const DEFAULT: Limits = Limits {
        messages: 64,
        bytes: 64 << 10,
        age_ms: 60_000,
    };

    /// True when nothing is kept.
    pub fn is_off(&self) -> bool {
        self.messages == 0 || self.bytes == 0
    }
}

/// One `--topic-history` rule: `PATTERN=off` or `PATTERN=messages=N[,bytes=SIZE][,age_ms=MS]`
/// (unset keys take the default's value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRule {
    /// Glob over topic names (`*`, `?`), as for `topic_policy`.
    pub pattern: String,
    /// The bounds.
    pub limits: Limits,
}

impl FromStr for HistoryRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=off or PATTERN=messages=N,..."))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("{s:?}: empty pattern"));
        }
        if rest.trim() == "off" {
            return Ok(HistoryRule {
                pattern: pattern.to_owned(),
                limits: Limits::OFF,
            });
        }
        let mut limits = Limits::DEFAULT;
        for kv in rest.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{s:?}: {kv:?} is not key=value"))?;
            let v = v.trim();
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: {v:?} is not a number"))
            };
            match k.trim() {
                "messages" => limits.messages = num()? as usize,
                "bytes" => limits.bytes = v.parse::<ByteSize>()?.0 as usize,
                "age_ms" => limits.age_ms = num()?,
                other => {
                    return Err(format!(
                        "{s:?}: unknown key {other:?} (messages, bytes, age_ms)"
                    ))
                }
            }
        }
        Ok(HistoryRule {
            pattern: pattern.to_owned(),
            limits,
        })
    }
}

/// The configured rules, first match wins, else the default.
#[derive(Clone, Debug)]
pub struct HistoryRules {
    rules: Vec<HistoryRule>,
    default: Limits,
}

impl HistoryRules {
    /// Rules in order and the default bounds.
    pub fn new(rules: Vec<HistoryRule>, default: Limits) -> Self {
        HistoryRules { rules, default }
    }

    /// The bounds for `topic` (looked up once per topic, when its log is created).
    pub fn lookup(&self, topic: &str) -> Limits {
        self.rules
            .iter()
            .find(|r| glob(r.pattern.as_bytes(), topic.as_bytes()))
            .map_or(self.default, |r| r.limits)
    }
}

impl Default for HistoryRules {
    fn default() -> Self {
        HistoryRules::new(Vec::new(), Limits::DEFAULT)
    }
}

/// One kept message.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its number.
    pub seq: Seq,
    /// When it was kept (shard clock, ms).
    pub at_ms: u64,
    /// Text or binary.
    pub kind: MessageKind,
    /// The published payload (typically a slice of the shared frame: no copy).
    pub payload: Bytes,
    /// Bytes this entry keeps alive (≥ the payload's length).
    charge: usize,
}

impl Entry {
    /// Bytes this entry keeps alive.
    pub fn charge(&self) -> usize {
        self.charge
    }
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Everything after the asked number is here, from this index to the end.
    Covered(usize),
    /// The ring does not reach back that far (or is empty): it starts at `first`
    /// (`None`: empty).
    Trimmed(Option<Seq>),
    /// A hole lies after the asked number: the ring is complete from `resume_at` on.
    Lost {
        /// The first number after the last hole.
        resume_at: Seq,
    },
}

/// Why entries left the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries dropped by the count, byte or budget bound, or an oversized message.
    pub by_size: u64,
    /// Entries dropped by age.
    pub by_age: u64,
    /// Their charges.
    pub bytes: u64,
}

impl Trimmed {
    /// Add another tally.
    pub fn add(&mut self, o: Trimmed) {
        self.by_size += o.by_size;
        self.by_age += o.by_age;
        self.bytes += o.bytes;
    }
}

/// A topic's history ring.
#[derive(Debug, Default)]
pub struct HistoryRing {
    entries: VecDeque<Entry>,
    /// Numbers of entries whose predecessor number is missing, ascending.
    holes: VecDeque<Seq>,
    charged: usize,
}

/// Bytes one entry slot takes in the ring's array.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

impl HistoryRing {
    /// An empty ring (allocates nothing until the first push).
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest number kept.
    pub fn first(&self) -> Option<Seq> {
        self.entries.front().map(|e| e.seq)
    }

    /// The newest number kept (the head, when not empty).
    pub fn last(&self) -> Option<Seq> {
        self.entries.back().map(|e| e.seq)
    }

    /// Sum of the entries' charges.
    pub fn entry_bytes(&self) -> usize {
        self.charged
    }

    /// Exactly what the ring owns: entry charges plus both arrays at their capacity.
    pub fn retained_bytes(&self) -> usize {
        self.charged
            + self.entries.capacity() * ENTRY_BYTES
            + self.holes.capacity() * std::mem::size_of::<Seq>()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter()
    }

    /// The entries from `index` on.
    pub fn from_index(&self, index: usize) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.range(index..)
    }

    /// Keep a message numbered `seq` (greater than every kept number) arriving at `now_ms`,
    /// charged `charge` bytes (at least `payload.len()`), then enforce `limits`.
    pub fn push(
        &mut self,
        limits: &Limits,
        now_ms: u64,
        seq: Seq,
        kind: MessageKind,
        payload: Bytes,
        charge: usize,
    ) -> Trimmed {
        debug_assert!(self.last().is_none_or(|l| seq > l), "numbers must grow");
        let charge = charge.max(payload.len());
        if limits.is_off() || charge > limits.bytes {
            // Not kept: nothing older may stay either, or the ring would end before the head.
            return self.clear();
        }
        let mut t = Trimmed::default();
        // Make room by count before pushing, so a full ring never grows its array.
        while self.entries.len() >= limits.messages {
            t.add(self.pop_oldest(false));
        }
        if self.last().is_some_and(|l| seq != l + 1) {
            self.holes.push_back(seq);
        }
        self.entries.push_back(Entry {
            seq,
            at_ms: now_ms,
            kind,
            payload,
            charge,
        });
        self.charged += charge;
        while self.charged > limits.bytes {
            t.add(self.pop_oldest(false));
        }
        self.fit();
        t
    }

    /// Drop entries older than `age_ms` at `now_ms` (no-op when `age_ms` is 0).
    pub fn trim_age(&mut self, now_ms: u64, age_ms: u64) -> Trimmed {
        let mut t = Trimmed::default();
        if age_ms == 0 {
            return t;
        }
        while self
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.at_ms) > age_ms)
        {
            t.add(self.pop_oldest(true));
        }
        self.fit();
        t
    }

    /// Drop the oldest entries until at most `keep` remain (memory pressure).
    pub fn trim_to(&mut self, keep: usize) -> Trimmed {
        let mut t = Trimmed::default();
        while self.entries.len() > keep {
            t.add(self.pop_oldest(false));
        }
        self.fit();
        t
    }

    /// Drop everything (the numbering restarted, or a message could not be kept).
    pub fn clear(&mut self) -> Trimmed {
        let t = Trimmed {
            by_size: self.entries.len() as u64,
            by_age: 0,
            bytes: self.charged as u64,
        };
        self.entries = VecDeque::new();
        self.holes = VecDeque::new();
        self.charged = 0;
        t
    }

    fn pop_oldest(&mut self, by_age: bool) -> Trimmed {
        let Some(e) = self.entries.pop_front() else {
            return Trimmed::default();
        };
        self.charged -= e.charge;
        // A hole at or before the new first entry is no longer inside the ring.
        let first = self.first();
        while self
            .holes
            .front()
            .is_some_and(|&h| first.is_none_or(|f| h <= f))
        {
            self.holes.pop_front();
        }
        Trimmed {
            by_size: u64::from(!by_age),
            by_age: u64::from(by_age),
            bytes: e.charge as u64,
        }
    }

    /// Give back array space a shrunken ring no longer needs (so the charge follows the
    /// content, not its peak).
    fn fit(&mut self) {
        let (len, cap) = (self.entries.len(), self.entries.capacity());
        if cap > 16 && len * 4 < cap {
            self.entries.shrink_to(len * 2);
        }
        if self.holes.is_empty() && self.holes.capacity() > 0 {
            self.holes = VecDeque::new();
        }
    }

    /// Where "everything after `after`" starts, for a head of `head` (`after < head`).
    pub fn locate(&self, after: Seq) -> Coverage {
        let want = after + 1;
        match self.first() {
            None => return Coverage::Trimmed(None),
            Some(f) if want < f => return Coverage::Trimmed(Some(f)),
            _ => {}
        }
        if let Some(&h) = self.holes.back() {
            if h > want {
                return Coverage::Lost { resume_at: h };
            }
        }
        let i = self.entries.partition_point(|e| e.seq < want);
        match self.entries.get(i) {
            Some(e) if e.seq == want => Coverage::Covered(i),
            // `want` fell in a hole that ends at this entry (the hole list holds its number).
            Some(e) => Coverage::Lost { resume_at: e.seq },
            None => Coverage::Trimmed(self.first()),
        }
    }

    /// The first number from which the ring is complete up to its newest entry (after the
    /// last hole, else the oldest entry); `None` when empty.
    pub fn complete_from(&self) -> Option<Seq> {
        self.holes.back().copied().or_else(|| self.first())
    }

    /// The index of number `seq` if it is kept.
    pub fn index_of(&self, seq: Seq) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.seq < seq);
        (self.entries.get(i)?.seq == seq).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(messages: usize, bytes: usize, age_ms: u64) -> Limits {
        Limits {
            messages,
            bytes,
            age_ms,
        }
    }

    fn push(r: &mut HistoryRing, l: &Limits, now: u64, seq: Seq, len: usize) -> Trimmed {
        r.push(
            l,
            now,
            seq,
            MessageKind::Text,
            Bytes::from(vec![b'x'; len]),
            len,
        )
    }

    fn seqs(r: &HistoryRing) -> Vec<Seq> {
        r.entries().map(|e| e.seq).collect()
    }

    #[test]
    fn bounded_by_count_bytes_and_age() {
        let mut r = HistoryRing::new();
        let l = lim(3, 1000, 100);
        for s in 1..=5 {
            push(&mut r, &l, s * 10, s, 10);
        }
        assert_eq!(seqs(&r), [3, 4, 5]);
        let mut full = HistoryRing::new();
        for s in 1..=1000 {
            push(&mut full, &lim(64, 1 << 20, 0), 0, s, 1);
        }
        assert_eq!(
            (full.len(), full.entries.capacity()),
            (64, 64),
            "a full ring never grows"
        );
        let t = push(&mut r, &lim(10, 25, 0), 60, 6, 10);
        assert_eq!(seqs(&r), [5, 6], "bytes bound");
        assert_eq!(
            t,
            Trimmed {
                by_size: 2,
                by_age: 0,
                bytes: 20
            }
        );
        let t = r.trim_age(155, 100);
        assert_eq!(seqs(&r), [6], "5 kept at 50 is older than 100 ms at 155");
        assert_eq!(t.by_age, 1);
        assert_eq!(r.trim_age(10_000, 0), Trimmed::default(), "age 0: no bound");
        r.trim_age(161, 100);
        assert!(r.is_empty());
    }

    #[test]
    fn off_and_oversized_keep_nothing() {
        let mut r = HistoryRing::new();
        push(&mut r, &Limits::OFF, 0, 1, 10);
        assert!(r.is_empty());
        let l = lim(10, 100, 0);
        push(&mut r, &l, 0, 2, 10);
        push(&mut r, &l, 0, 3, 10);
        let t = push(&mut r, &l, 0, 4, 101);
        assert!(r.is_empty(), "the ring never ends before the head");
        assert_eq!(t.by_size, 2);
        push(&mut r, &l, 0, 5, 10);
        assert_eq!(r.locate(3), Coverage::Trimmed(Some(5)));
        assert_eq!(r.retained_bytes(), 10 + r.entries.capacity() * ENTRY_BYTES);
    }

    #[test]
    fn locate_covered_trimmed_lost() {
        let mut r = HistoryRing::new();
        let l = lim(100, 1 << 20, 0);
        assert_eq!(r.locate(0), Coverage::Trimmed(None));
        for s in [5, 6, 7, 10, 11, 15, 16] {
            push(&mut r, &l, 0, s, 1);
        }
        assert_eq!(r.locate(3), Coverage::Trimmed(Some(5)));
        assert_eq!(
            r.locate(4),
            Coverage::Lost { resume_at: 15 },
            "holes at 10 and 15 ahead"
        );
        assert_eq!(r.locate(11), Coverage::Lost { resume_at: 15 });
        assert_eq!(
            r.locate(12),
            Coverage::Lost { resume_at: 15 },
            "13 is in the hole"
        );
        assert_eq!(
            r.locate(14),
            Coverage::Covered(5),
            "15 follows 14: nothing missing"
        );
        assert_eq!(r.locate(15), Coverage::Covered(6));
        assert_eq!(r.index_of(10), Some(3));
        assert_eq!(r.index_of(9), None);
        assert_eq!(r.complete_from(), Some(15));
        // Holes leave with the entries around them.
        r.trim_to(3);
        assert_eq!(seqs(&r), [11, 15, 16]);
        assert_eq!(r.locate(10), Coverage::Lost { resume_at: 15 });
        r.trim_to(2);
        assert_eq!(r.locate(14), Coverage::Covered(0));
        assert!(
            r.holes.is_empty(),
            "a hole before the first entry is forgotten"
        );
        assert_eq!(r.complete_from(), Some(15));
        assert_eq!(HistoryRing::new().complete_from(), None);
    }

    #[test]
    fn accounting_matches_a_recount_under_random_load() {
        let mut r = HistoryRing::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut seq = 0;
        let mut now = 0;
        let mut model: VecDeque<(Seq, u64, usize)> = VecDeque::new();
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let l = lim(1 + (x % 50) as usize, 200 + (x >> 8) as usize % 2000, 500);
            now += x % 40;
            seq += 1 + u64::from(x.is_multiple_of(17));
            let len = (x >> 20) as usize % 300;
            let charge = len + (x >> 40) as usize % 16;
            let payload = Bytes::from(vec![0u8; len]);
            match round % 7 {
                6 => {
                    r.trim_age(now, l.age_ms);
                    model.retain(|&(_, at, _)| now - at <= l.age_ms);
                }
                _ => {
                    r.push(&l, now, seq, MessageKind::Binary, payload, charge);
                    if charge > l.bytes {
                        model.clear();
                    } else {
                        model.push_back((seq, now, charge));
                        while model.len() > l.messages
                            || model.iter().map(|m| m.2).sum::<usize>() > l.bytes
                        {
                            model.pop_front();
                        }
                    }
                }
            }
            let want: Vec<Seq> = model.iter().map(|m| m.0).collect();
            assert_eq!(seqs(&r), want);
            let charged: usize = model.iter().map(|m| m.2).sum();
            assert_eq!(r.entry_bytes(), charged);
            assert_eq!(
                r.retained_bytes(),
                charged + r.entries.capacity() * ENTRY_BYTES + r.holes.capacity() * 8
            );
            assert!(r.entries.capacity() <= 16 || r.entries.capacity() <= 4 * r.len().max(1) * 2);
            // Every lookup agrees with a scan of the model.
            if let (Some(&(first, ..)), Some(&(last, ..))) = (model.front(), model.back()) {
                let after = first - 1 + (x >> 33) % (last - first + 1);
                let from = model.iter().position(|m| m.0 > after).unwrap();
                let contiguous = model
                    .iter()
                    .skip(from)
                    .zip(model.iter().skip(from + 1))
                    .all(|(a, b)| b.0 == a.0 + 1);
                let got = r.locate(after);
                if after + 1 < first {
                    assert_eq!(got, Coverage::Trimmed(Some(first)));
                } else if contiguous && model[from].0 == after + 1 {
                    assert_eq!(got, Coverage::Covered(from));
                } else {
                    let Coverage::Lost { resume_at } = got else {
                        panic!("{got:?} for {after} in {want:?}");
                    };
                    // Complete from resume_at to the end, and nothing later would do.
                    let i = model.iter().position(|m| m.0 == resume_at).unwrap();
                    assert!(i > 0 && model[i - 1].0 + 1 != resume_at);
                    assert!(model
                        .iter()
                        .skip(i)
                        .zip(model.iter().skip(i + 1))
                        .all(|(a, b)| b.0 == a.0 + 1));
                }
            }
        }
    }

    #[test]
    fn rules_first_match_and_parsing() {
        let r: HistoryRule = "depth.*=messages=1000,bytes=4MiB,age_ms=120000"
            .parse()
            .unwrap();
        assert_eq!(r.limits, lim(1000, 4 << 20, 120_000));
        let off: HistoryRule = "chat.*=off".parse().unwrap();
        assert!(off.limits.is_off());
        let partial: HistoryRule = "x=messages=5".parse().unwrap();
        assert_eq!(
            partial.limits,
            Limits {
                messages: 5,
                ..Limits::DEFAULT
            }
        );
        for bad in [
            "nopattern",
            "=off",
            "a=messages",
            "a=colour=red",
            "a=messages=-1",
            "a=bytes=3X",
        ] {
            assert!(bad.parse::<HistoryRule>().is_err(), "{bad}");
        }
        let rules = HistoryRules::new(vec![off, r, partial], Limits::OFF);
        assert!(rules.lookup("chat.room1").is_off());
        assert_eq!(rules.lookup("depth.btc").messages, 1000);
        assert_eq!(rules.lookup("x").messages, 5);
        assert!(rules.lookup("trades").is_off(), "default");
        assert_eq!(HistoryRules::default().lookup("t"), Limits::DEFAULT);
    }
}
