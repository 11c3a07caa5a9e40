//! Continuity glue (docs/CONTINUITY.md, "Wiring into the engine"): the logic is in
//! `continuity/` (desk, log, resume, wire); this moves its items between shards and queues
//! its frames.
//!
//! - **Home shard** H of a topic (`continuity::home_shard`): numbers every message of the topic
//!   in the order it sees them (its own publishes, and every other shard's envelope as it
//!   drains it: each publish is already broadcast to every shard, so numbering adds no mesh
//!   item), keeps it in history, and, while some shard has sequenced subscribers of the topic,
//!   encodes the numbered frame once and sends it to those shards ([`MeshItem::Sequenced`]).
//! - **Connection's shard** C: a sequenced connection (`flag::SEQ`, from `seq=1`) never gets
//!   plain frames. Each of its subscriptions starts pending in the desk and asks H for its
//!   notice and replay ([`MeshItem::Ask`]/[`MeshItem::Answer`]); it joins `Core::seq_topics`
//!   (the live sequenced subscribers) when it processes the answer that ends the replay at the
//!   switch point S. Numbered frames and answers come on the same H → C ring, so the live
//!   frames ≤ S were seen before (and skipped) and those > S come after: no gap, no duplicate.
//!   When C is H, both happen in one call.
//! - **Deep history**: when H's ring does not reach back and the host has JetStream, H answers
//!   `Next::Deep`; C asks the NATS bridge for the range ([`MeshItem::DeepFetch`]), queues what
//!   comes back ([`MeshItem::DeepFetched`]) like a replay chunk, and asks H again once drained.
//!   A pending fetch is just the ticket's resume state: a connection that leaves meanwhile
//!   drops its ticket, and the late result finds nothing to apply. An ask naming another
//!   epoch than a topic H has numbered nothing of waits at H while the bridge reads the
//!   numbering of the topic's last message in the stream ([`MeshItem::DeepHead`]), which H
//!   adopts before answering.
//!
//! A plain connection pays nothing here: its slot only has a flag bit it never sets.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcast_proto::{encode_close, CloseCode};

use crate::continuity::deep::Fetched;
use crate::continuity::desk::Desk;
use crate::continuity::history::HistoryRules;
use crate::continuity::log::{Hold, LogConfig};
use crate::continuity::resume::{
    Action as Next, Answer, Ask, Broken, Notice, Reason, Resume, Step,
};
use crate::continuity::sequence::{Change, Source, Stamped};
use crate::continuity::{wire, Position};
use crate::deflate::settings::Switch;
use crate::flow::policy::{Action, Policy};
use crate::flow::queue::SLOT_BYTES;
use crate::mesh::{MeshItem, MeshLink, MeshPayload, Sequenced};
use crate::obs::stats;
use crate::runtime::driver::ConnId;
use crate::shard::{Core, State};

/// History's share of a shard's ceiling share, in percent (docs/CONTINUITY.md, "History").
pub const HISTORY_BUDGET_PCT: usize = 10;

/// A topic with no history, no sequenced subscriber and no message for this long is forgotten.
pub const IDLE_FORGET_MS: u64 = 10 * 60 * 1000;

/// Handover window between NATS origins (see `continuity::sequence`).
pub const HANDOVER_MS: u64 = 10_000;

/// The desk of shard `id`: history rules from the configuration, a tenth of the shard's
/// ceiling share for history, the process's epoch seed.
pub fn desk(id: usize, config: &crate::config::Config, budget: usize, seed: u64) -> Desk {
    let log = LogConfig {
        rules: HistoryRules::new(config.history_rules(), config.default_history()),
        budget: budget / 100 * HISTORY_BUDGET_PCT,
        window_ms: HANDOVER_MS,
        idle_ms: IDLE_FORGET_MS,
        // Deep history needs the bridge (it fetches from JetStream).
        deep: config.nats_jetstream == Switch::On && config.nats_url.is_some(),
    };
    Desk::new(id, config.shards.max(1), log, seed, config.high_water_bytes)
}

/// On a sequenced connection a topic whose policy discards messages evicts instead: the
/// client resumes from history rather than receiving a silent gap.
fn sequenced_policy(p: &Policy) -> Policy {
    match p.policy {
        Action::Conflate | Action::DropOldest => Policy {
            policy: Action::Evict,
            ..*p
        },
        Action::Evict | Action::Pause => *p,
    }
}

impl Core {
    /// Home shard: number one message of `topic` (its plain frame), keep it in history, and
    /// hand the numbered frame to the shards that want it.
    /// Local publishes (`Source::Local`) go on to the NATS bridge with their number.
    pub(crate) fn seq_append(
        &mut self,
        topic: &Arc<str>,
        frame: &Bytes,
        published_at: Instant,
        source: Source,
    ) {
        let Some((kind, payload)) = wire::split_frame(frame) else {
            return;
        };
        let now_ms = self.st.seq_now();
        let st = &mut self.st;
        let stamped =
            st.desk
                .logs
                .append(now_ms, topic, source, kind, payload.clone(), frame.len());
        let Stamped::Deliver(stamp) = stamped else {
            return;
        };
        if source == Source::Local {
            let at = Position {
                epoch: stamp.epoch,
                seq: stamp.seq,
            };
            st.forward(topic, frame, published_at, at);
        }
        if st.desk.interested(topic).is_empty() {
            return;
        }
        // A change of numbering is announced before the message (a live `resync` notice).
        let notice = stamp.change.map(|c| {
            let resync = match c {
                Change::Epoch => Reason::Epoch,
                Change::Lost { .. } => Reason::Lost,
            };
            let n = Notice {
                epoch: stamp.epoch,
                seq: stamp.seq - 1,
                resync: Some(resync),
            };
            wire::notice_frame(topic, &n)
        });
        let item = Sequenced {
            topic: topic.clone(),
            frame: wire::data_frame(kind, topic, stamp.seq, &payload),
            notice,
            published_at,
        };
        let id = st.id;
        let shards = st.desk.interested(topic);
        let here = shards.contains(&id);
        let others: Vec<usize> = shards.iter().copied().filter(|&s| s != id).collect();
        if !others.is_empty() {
            let item = MeshItem::Sequenced(item.clone());
            st.make_room(MeshLink::<MeshItem>::broadcast_charge(
                item.payload_bytes(),
                others.len(),
            ));
            st.link.broadcast(others, item);
        }
        if here {
            self.deliver_sequenced(&item);
        }
    }

    /// Queue a numbered message (and its notice) to this shard's live sequenced subscribers.
    pub(crate) fn deliver_sequenced(&mut self, q: &Sequenced) {
        let Core { seq_topics, st, .. } = self;
        let Some((name, subs, policy)) = seq_topics.lookup(&q.topic) else {
            return;
        };
        let policy = sequenced_policy(policy);
        let mut frames = Vec::with_capacity(2);
        for bytes in q.notice.iter().chain(std::iter::once(&q.frame)) {
            if !st.make_room(bytes.len() + SLOT_BYTES) {
                continue;
            }
            frames.push(
                st.ledger
                    .frame(bytes.clone(), Some(name.clone()), Some(q.published_at)),
            );
        }
        let mut queued = 0u64;
        for &slot in subs {
            if st.conns.at(slot).is_none_or(|c| c.closing()) {
                continue;
            }
            if frames.iter().all(|f| st.offer(slot, f, name, &policy)) {
                queued += 1;
            }
        }
        stats::add(&st.stats().messages_out, queued);
    }

    /// Start a sequenced subscription of `topic` on connection `slot`, resuming after `since`
    /// (`None`: from the head). Nothing if it is already subscribed or pending.
    pub(crate) fn seq_subscribe(&mut self, slot: u32, topic: &str, since: Option<Position>) {
        let st = &mut self.st;
        let Some(id) = st.conns.id_at(slot) else {
            return;
        };
        let Some(conn) = st.conns.at(slot) else {
            return;
        };
        if conn.subs.contains(topic) || st.desk.is_pending(slot, topic) {
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        let home = st.desk.home(topic);
        if st.desk.want_up(&name) {
            st.seq_interest(&name, home, true);
        }
        let ask = st.desk.start(slot, id.gen, name.clone(), since);
        self.send_ask(home, name, ask);
    }

    /// Send `ask` to `topic`'s home shard, or answer it here when this shard is home.
    fn send_ask(&mut self, home: usize, topic: Arc<str>, ask: Ask) {
        if home == self.st.id {
            let id = self.st.id;
            self.seq_serve(topic, id, &ask);
        } else {
            let from = self.st.id;
            self.st.link.send(
                home,
                MeshItem::Ask {
                    topic,
                    from,
                    ask: Box::new(ask),
                },
            );
        }
    }

    /// Home shard: answer an ask from shard `from` (this one included), or hold it while the
    /// bridge looks up the topic's numbering in deep history (`TopicLogs::hold`).
    pub(crate) fn seq_serve(&mut self, topic: Arc<str>, from: usize, ask: &Ask) {
        match self.st.desk.logs.hold(&topic, from, ask) {
            Hold::Serve => {}
            Hold::Held { lookup } => {
                // Deep history is on only with the bridge, so `hold` holds only then.
                if let (true, Some(bridge)) = (lookup, self.st.bridge) {
                    let shard = self.st.id;
                    self.st
                        .link
                        .send(bridge, MeshItem::DeepHead { topic, shard });
                }
                return;
            }
        }
        let now_ms = self.st.seq_now();
        let answer = self.st.desk.logs.serve(now_ms, &topic, ask);
        self.seq_reply(from, answer);
    }

    /// Home shard: the bridge found the numbering of `topic`'s last message in the stream
    /// (or nothing): adopt it if the topic has numbered nothing here yet, then serve the asks
    /// that waited for it.
    pub(crate) fn seq_head(&mut self, topic: Arc<str>, stored: Option<Position>) {
        let now_ms = self.st.seq_now();
        for (from, ask) in self.st.desk.logs.handle_head(now_ms, &topic, stored) {
            let answer = self.st.desk.logs.serve(now_ms, &topic, &ask);
            self.seq_reply(from, answer);
        }
    }

    /// Home shard: hand `answer` to the asking shard `from` (applied here when it is this one).
    fn seq_reply(&mut self, from: usize, answer: Answer) {
        if from == self.st.id {
            return self.seq_answer(answer);
        }
        let item = MeshItem::Answer(Box::new(answer));
        self.st.make_room(MeshLink::<MeshItem>::broadcast_charge(
            item.payload_bytes(),
            1,
        ));
        self.st.link.send(from, item);
    }

    /// Connection's shard: apply the home shard's answer to its pending subscription: queue
    /// the notice and the replay, then go live, ask for more once drained, fetch from deep
    /// history, or give up.
    pub(crate) fn seq_answer(&mut self, answer: Answer) {
        let ticket = answer.ticket;
        self.seq_step(ticket, |r| r.handle_answer(answer));
    }

    /// Connection's shard: what the bridge fetched from deep history for `ticket` (nothing on
    /// a failure: the resume then tells the client `trimmed` and continues from the ring).
    pub(crate) fn seq_deep(&mut self, fetched: Fetched) {
        let entries = fetched.result.unwrap_or_default();
        self.seq_step(fetched.ticket, |r| r.handle_deep(entries));
    }

    /// Advance pending subscription `ticket` with `f` and carry out the step it returns.
    fn seq_step(&mut self, ticket: u64, f: impl FnOnce(&mut Resume) -> Result<Step, Broken>) {
        let st = &mut self.st;
        let Some(p) = st.desk.pending_mut(ticket) else {
            return; // its connection is gone
        };
        let (slot, topic) = (p.slot, p.topic.clone());
        let alive = st
            .conns
            .get(ConnId { slot, gen: p.gen })
            .is_some_and(|c| !c.closing());
        let step = match (alive, f(&mut p.resume)) {
            (true, Ok(step)) => step,
            (alive, broken) => {
                self.seq_forget(ticket);
                if alive {
                    tracing::error!(?broken, topic = %topic, "continuity: broken answer");
                    self.st
                        .close_with_bytes(slot, encode_close(CloseCode::INTERNAL_ERROR, ""));
                }
                return;
            }
        };
        let kind_frames = step
            .notice
            .map(|n| wire::notice_frame(&topic, &n))
            .into_iter()
            .chain(
                step.replay
                    .iter()
                    .map(|r| wire::data_frame(r.kind, &topic, r.seq, &r.payload)),
            );
        for f in kind_frames {
            self.st.push_own(slot, f);
        }
        if self.st.conns.at(slot).is_none_or(|c| c.closing()) {
            return self.seq_forget(ticket);
        }
        match step.action {
            Next::Subscribe { .. } => {
                self.st.desk.finish(ticket);
                self.seq_go_live(slot, &topic);
            }
            Next::AskWhenDrained => {
                self.st.desk.wait_drain(ticket);
                // Nothing queued (an empty chunk): it has drained already.
                if self.st.conns.at(slot).is_some_and(|c| c.queue.is_empty()) {
                    self.seq_drained(slot);
                }
            }
            // The home shard offers deep history only when this host has JetStream, which
            // needs the bridge; the result comes back as `MeshItem::DeepFetched`.
            Next::FetchDeep { epoch, first, last } => {
                let fetch = self.st.desk.deep_fetch(ticket, epoch, first, last);
                match (self.st.bridge, fetch) {
                    (Some(bridge), Some(fetch)) => {
                        self.st
                            .link
                            .send(bridge, MeshItem::DeepFetch(Box::new(fetch)));
                    }
                    _ => {
                        self.seq_forget(ticket);
                        self.st
                            .close_with_bytes(slot, encode_close(CloseCode::INTERNAL_ERROR, ""));
                    }
                }
            }
        }
    }

    /// Add `slot` to `topic`'s live sequenced subscribers (the switch point is now).
    fn seq_go_live(&mut self, slot: u32, topic: &str) {
        let Core { seq_topics, st, .. } = self;
        let Some(conn) = st.conns.at_mut(slot) else {
            return;
        };
        let policies = &st.policies;
        let (name, pos, _) = seq_topics.insert(topic, slot, |t| *policies.lookup(t));
        conn.subs.push(name, pos);
    }

    /// A pending subscription ends without going live: forget it (and the shard's interest
    /// in its topic if it was the last).
    fn seq_forget(&mut self, ticket: u64) {
        if let Some(p) = self.st.desk.finish(ticket) {
            self.st.seq_want_down(&p.topic);
        }
    }

    /// Connection `slot` wrote and may have drained: ask for the next chunks it waits for.
    pub(crate) fn seq_drained(&mut self, slot: u32) {
        let st = &self.st;
        let Some(c) = st.conns.at(slot) else {
            return;
        };
        // Queued bytes only: the kernel's sample is taken after large sends and may be stale
        // once the socket drained (as for the slow and pause releases, isolation).
        if c.queue.len_bytes() > st.policies.default_policy().low_water_bytes {
            return;
        }
        for (topic, ask) in self.st.desk.drained(slot) {
            let home = self.st.desk.home(&topic);
            self.send_ask(home, topic, ask);
        }
    }

    /// Remove `slot`'s sequenced subscription of `topic` (live or pending), or all of them
    /// with `None` (the connection ends).
    pub(crate) fn seq_unsubscribe(&mut self, slot: u32, topic: Option<&str>) {
        for ticket in self.st.desk.tickets_of(slot, topic) {
            self.seq_forget(ticket);
        }
        let Some(conn) = self.st.conns.at_mut(slot) else {
            return;
        };
        let live = match topic {
            None => conn.subs.take_all(),
            Some(t) => conn
                .subs
                .remove(t)
                .map(|pos| {
                    let name = self.seq_topics.name(t).expect("subscribed topics are live");
                    vec![(name, pos)]
                })
                .unwrap_or_default(),
        };
        for (name, pos) in live {
            let (moved, _) = self.seq_topics.remove_at(&name, pos);
            if let Some(m) = moved.filter(|&m| m != slot) {
                if let Some(c) = self.st.conns.at_mut(m) {
                    c.subs.set_position(&name, pos);
                }
            }
            self.st.seq_want_down(&name);
        }
    }

    /// The home side's share of the tick: age out history, forget idle topics, publish the
    /// gauges.
    pub(crate) fn seq_tick(&mut self) {
        let now_ms = self.st.seq_now();
        let topics = &self.topics;
        self.st
            .desk
            .handle_tick(now_ms, |t| topics.name(t).is_some());
        *self
            .st
            .stats()
            .continuity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.st.desk.gauges();
    }
}

impl State {
    /// The desk's clock: ms since the shard started, not wrapping.
    pub(crate) fn seq_now(&self) -> u64 {
        self.now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Tell `home` (or this shard's own desk) that this shard's first sequenced subscription
    /// of `topic` began (`on`) or its last one ended.
    fn seq_interest(&mut self, topic: &Arc<str>, home: usize, on: bool) {
        if home == self.id {
            self.seq_interest_at_home(topic, home, on);
        } else {
            let shard = self.id;
            self.link.send(
                home,
                MeshItem::SeqInterest {
                    topic: topic.clone(),
                    shard,
                    on,
                },
            );
        }
    }

    /// Hand a local publish, numbered, to the NATS bridge (if on). The overflow toward the
    /// bridge is bounded (one ring's worth): a bridge that cannot keep up loses forwards,
    /// counted, instead of growing this shard's memory.
    fn forward(&mut self, topic: &Arc<str>, frame: &Bytes, published_at: Instant, at: Position) {
        let Some(bridge) = self.bridge else {
            return;
        };
        if self.link.pending(bridge) >= self.config.ring_capacity {
            stats::add(&self.stats().bridge_dropped, 1);
            return;
        }
        let env = crate::mesh::Envelope {
            topic: topic.clone(),
            frame: frame.clone(),
            stream_frame: None,
            published_at,
            deflated: None,
        };
        let item = MeshItem::Numbered(Box::new((env, at)));
        self.make_room(MeshLink::<MeshItem>::broadcast_charge(
            item.payload_bytes(),
            1,
        ));
        self.link.send(bridge, item);
    }

    /// Home side: shard `shard`'s sequenced interest in `topic` changed. While any shard has
    /// some, the bridge is told this home shard wants the topic from NATS (as participant
    /// `shards + id`, which the bridge subscribes for but never delivers to).
    pub(crate) fn seq_interest_at_home(&mut self, topic: &Arc<str>, shard: usize, on: bool) {
        if self.desk.set_interest(topic, shard, on) {
            if let Some(bridge) = self.bridge {
                let wanted = self.desk.is_wanted(topic);
                let item = MeshItem::Interest {
                    topic: topic.clone(),
                    shard: self.config.shards + self.id,
                    on: wanted,
                };
                self.link.send(bridge, item);
            }
        }
    }

    fn seq_want_down(&mut self, topic: &Arc<str>) {
        if self.desk.want_down(topic) {
            let home = self.desk.home(topic);
            self.seq_interest(topic, home, false);
        }
    }

    /// Bytes history holds on this shard (part of its charge against the ceiling).
    pub(crate) fn history_bytes(&self) -> usize {
        self.desk.logs.retained_bytes()
    }

    /// Under memory pressure history goes before any connection: halve it.
    pub(crate) fn shrink_history(&mut self) -> bool {
        let held = self.desk.logs.retained_bytes();
        held > 0 && self.desk.logs.shrink(held / 2) > 0
    }
}
