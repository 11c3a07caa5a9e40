//! One shard's continuity state, in both of its roles (docs/CONTINUITY.md, "Wiring into the
//! engine"): the **home shard** of the topics [`home_shard`](super::home_shard) gives it (their
//! [`TopicLogs`], and which shards want their numbered frames), and the **connection's shard**
//! of its sequenced subscriptions that are not live yet (one [`Resume`] per ticket).
//!
//! Pure bookkeeping, no I/O and no connection state: `shard/seq.rs` drives it and moves the
//! items between shards. Nothing here is touched by a connection that did not ask for `seq=1`
//! or by a topic nobody subscribes with it, except [`Desk::append`]'s numbering and history
//! on the home shard (every message of a topic is numbered, so a later resume can find it).

use std::collections::HashMap;
use std::sync::Arc;

use super::deep::Fetch;
use super::log::{ContinuityStats, LogConfig, TopicLogs};
use super::resume::{Ask, Resume};
use super::{Epoch, Position, Seq};

/// Most payload bytes in one replay chunk (a resume's answer); the connection's high-water
/// mark lowers it (a quarter of the mark), so a replay never evicts its own client.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Most messages in one replay chunk.
pub const CHUNK_MESSAGES: usize = 1024;

/// A sequenced subscription waiting for its replay to end (C's side).
#[derive(Debug)]
pub struct Pending {
    /// The connection's slab slot and its generation (a reused slot is not this connection).
    pub slot: u32,
    /// See `slot`.
    pub gen: u32,
    /// The topic.
    pub topic: Arc<str>,
    /// The resume protocol's state.
    pub resume: Resume,
}

/// What /stats shows of a shard's continuity state (copied on each tick).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gauges {
    /// Topics with a log on this (home) shard.
    pub history_topics: u64,
    /// Messages kept in history.
    pub history_messages: u64,
    /// Bytes history holds (charged to the shard's ceiling share).
    pub history_bytes: u64,
    /// The most history may hold (10% of the shard's ceiling share).
    pub history_budget_bytes: u64,
    /// Sequenced subscriptions waiting for their replay (connection side).
    pub resumes_pending: u64,
    /// Counters of the home side.
    #[serde(flatten)]
    pub counters: ContinuityStats,
}

/// One shard's continuity state.
#[derive(Debug)]
pub struct Desk {
    id: usize,
    shards: usize,
    /// Numbering and history of the topics this shard is home of.
    pub logs: TopicLogs,
    /// Home side: per topic, the shards with sequenced subscribers of it (pending or live).
    interest: HashMap<Arc<str>, Vec<usize>>,
    /// Connection side: per topic, this shard's sequenced subscriptions (pending or live).
    want: HashMap<Arc<str>, u32>,
    pending: HashMap<u64, Pending>,
    /// Tickets whose next chunk waits for their connection's queue to drain.
    draining: Vec<u64>,
    next_ticket: u64,
    /// Replay chunk bounds for this shard's connections.
    chunk_bytes: usize,
}

impl Desk {
    /// Shard `id` of `shards`, numbering its topics from `seed` (the process's, shared by
    /// every shard). `high_water` is the default high-water mark of a connection's queue.
    pub fn new(id: usize, shards: usize, config: LogConfig, seed: u64, high_water: usize) -> Self {
        Desk {
            id,
            shards,
            logs: TopicLogs::new(config, seed),
            interest: HashMap::new(),
            want: HashMap::new(),
            pending: HashMap::new(),
            draining: Vec::new(),
            next_ticket: 1,
            chunk_bytes: (high_water / 4).clamp(1, CHUNK_BYTES),
        }
    }

    /// The home shard of `topic`.
    pub fn home(&self, topic: &str) -> usize {
        super::home_shard(topic, self.shards)
    }

    /// True if this shard numbers `topic`.
    pub fn is_home(&self, topic: &str) -> bool {
        self.shards == 1 || self.home(topic) == self.id
    }

    /// Home side: shard `shard` got its first (`on`) or lost its last sequenced subscription
    /// of `topic`. True if the topic went from wanted by no shard to wanted, or back.
    pub fn set_interest(&mut self, topic: &Arc<str>, shard: usize, on: bool) -> bool {
        let list = self.interest.entry(topic.clone()).or_default();
        let before = !list.is_empty();
        match (on, list.iter().position(|&s| s == shard)) {
            (true, None) => list.push(shard),
            (false, Some(i)) => {
                list.swap_remove(i);
            }
            _ => {}
        }
        let after = !list.is_empty();
        if !after {
            self.interest.remove(topic);
        }
        before != after
    }

    /// Home side: the shards that want `topic`'s numbered frames (empty: encode nothing).
    pub fn interested(&self, topic: &str) -> &[usize] {
        self.interest.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Home side: true while some shard has a sequenced subscription of `topic`.
    pub fn is_wanted(&self, topic: &str) -> bool {
        self.interest.contains_key(topic)
    }

    /// Connection side: one more sequenced subscription of `topic`; true if it is the first
    /// (tell the home shard).
    pub fn want_up(&mut self, topic: &Arc<str>) -> bool {
        let n = self.want.entry(topic.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Connection side: one sequenced subscription of `topic` less; true if it was the last.
    pub fn want_down(&mut self, topic: &str) -> bool {
        let Some(n) = self.want.get_mut(topic) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.want.remove(topic);
            return true;
        }
        false
    }

    /// Connection side: start a sequenced subscription of `topic` for connection
    /// `(slot, gen)`, resuming after `since`; returns the first ask for the home shard.
    pub fn start(&mut self, slot: u32, gen: u32, topic: Arc<str>, since: Option<Position>) -> Ask {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let (resume, ask) = Resume::start(ticket, since, self.chunk_bytes, CHUNK_MESSAGES);
        self.pending.insert(
            ticket,
            Pending {
                slot,
                gen,
                topic,
                resume,
            },
        );
        ask
    }

    /// True if connection `slot` has a pending subscription of `topic`.
    pub fn is_pending(&self, slot: u32, topic: &str) -> bool {
        self.pending
            .values()
            .any(|p| p.slot == slot && &*p.topic == topic)
    }

    /// Topics of connection `slot`'s pending subscriptions, in the order they started.
    pub fn pending_topics(&self, slot: u32) -> Vec<String> {
        let mut mine: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.slot == slot)
            .map(|(&t, p)| (t, p.topic.to_string()))
            .collect();
        mine.sort_unstable();
        mine.into_iter().map(|(_, t)| t).collect()
    }

    /// The pending subscription `ticket`, to apply an answer to.
    pub fn pending_mut(&mut self, ticket: u64) -> Option<&mut Pending> {
        self.pending.get_mut(&ticket)
    }

    /// End the pending subscription `ticket` (live, or its connection is gone).
    pub fn finish(&mut self, ticket: u64) -> Option<Pending> {
        self.draining.retain(|&t| t != ticket);
        self.pending.remove(&ticket)
    }

    /// Tickets of connection `slot` (or of every connection with `None`), for cleanup.
    pub fn tickets_of(&self, slot: u32, topic: Option<&str>) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.slot == slot && topic.is_none_or(|t| &*p.topic == t))
            .map(|(&t, _)| t)
            .collect()
    }

    /// The deep-history fetch of `first..=last` of `epoch` for pending subscription `ticket`,
    /// bounded like one replay chunk (the result is queued to the connection as one).
    pub fn deep_fetch(&self, ticket: u64, epoch: Epoch, first: Seq, last: Seq) -> Option<Fetch> {
        let p = self.pending.get(&ticket)?;
        Some(Fetch {
            ticket,
            shard: self.id,
            topic: p.topic.clone(),
            epoch,
            first,
            last,
            max_messages: CHUNK_MESSAGES,
            max_bytes: self.chunk_bytes,
        })
    }

    /// `ticket` asks for its next chunk once its connection has drained.
    pub fn wait_drain(&mut self, ticket: u64) {
        self.draining.push(ticket);
    }

    /// True if some pending subscription waits for a drain.
    pub fn any_draining(&self) -> bool {
        !self.draining.is_empty()
    }

    /// The next asks of connection `slot` (its queue has drained).
    pub fn drained(&mut self, slot: u32) -> Vec<(Arc<str>, Ask)> {
        let mut out = Vec::new();
        let pending = &mut self.pending;
        self.draining.retain(|t| match pending.get_mut(t) {
            Some(p) if p.slot == slot => {
                if let Some(ask) = p.resume.poll_ask() {
                    out.push((p.topic.clone(), ask));
                }
                false
            }
            Some(_) => true,
            None => false,
        });
        out
    }

    /// Home side's periodic sweep ([`TopicLogs::handle_tick`]): a topic is wanted while some
    /// shard has sequenced subscribers of it or `plain(topic)` (plain subscribers here).
    pub fn handle_tick(&mut self, now_ms: u64, plain: impl Fn(&str) -> bool) {
        let interest = &self.interest;
        self.logs
            .handle_tick(now_ms, |t| interest.contains_key(t) || plain(t));
    }

    /// What /stats shows.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            history_topics: self.logs.topics() as u64,
            history_messages: self.logs.messages() as u64,
            history_bytes: self.logs.retained_bytes() as u64,
            history_budget_bytes: self.logs.budget() as u64,
            resumes_pending: self.pending.len() as u64,
            counters: *self.logs.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::history::{HistoryRules, Limits};

    fn desk(id: usize, shards: usize) -> Desk {
        let config = LogConfig {
            rules: HistoryRules::new(Vec::new(), Limits::DEFAULT),
            budget: 1 << 20,
            window_ms: 10_000,
            idle_ms: 600_000,
            deep: false,
        };
        Desk::new(id, shards, config, 7, 1 << 20)
    }

    #[test]
    fn interest_and_want_count_per_topic() {
        let mut d = desk(0, 4);
        let t: Arc<str> = Arc::from("a");
        assert!(d.set_interest(&t, 2, true));
        assert!(!d.set_interest(&t, 2, true));
        assert!(!d.set_interest(&t, 3, true));
        assert_eq!(d.interested("a"), &[2, 3]);
        d.set_interest(&t, 2, false);
        assert_eq!(d.interested("a"), &[3]);
        assert!(d.set_interest(&t, 3, false));
        assert!(!d.is_wanted("a"));
        assert!(d.want_up(&t));
        assert!(!d.want_up(&t));
        assert!(!d.want_down("a"));
        assert!(d.want_down("a"));
        assert!(!d.want_down("a"), "never below zero");
    }

    #[test]
    fn pending_subscriptions_drain_per_connection() {
        let mut d = desk(0, 1);
        assert!(d.is_home("anything"));
        let ask = d.start(5, 1, Arc::from("a"), None);
        assert!(ask.first && ask.after.is_none());
        assert!(d.is_pending(5, "a") && !d.is_pending(6, "a"));
        assert_eq!(d.pending_topics(5), vec!["a".to_owned()]);
        assert_eq!(d.tickets_of(5, None), vec![ask.ticket]);
        d.wait_drain(ask.ticket);
        // Not draining in the resume's own state (no chunk was taken): no ask comes out, and
        // the ticket leaves the drain list either way.
        assert!(d.drained(5).is_empty());
        assert!(!d.any_draining());
        let f = d.deep_fetch(ask.ticket, Epoch::from_u64(3), 5, 9).unwrap();
        assert_eq!((f.shard, &*f.topic, f.first, f.last), (0, "a", 5, 9));
        assert_eq!((f.max_messages, f.max_bytes), (CHUNK_MESSAGES, CHUNK_BYTES));
        assert!(d.finish(ask.ticket).is_some());
        assert_eq!(d.gauges().resumes_pending, 0);
        assert!(
            d.deep_fetch(ask.ticket, Epoch::from_u64(3), 5, 9).is_none(),
            "gone"
        );
    }
}
