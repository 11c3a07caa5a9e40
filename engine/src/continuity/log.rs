//! The home shard's topic logs: per topic its numbering ([`TopicSeq`]) and history
//! ([`HistoryRing`]), the shard's history budget, the age sweep and the counters for /stats.
//!
//! Contract:
//! - [`TopicLogs::append`] is the only way a message of a topic gets a number on this host
//!   (the home shard calls it for every message of the topics it owns, in the order it
//!   accepts them), and it records the message in the topic's history.
//! - [`TopicLogs::retained_bytes`] is what the table holds, charged to the shard's memory
//!   ceiling: every ring's [`retained_bytes`](HistoryRing::retained_bytes), plus per topic its
//!   name and [`LOG_BYTES`], plus the hash table's slots. It never exceeds the budget after
//!   `append` returns, except by the newest message of the appended topic while every other
//!   ring is empty (one message is always kept when its topic's bounds allow it).
//! - Over the budget, the appended topic's own oldest entries go first, then every ring is
//!   halved (oldest first) until the total is at most [`EVICT_TO_PCT`]% of the budget. The
//!   same halving is what [`TopicLogs::shrink`] does when the shard needs memory for its
//!   queues: history is a cache, connections are not evicted to keep it.
//! - A topic's log is dropped by [`TopicLogs::handle_tick`] when its history is empty, nobody
//!   on any shard subscribes to it (the caller says who is wanted) and it has been idle for
//!   `idle_ms`. The next log created after a drop takes a new epoch generation, so a
//!   re-created topic never reuses an `(epoch, seq)` of its past.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::MessageKind;

use super::epoch::EpochSource;
use super::history::{HistoryRing, HistoryRules, Limits, Trimmed};
use super::resume::{self, Answer, Ask};
use super::sequence::{Change, Source, Stamped, TopicSeq};
use super::Position;

/// Fraction of the budget an over-budget table is brought down to (in percent), so one
/// halving round makes room for many messages.
pub const EVICT_TO_PCT: usize = 80;

/// Bytes one topic's log takes besides its ring's arrays and its name.
pub const LOG_BYTES: usize = std::mem::size_of::<TopicLog>() + std::mem::size_of::<Arc<str>>();

/// Counters of one shard's continuity state (copied into /stats by the shard's tick).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ContinuityStats {
    /// Messages numbered.
    pub stamped: u64,
    /// Numbering restarts (`epoch` notices sent to live subscribers).
    pub epoch_changes: u64,
    /// Messages from NATS whose number was already delivered (dropped).
    pub duplicates: u64,
    /// Numbers that never reached this host (`lost` notices).
    pub lost: u64,
    /// History entries dropped by their topic's bounds or the budget.
    pub trimmed_size: u64,
    /// History entries dropped by age.
    pub trimmed_age: u64,
    /// Times the table went over its budget (or was asked to shrink).
    pub budget_rounds: u64,
    /// Asks answered.
    pub asks: u64,
    /// Asks answered with a resync notice.
    pub resyncs: u64,
    /// Messages handed out for replay.
    pub replayed: u64,
    /// Topic logs dropped by the idle sweep.
    pub dropped_topics: u64,
}

/// One topic's numbering and history.
#[derive(Debug)]
pub struct TopicLog {
    seq: TopicSeq,
    ring: HistoryRing,
    limits: Limits,
    touched_ms: u64,
}

impl TopicLog {
    /// Its numbering.
    pub fn seq(&self) -> &TopicSeq {
        &self.seq
    }

    /// Its history.
    pub fn ring(&self) -> &HistoryRing {
        &self.ring
    }

    /// Its history bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Settings of a home shard's table.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// History bounds per topic pattern.
    pub rules: HistoryRules,
    /// Bytes the whole table may retain (its share of the shard's ceiling).
    pub budget: usize,
    /// Handover window between origins (see `sequence`).
    pub window_ms: u64,
    /// A topic with no history and no subscriber is forgotten after this long.
    pub idle_ms: u64,
    /// Older messages can be fetched from JetStream (`Next::Deep`); offered per topic only
    /// while its numbers are its origin's (`TopicSeq::origin_numbers`).
    pub deep: bool,
}

/// What [`TopicLogs::hold`] did with an ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Serve it now.
    Serve,
    /// Held until the topic's numbering in deep history is known ([`TopicLogs::handle_head`]).
    Held {
        /// The first held ask of the topic: ask the bridge for the topic's last numbering in
        /// the stream.
        lookup: bool,
    },
}

/// A home shard's topic logs.
#[derive(Debug)]
pub struct TopicLogs {
    config: LogConfig,
    epochs: EpochSource,
    topics: HashMap<Arc<str>, TopicLog>,
    /// Σ over topics of ring bytes + name + LOG_BYTES (the map's slots are added on read).
    bytes: usize,
    /// The map's own allocation ([`map_bytes`](Self::map_bytes)), kept as its capacity changes
    /// (only an insert grows it): the budget check reads it per delivery.
    map: usize,
    /// A log was dropped since the last generation change.
    dropped: bool,
    stats: ContinuityStats,
    /// Deep history: asks waiting for a topic's numbering from the stream, with the shard each
    /// came from, in arrival order.
    held: HashMap<Arc<str>, Vec<(usize, Ask)>>,
}

impl TopicLogs {
    /// An empty table deriving epochs from `seed` (the host's, shared by its shards).
    pub fn new(config: LogConfig, seed: u64) -> Self {
        TopicLogs {
            config,
            epochs: EpochSource::new(seed),
            topics: HashMap::new(),
            bytes: 0,
            map: 0,
            dropped: false,
            stats: ContinuityStats::default(),
            held: HashMap::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ContinuityStats {
        &self.stats
    }

    /// Topics with a log.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// History entries over all topics.
    pub fn messages(&self) -> usize {
        self.topics.values().map(|l| l.ring.len()).sum()
    }

    /// A topic's log, if it has one.
    pub fn get(&self, topic: &str) -> Option<&TopicLog> {
        self.topics.get(topic)
    }

    /// Everything the table holds (see the module docs).
    pub fn retained_bytes(&self) -> usize {
        debug_assert_eq!(self.map, self.map_bytes());
        self.bytes + self.map
    }

    /// The hash table's own allocation: hashbrown keeps its capacity at 7/8 of its buckets,
    /// each one slot plus one control byte.
    fn map_bytes(&self) -> usize {
        let buckets = (self.topics.capacity() * 8).div_ceil(7);
        buckets * (std::mem::size_of::<(Arc<str>, TopicLog)>() + 1)
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.config.budget
    }

    /// Create `topic`'s log if it has none.
    fn ensure(&mut self, topic: &str, now_ms: u64) {
        if !self.topics.contains_key(topic) {
            if std::mem::take(&mut self.dropped) {
                self.epochs.advance();
            }
            let limits = self.config.rules.lookup(topic);
            self.bytes += LOG_BYTES + topic.len();
            self.topics.insert(
                Arc::from(topic),
                TopicLog {
                    seq: TopicSeq::new(&self.epochs),
                    ring: HistoryRing::new(),
                    limits,
                    touched_ms: now_ms,
                },
            );
            self.map = self.map_bytes();
        }
    }

    /// Number a message of `topic` from `source` and keep it in the topic's history.
    /// `payload` is what a replay sends (typically a slice of the shared frame) and `charge`
    /// what keeping it costs (the whole frame's length when it is a slice).
    pub fn append(
        &mut self,
        now_ms: u64,
        topic: &str,
        source: Source,
        kind: MessageKind,
        payload: Bytes,
        charge: usize,
    ) -> Stamped {
        let window = self.config.window_ms;
        self.ensure(topic, now_ms);
        let log = self.topics.get_mut(topic).expect("ensured");
        log.touched_ms = now_ms;
        let stamped = log.seq.stamp(now_ms, source, window, &mut self.epochs);
        let Stamped::Deliver(stamp) = stamped else {
            self.stats.duplicates += 1;
            return stamped;
        };
        let before = log.ring.retained_bytes();
        let mut trimmed = Trimmed::default();
        match stamp.change {
            Some(Change::Epoch) => {
                self.stats.epoch_changes += 1;
                trimmed.add(log.ring.clear());
            }
            Some(Change::Lost { first, last }) => self.stats.lost += last - first + 1,
            None => {}
        }
        trimmed.add(
            log.ring
                .push(&log.limits, now_ms, stamp.seq, kind, payload, charge),
        );
        let after = log.ring.retained_bytes();
        self.bytes = self.bytes + after - before;
        self.stats.stamped += 1;
        self.stats.trimmed_size += trimmed.by_size;
        if self.retained_bytes() > self.config.budget {
            self.over_budget(topic);
        }
        stamped
    }

    fn over_budget(&mut self, topic: &str) {
        self.stats.budget_rounds += 1;
        let target = self.config.budget / 100 * EVICT_TO_PCT;
        let map = self.map_bytes();
        if let Some(log) = self.topics.get_mut(topic) {
            let before = log.ring.retained_bytes();
            let mut t = Trimmed::default();
            while self.bytes + map + log.ring.retained_bytes() - before > target
                && log.ring.len() > 1
            {
                t.add(log.ring.trim_to(log.ring.len() - 1));
            }
            self.bytes = self.bytes + log.ring.retained_bytes() - before;
            self.stats.trimmed_size += t.by_size;
        }
        if self.retained_bytes() > target {
            self.halve_until(target);
        }
    }

    /// Free history until the table holds at most `target` bytes or no ring holds more than
    /// one entry; returns the bytes freed. For memory pressure from the shard's queues.
    pub fn shrink(&mut self, target: usize) -> usize {
        let before = self.retained_bytes();
        if before > target {
            self.stats.budget_rounds += 1;
            self.halve_until(target);
        }
        before - self.retained_bytes()
    }

    fn halve_until(&mut self, target: usize) {
        let map = self.map_bytes();
        loop {
            let mut progress = false;
            for log in self.topics.values_mut() {
                let n = log.ring.len();
                if n > 1 || (n == 1 && self.bytes + map > target) {
                    let before = log.ring.retained_bytes();
                    let t = log.ring.trim_to(n / 2);
                    self.bytes = self.bytes + log.ring.retained_bytes() - before;
                    self.stats.trimmed_size += t.by_size;
                    progress = true;
                }
            }
            if !progress || self.retained_bytes() <= target {
                return;
            }
        }
    }

    /// The shard's periodic sweep: drop aged entries, and forget idle topics nobody wants.
    /// `wanted(topic)` is true while any shard has a subscriber of the topic.
    pub fn handle_tick(&mut self, now_ms: u64, wanted: impl Fn(&str) -> bool) {
        let idle = self.config.idle_ms;
        let mut freed = 0usize;
        let mut dropped = 0u64;
        let stats = &mut self.stats;
        self.topics.retain(|name, log| {
            let before = log.ring.retained_bytes();
            let t = log.ring.trim_age(now_ms, log.limits.age_ms);
            stats.trimmed_age += t.by_age;
            freed += before - log.ring.retained_bytes();
            let forget = log.ring.is_empty()
                && now_ms.saturating_sub(log.touched_ms) >= idle
                && !wanted(name);
            if forget {
                freed += LOG_BYTES + name.len() + log.ring.retained_bytes();
                dropped += 1;
            }
            !forget
        });
        self.bytes -= freed;
        if dropped > 0 {
            self.stats.dropped_topics += dropped;
            self.dropped = true;
        }
    }

    /// Deep history: an ask from shard `from` that names another epoch than a topic whose
    /// numbering has not numbered anything here (this host has received nothing of it since it
    /// started) cannot be judged yet: the numbering may be the origin's, which the stream
    /// knows. Such asks are held (and every later ask of the topic behind them, to keep their
    /// order) until [`handle_head`](Self::handle_head).
    pub fn hold(&mut self, topic: &str, from: usize, ask: &Ask) -> Hold {
        if let Some(q) = self.held.get_mut(topic) {
            q.push((from, ask.clone()));
            return Hold::Held { lookup: false };
        }
        let Some(p) = ask.after.filter(|_| self.config.deep) else {
            return Hold::Serve;
        };
        let unjudged = match self.topics.get(topic) {
            Some(log) => log.seq.head() == 0 && !log.seq.is_adopted() && log.seq.epoch() != p.epoch,
            None => self.epochs.current() != p.epoch,
        };
        if !unjudged {
            return Hold::Serve;
        }
        self.held
            .insert(Arc::from(topic), vec![(from, ask.clone())]);
        Hold::Held { lookup: true }
    }

    /// Deep history: the stream's last message of `topic` carries `stored` (`None`: no message,
    /// no numbering, or deep history failed). Adopts it if the topic still has numbered nothing
    /// here; returns the held asks to serve now, in order.
    pub fn handle_head(
        &mut self,
        now_ms: u64,
        topic: &str,
        stored: Option<Position>,
    ) -> Vec<(usize, Ask)> {
        let held = self.held.remove(topic).unwrap_or_default();
        if let Some(p) = stored {
            self.ensure(topic, now_ms);
            let log = self.topics.get_mut(topic).expect("ensured");
            if log.seq.adopt_stored(p, now_ms) {
                self.stats.epoch_changes += 1;
            }
        }
        held
    }

    /// Answer an ask about `topic` (creating its log, so a fresh subscriber and the first
    /// message agree on the epoch).
    pub fn serve(&mut self, now_ms: u64, topic: &str, ask: &Ask) -> Answer {
        self.ensure(topic, now_ms);
        let log = self.topics.get_mut(topic).expect("ensured");
        log.touched_ms = now_ms;
        let answer = resume::serve(
            &log.seq,
            &log.ring,
            ask,
            self.config.deep && log.seq.origin_numbers(),
        );
        self.stats.asks += 1;
        self.stats.resyncs += u64::from(answer.notice.is_some_and(|n| n.resync.is_some()));
        self.stats.replayed += answer.replay.len() as u64;
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::history::HistoryRule;
    use crate::continuity::resume::Next;
    use crate::continuity::{Epoch, Position};

    fn config(budget: usize) -> LogConfig {
        LogConfig {
            rules: HistoryRules::new(
                vec!["off.*=off".parse::<HistoryRule>().unwrap()],
                Limits {
                    messages: 100,
                    bytes: 1 << 20,
                    age_ms: 1000,
                },
            ),
            budget,
            window_ms: 10_000,
            idle_ms: 5000,
            deep: false,
        }
    }

    fn text(n: usize) -> Bytes {
        Bytes::from(vec![b'a'; n])
    }

    fn append(l: &mut TopicLogs, now: u64, t: &str, n: usize) -> u64 {
        match l.append(now, t, Source::Local, MessageKind::Text, text(n), n) {
            Stamped::Deliver(s) => s.seq,
            Stamped::Duplicate => panic!(),
        }
    }

    fn recount(l: &TopicLogs) -> usize {
        l.topics
            .iter()
            .map(|(n, log)| LOG_BYTES + n.len() + log.ring.retained_bytes())
            .sum()
    }

    #[test]
    fn numbers_per_topic_and_keeps_history_by_rule() {
        let mut l = TopicLogs::new(config(1 << 30), 1);
        for i in 1..=5 {
            assert_eq!(append(&mut l, 0, "a", 10), i);
        }
        assert_eq!(append(&mut l, 0, "b", 10), 1);
        assert_eq!(append(&mut l, 0, "off.x", 10), 1);
        assert_eq!(l.get("a").unwrap().ring().len(), 5);
        assert!(l.get("off.x").unwrap().ring().is_empty());
        assert_eq!(l.topics(), 3);
        assert_eq!(l.messages(), 6);
        assert_eq!(l.bytes, recount(&l));
        assert_eq!(l.stats().stamped, 7);
    }

    #[test]
    fn budget_trims_the_pusher_then_halves_everyone() {
        let mut l = TopicLogs::new(config(40_000), 1);
        for t in 0..10 {
            for _ in 0..10 {
                append(&mut l, 0, &format!("t{t}"), 200);
            }
        }
        assert!(l.retained_bytes() <= 40_000, "{}", l.retained_bytes());
        assert_eq!(l.bytes, recount(&l));
        // A burst on one topic pushes its own history out first.
        for _ in 0..200 {
            append(&mut l, 0, "hot", 200);
            assert!(l.retained_bytes() <= 40_000);
            assert_eq!(l.bytes, recount(&l));
        }
        assert!(!l.get("hot").unwrap().ring().is_empty());
        assert!(l.stats().budget_rounds > 0);
        // Memory pressure from the queues: shrink on demand.
        let before = l.retained_bytes();
        let freed = l.shrink(before / 2);
        assert_eq!(before - freed, l.retained_bytes());
        assert!(l.retained_bytes() <= before / 2 || l.messages() <= l.topics());
        assert_eq!(l.bytes, recount(&l));
    }

    #[test]
    fn sweep_ages_and_forgets_idle_topics_with_a_new_epoch_after() {
        let mut l = TopicLogs::new(config(1 << 30), 1);
        append(&mut l, 0, "a", 10);
        append(&mut l, 0, "kept", 10);
        let epoch = l.get("a").unwrap().seq().epoch();
        l.handle_tick(500, |_| false);
        assert_eq!(l.messages(), 2, "not yet aged");
        l.handle_tick(1500, |t| t == "kept");
        assert_eq!(l.messages(), 0, "aged out");
        assert_eq!(l.topics(), 2, "not idle long enough to forget");
        l.handle_tick(6000, |t| t == "kept");
        assert_eq!(l.topics(), 1, "a forgotten; kept is wanted");
        assert_eq!(l.stats().dropped_topics, 1);
        assert_eq!(l.bytes, recount(&l));
        // Re-created: a new epoch, so (epoch, 1) never names two messages.
        assert_eq!(append(&mut l, 7000, "a", 10), 1);
        assert_ne!(l.get("a").unwrap().seq().epoch(), epoch);
        assert_eq!(l.get("kept").unwrap().seq().epoch(), epoch);
    }

    #[test]
    fn epoch_change_clears_history_and_duplicates_are_counted() {
        let mut l = TopicLogs::new(config(1 << 30), 1);
        let a = Epoch::from_u64(0xa);
        let remote = |seq| Source::Remote(Position { epoch: a, seq });
        for s in 10..15 {
            l.append(0, "t", remote(s), MessageKind::Text, text(5), 5);
        }
        assert_eq!(l.get("t").unwrap().ring().first(), Some(10));
        l.append(1, "t", remote(12), MessageKind::Text, text(5), 5);
        assert_eq!(l.stats().duplicates, 1);
        l.append(2, "t", remote(20), MessageKind::Text, text(5), 5);
        assert_eq!(l.stats().lost, 5);
        // Another origin after the window: adopted, history of the old epoch dropped.
        let b = Position {
            epoch: Epoch::from_u64(0xb),
            seq: 3,
        };
        l.append(
            20_000,
            "t",
            Source::Remote(b),
            MessageKind::Text,
            text(5),
            5,
        );
        let log = l.get("t").unwrap();
        assert_eq!((log.seq().epoch(), log.ring().first()), (b.epoch, Some(3)));
        assert_eq!(l.stats().epoch_changes, 2, "adopting a, then b");
        assert_eq!(l.bytes, recount(&l));
    }

    #[test]
    fn serve_creates_the_log_so_the_first_message_matches_the_notice() {
        let mut l = TopicLogs::new(config(1 << 30), 1);
        let ask = Ask::fresh(1, 1 << 16, 100);
        let ans = l.serve(0, "new", &ask);
        let notice = ans.notice.unwrap();
        assert_eq!((notice.seq, notice.resync), (0, None));
        assert_eq!(ans.next, Next::Live { after: 0 });
        // A drop elsewhere advances the generation; "new" keeps its epoch.
        append(&mut l, 0, "gone", 1);
        l.handle_tick(100_000, |t| t == "new");
        assert_eq!(append(&mut l, 100_001, "new", 1), 1);
        assert_eq!(l.get("new").unwrap().seq().epoch(), notice.epoch);
    }

    #[test]
    fn an_unknown_numbering_waits_for_the_stream_and_adopts_it() {
        let mut cfg = config(1 << 30);
        cfg.deep = true;
        let mut l = TopicLogs::new(cfg, 1);
        let a = Epoch::from_u64(0xa);
        let ask = |ticket, epoch, seq| Ask {
            ticket,
            after: Some(Position { epoch, seq }),
            first: true,
            max_bytes: 1 << 20,
            max_messages: 100,
        };
        // Fresh asks and asks naming this host's own epoch are served at once.
        assert_eq!(l.hold("t", 0, &Ask::fresh(1, 1 << 20, 100)), Hold::Serve);
        let own = l.epochs.current();
        assert_eq!(l.hold("t", 0, &ask(1, own, 0)), Hold::Serve);
        // Another host's epoch on a topic this host numbered nothing of: held, one lookup, and
        // every later ask of the topic queues behind it.
        assert_eq!(l.hold("t", 2, &ask(2, a, 40)), Hold::Held { lookup: true });
        assert_eq!(
            l.hold("t", 3, &Ask::fresh(3, 1 << 20, 100)),
            Hold::Held { lookup: false }
        );
        let held = l.handle_head(0, "t", Some(Position { epoch: a, seq: 90 }));
        assert_eq!(
            held.iter().map(|(f, a)| (*f, a.ticket)).collect::<Vec<_>>(),
            [(2, 2), (3, 3)]
        );
        assert_eq!(l.hold("t", 2, &ask(4, a, 40)), Hold::Serve, "judged now");
        let ans = l.serve(0, "t", &held[0].1);
        assert_eq!(
            ans.next,
            Next::Deep {
                epoch: a,
                first: 41,
                last: 90
            }
        );
        assert_eq!(ans.notice.unwrap().resync, None);
        // The origin's next message continues the adopted numbering: no notice.
        let next = Source::Remote(Position { epoch: a, seq: 91 });
        let Stamped::Deliver(s) = l.append(1, "t", next, MessageKind::Text, text(1), 1) else {
            panic!()
        };
        assert_eq!((s.epoch, s.seq, s.change), (a, 91, None));
        // A topic that numbered something here keeps its numbering: not held, and a late
        // lookup changes nothing.
        append(&mut l, 0, "mine", 1);
        assert_eq!(l.hold("mine", 0, &ask(5, a, 3)), Hold::Serve);
        l.handle_head(0, "mine", Some(Position { epoch: a, seq: 9 }));
        assert_ne!(l.get("mine").unwrap().seq().epoch(), a);
        // Nothing in the stream (or a failed lookup): served as before, an `epoch` resync.
        assert_eq!(l.hold("u", 0, &ask(6, a, 3)), Hold::Held { lookup: true });
        let held = l.handle_head(0, "u", None);
        let ans = l.serve(0, "u", &held[0].1);
        assert_eq!(
            ans.notice.unwrap().resync,
            Some(crate::continuity::resume::Reason::Epoch)
        );
        // Deep history off: never held.
        let mut off = TopicLogs::new(config(1 << 30), 1);
        assert_eq!(off.hold("t", 0, &ask(7, a, 3)), Hold::Serve);
    }

    #[test]
    fn deep_history_only_for_origin_numbers() {
        let mut cfg = config(1 << 30);
        cfg.deep = true;
        cfg.rules = HistoryRules::new(
            Vec::new(),
            Limits {
                messages: 2,
                bytes: 1 << 20,
                age_ms: 0,
            },
        );
        let mut l = TopicLogs::new(cfg, 1);
        let a = Epoch::from_u64(0xa);
        for s in 1..=10 {
            let p = Position { epoch: a, seq: s };
            l.append(
                0,
                "adopted",
                Source::Remote(p),
                MessageKind::Text,
                text(1),
                1,
            );
            l.append(0, "mixed", Source::Local, MessageKind::Text, text(1), 1);
        }
        l.append(0, "mixed", Source::External, MessageKind::Text, text(1), 1);
        let ask = |epoch, seq| Ask {
            ticket: 1,
            after: Some(Position { epoch, seq }),
            first: true,
            max_bytes: 1 << 20,
            max_messages: 100,
        };
        let ans = l.serve(0, "adopted", &ask(a, 3));
        assert_eq!(
            ans.next,
            Next::Deep {
                epoch: a,
                first: 4,
                last: 8
            }
        );
        let e = l.get("mixed").unwrap().seq().epoch();
        let ans = l.serve(0, "mixed", &ask(e, 3));
        assert_eq!(
            ans.notice.unwrap().resync,
            Some(crate::continuity::resume::Reason::Trimmed)
        );
    }
}
