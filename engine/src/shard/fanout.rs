//! Fan-out: publish (encode once, local queues by reference, one envelope per other
//! participant), subscriptions, per-topic policies above the high-water mark, the shard's share
//! of the ceiling (evict the largest queues first) and the slow-client share.
//!
//! Queueing never writes: it marks the connection dirty, and the end-of-turn flush gathers
//! everything the connection has into one send (corking).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardcast_proto::{encode_close, CloseCode, MessageKind};
use std::rc::Rc;

use crate::conn::state::flag;
use crate::continuity::sequence::Source;
use crate::flow::governor::Governor;
use crate::flow::policy::{Action, Policy};
use crate::flow::queue::{frame_cost, QueuedFrame};
use crate::mesh::{Envelope, MeshItem, MeshLink, MeshPayload};
use crate::obs::latency::LatencyKind;
use crate::obs::stats::{self, Discard, Eviction};
use crate::shard::{Core, State};

impl Core {
    /// Publish a message accepted now: encode the frame (and, for text, the `/stream` wrapper,
    /// and the compressed variants some connection of the process reads) once, queue it to
    /// local subscribers and send one envelope to every other participant (the other shards,
    /// and the NATS bridge when it is on).
    pub fn publish(&mut self, topic: &Arc<str>, kind: MessageKind, payload: &[u8]) {
        let mut env = Envelope::encode(topic.clone(), kind, payload, self.st.now);
        // permessage-deflate: compressed here, once for every shard (`crate::deflate`).
        let st = &mut self.st;
        let z = &st.all_stats[st.id].compression;
        env.deflated = st
            .deflate
            .compress(topic, kind, &env.frame, env.stream_frame.as_ref(), z);
        self.deliver(&env);
        // Continuity: the topic's home shard numbers it (other shards' publishes are numbered
        // by the home shard as it drains their envelopes).
        if self.st.desk.is_home(topic) {
            self.seq_append(topic, &env.frame, env.published_at, Source::Local);
        }
        let st = &mut self.st;
        // The NATS bridge gets local publishes from the topic's home shard, numbered
        // (`shard/seq.rs`), not from here.
        let participants = st.link.shards();
        let id = st.id;
        let bridge = st.bridge;
        let dests = (0..participants).filter(move |&d| d != id && Some(d) != bridge);
        let fanout = dests.clone().count();
        if fanout == 0 {
            return;
        }
        let item = MeshItem::Publish(env);
        // The backlog is charged to this shard's budget like a local frame. The message was
        // already read, so it goes out even if no room can be made (the gate below then stops
        // further reads).
        let charge = MeshLink::<MeshItem>::broadcast_charge(item.payload_bytes(), fanout);
        st.make_room(charge);
        st.link.broadcast(dests, item);
        if !st.mesh_stalled && st.governor.mesh_over(st.link.mesh_bytes()) {
            // Only a fresh look at what consumers took can tell a real backlog from a stale one.
            st.link.reconcile();
            if st.governor.mesh_over(st.link.mesh_bytes()) {
                st.mesh_stalled = true;
                st.mesh_retry = true;
            }
        }
    }

    /// Queue a published message to this shard's subscribers of its topic under the topic's
    /// policy and the shard's ceiling. Each connection gets the wire variant it reads
    /// ([`Envelope::variant`]: plain, `/stream`, or their compressed forms); each variant is
    /// wrapped (and counted) once, however many queues take it; `published_at` travels with
    /// it for the broadcast latency.
    pub fn deliver(&mut self, env: &Envelope) {
        let Core { topics, st, .. } = self;
        let Some((name, subs, policy)) = topics.lookup(&env.topic) else {
            return;
        };
        let mut variants: [Option<Rc<QueuedFrame>>; 4] = Default::default();
        let mut per_variant = [0u64; 4];
        let mut queued = 0u64;
        // Without `/stream` or compressed forms (their features unused) every connection reads
        // the plain frame: one branch per message, not a choice per delivery.
        let plain_only = env.stream_frame.is_none() && env.deflated.is_none();
        for &slot in subs {
            let charged = st.charged();
            let Some(conn) = st.conns.at_mut(slot) else {
                continue;
            };
            if conn.closing() {
                continue;
            }
            let (v, bytes) = if plain_only {
                (0, &env.frame)
            } else {
                env.variant(conn.has(flag::STREAM), conn.deflate)
            };
            // The common case, `offer` without its lookups: the frame exists, its queue entry
            // fits in the budget (no eviction to make) and the connection stays below its mark.
            if let Some(qf) = &variants[v] {
                if st.governor.fits(charged, conn.queue.push_cost())
                    && conn.backlog_with(qf.len()) <= policy.high_water_bytes
                {
                    conn.queue.push(qf.clone());
                    if !conn.has(flag::DIRTY) {
                        conn.set(flag::DIRTY);
                        st.dirty.push(slot);
                    }
                    queued += 1;
                    per_variant[v] += 1;
                    continue;
                }
            }
            let shared = &mut variants[v];
            if shared.is_none() {
                // Real cost (isolation): buffer, `Rc` wrapper and the shared header.
                if !st.make_room(frame_cost(bytes.len(), true)) {
                    st.evict(slot, Eviction::Ceiling);
                    continue;
                }
                *shared = Some(st.ledger.shared_frame(
                    bytes.clone(),
                    Some(name.clone()),
                    Some(env.published_at),
                ));
            }
            let qf = shared.as_ref().expect("just set");
            if st.offer(slot, qf, name, policy) {
                queued += 1;
                per_variant[v] += 1;
            }
        }
        stats::add(&st.stats().messages_out, queued);
        st.count_compressed(env, [per_variant[2], per_variant[3]]);
    }

    /// Subscribe connection `slot` to `topic` (nothing if it already is).
    pub fn subscribe(&mut self, slot: u32, topic: &str) {
        self.subscribe_since(slot, topic, None);
    }

    /// Subscribe connection `slot` to `topic`; a sequenced connection resumes after `since`
    /// (continuity, `shard/seq.rs`).
    pub fn subscribe_since(
        &mut self,
        slot: u32,
        topic: &str,
        since: Option<crate::continuity::Position>,
    ) {
        if self.st.conns.at(slot).is_some_and(|c| c.has(flag::SEQ)) {
            return self.seq_subscribe(slot, topic, since);
        }
        let Core { topics, st, .. } = self;
        let Some(conn) = st.conns.at_mut(slot) else {
            return;
        };
        if conn.subs.contains(topic) {
            return;
        }
        // Isolation: callers check the room first (control replies, 503 at upgrade).
        if st.subscription_room() == 0 {
            return;
        }
        let Some(conn) = st.conns.at_mut(slot) else {
            return;
        };
        let policies = &st.policies;
        let (name, pos, first) = topics.insert(topic, slot, |t| *policies.lookup(t));
        conn.subs.push(name.clone(), pos);
        stats::add(&st.stats().subscriptions, 1);
        // permessage-deflate: the other participants learn when to build compressed variants.
        st.deflate_interest(slot, &name, true);
        if first {
            stats::add(&st.stats().topics, 1);
            st.interest(name, true);
        }
    }

    /// Unsubscribe connection `slot` from `topic` (nothing if it is not subscribed).
    pub fn unsubscribe(&mut self, slot: u32, topic: &str) {
        let Some(conn) = self.st.conns.at_mut(slot) else {
            return;
        };
        if conn.has(flag::SEQ) {
            return self.seq_unsubscribe(slot, Some(topic));
        }
        let Some(pos) = conn.subs.position(topic) else {
            return;
        };
        let name = self.topics.name(topic).expect("subscribed topics are live");
        conn.subs.remove(topic);
        self.remove_subscriber(slot, name, pos);
    }

    fn remove_subscriber(&mut self, slot: u32, name: Arc<str>, pos: u32) {
        self.st.deflate_interest(slot, &name, false); // permessage-deflate, as in `subscribe`
        let (moved, gone) = self.topics.remove_at(&name, pos);
        // Isolation: subscriptions are counted per shard (/stats `subscriptions`).
        stats::sub(&self.st.stats().subscriptions, 1);
        if let Some(m) = moved.filter(|&m| m != slot) {
            if let Some(c) = self.st.conns.at_mut(m) {
                c.subs.set_position(&name, pos);
            }
        }
        if gone {
            stats::sub(&self.st.stats().topics, 1);
            self.st.interest(name, false);
        }
    }

    /// Remove a connection from every topic and release its queue, slow mark and pauses (it is
    /// ending).
    pub fn unregister(&mut self, slot: u32) {
        let Some(conn) = self.st.conns.at_mut(slot) else {
            return;
        };
        if !conn.has(flag::REGISTERED) {
            return;
        }
        conn.clear(flag::REGISTERED);
        conn.queue.clear();
        let sequenced = conn.has(flag::SEQ);
        if sequenced {
            self.seq_unsubscribe(slot, None);
        }
        let Some(conn) = self.st.conns.at_mut(slot) else {
            return;
        };
        let subs = conn.subs.take_all();
        if conn.deflate.is_on() {
            self.st.deflate_connection(false);
        }
        self.st.registered -= 1;
        self.st.unslow(slot);
        self.st.release_pauses(slot, usize::MAX);
        for (name, pos) in subs {
            self.remove_subscriber(slot, name, pos);
        }
    }

    /// Queue `frame` as the final close frame on every open connection (graceful shutdown). One
    /// counted frame is shared by all of them, so this adds the frame once plus one queue slot
    /// per connection, outside the ceiling check (shutdown must not turn into 1013s).
    pub fn close_all(&mut self, frame: &Bytes) {
        self.for_all_registered(frame, State::close_with_frame);
    }

    /// Queue `frame` (one shared, counted frame, e.g. the `serverShutdown` event) on every
    /// upgraded connection, outside the ceiling check like [`close_all`](Self::close_all).
    pub fn push_all(&mut self, frame: &Bytes) {
        self.for_all_registered(frame, State::push_frame);
    }

    fn for_all_registered(&mut self, frame: &Bytes, f: fn(&mut State, u32, Rc<QueuedFrame>)) {
        let shared = self.st.ledger.shared_frame(frame.clone(), None, None);
        for slot in 0..self.st.conns.slots() as u32 {
            if self
                .st
                .conns
                .at(slot)
                .is_some_and(|c| c.has(flag::REGISTERED))
            {
                f(&mut self.st, slot, shared.clone());
            }
        }
    }
}

impl State {
    /// The shard is over its budget after `slot`'s unfinished input grew to `held` bytes
    /// (isolation): who holds the most goes first, as for queues — `slot` itself if nobody
    /// holds more unsent bytes, else the largest queues (`make_room`). False if `slot` must be
    /// evicted.
    pub fn room_for_input(&mut self, slot: u32, held: usize) -> bool {
        if self.governor.fits(self.charged(), 0) {
            return true;
        }
        let largest = (0..self.conns.slots() as u32)
            .filter(|&s| s != slot)
            .filter_map(|s| {
                self.conns
                    .at(s)
                    .filter(|c| !c.closing())
                    .map(|c| c.unsent())
            })
            .max()
            .unwrap_or(0);
        held < largest && self.make_room(0)
    }

    /// `id`'s kernel send buffer holds `bytes` (isolation): counted in the ledger, charged to
    /// the ceiling while the connection is slow (a socket that keeps up fills now and then
    /// for a moment; only a backlogged one's kernel bytes are a reason to evict).
    pub fn set_kernel(&mut self, id: crate::runtime::driver::ConnId, bytes: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Its kernel bytes were released with the close request (`request_close`).
        if c.phase == crate::conn::state::Phase::Ended {
            return;
        }
        let new = u32::try_from(bytes).unwrap_or(u32::MAX);
        let old = std::mem::replace(&mut c.kernel, new);
        self.ledger
            .kernel_changed(old as usize, new as usize, c.has(flag::SLOW));
    }

    /// Subscriptions this shard may still take: its share of `max_subscriptions`.
    pub fn subscription_room(&self) -> usize {
        let limit = self
            .config
            .max_subscriptions
            .div_ceil(self.config.shards.max(1));
        limit.saturating_sub(stats::get(&self.stats().subscriptions) as usize)
    }

    /// Tell the NATS bridge (if on) that this shard got its first subscriber of `topic`
    /// (`on`) or lost its last one.
    pub fn interest(&mut self, topic: Arc<str>, on: bool) {
        if let Some(bridge) = self.bridge {
            let shard = self.id;
            self.link
                .send(bridge, MeshItem::Interest { topic, shard, on });
        }
    }

    /// Queue one frame to one connection under `policy`; false if it was not queued (the
    /// connection was evicted).
    pub fn offer(&mut self, slot: u32, qf: &Rc<QueuedFrame>, topic: &str, policy: &Policy) -> bool {
        let slot_cost = self.conns.at(slot).map_or(0, |c| c.queue.push_cost());
        if !self.make_room(slot_cost) {
            self.evict(slot, Eviction::Ceiling);
        }
        let Some(conn) = self.conns.at_mut(slot) else {
            return false;
        };
        if conn.closing() {
            return false;
        }
        // Isolation: the frame being written is exempt (a frame alone never makes a client slow).
        if conn.backlog_with(qf.len()) <= policy.high_water_bytes {
            // Below the mark (the common case): the backlog after the push is the one just
            // computed, so there is nothing more to decide. (Computed once: at many
            // connections the head frame it reads is a cache miss per delivery.)
            self.push_frame(slot, qf.clone());
            return true;
        }
        // Above the mark: the topic's policy.
        match policy.policy {
            Action::Evict => {
                self.evict(slot, Eviction::HighWater);
                return false;
            }
            Action::Conflate => {
                let n = conn.queue.keep_newest(topic, 0);
                self.stats().drop_messages(Discard::Conflated, n as u64);
            }
            Action::DropOldest => {
                let n = conn.queue.keep_newest(topic, policy.keep - 1);
                self.stats().drop_messages(Discard::DropOldest, n as u64);
            }
            Action::Pause => self.hold_pause(slot, topic, policy.low_water_bytes),
        }
        self.push_frame(slot, qf.clone());
        let backlog = self.conns.at(slot).map_or(0, |c| c.backlog_with(0));
        if backlog > policy.high_water_bytes {
            self.mark_slow(slot, policy.low_water_bytes);
        }
        self.conns.at(slot).is_some_and(|c| !c.closing())
    }

    /// Queue a frame of the connection's own (control reply, echo, pong) under the ceiling and
    /// the default high-water mark; there is no topic to conflate, so above the mark the
    /// connection is evicted.
    pub fn push_own(&mut self, slot: u32, frame: Bytes) {
        self.push_own_as(slot, frame, false);
    }

    /// [`push_own`](Self::push_own) for a pong: RFC 6455 §5.5.3 lets only the latest ping be
    /// answered while a pong waits, so a waiting (unwritten) pong is replaced, never added to:
    /// a ping flood queues at most one pong.
    pub fn push_pong(&mut self, slot: u32, frame: Bytes) {
        self.push_own_as(slot, frame, true);
    }

    fn push_own_as(&mut self, slot: u32, frame: Bytes, pong: bool) {
        let Some(conn) = self.conns.at(slot) else {
            return;
        };
        if conn.closing() || frame.is_empty() {
            return;
        }
        let backlog = conn.backlog_with(frame.len());
        if !self.make_room(frame_cost(frame.len(), false) + conn.queue.push_cost()) {
            self.evict(slot, Eviction::Ceiling);
            return;
        }
        if backlog > self.policies.default_policy().high_water_bytes {
            self.evict(slot, Eviction::HighWater);
            return;
        }
        if pong {
            let qf = self.ledger.frame(frame, None, None);
            if let Some(c) = self.conns.at_mut(slot) {
                c.queue.push_pong(qf);
                self.mark_dirty(slot);
            }
            return;
        }
        self.push_bytes(slot, frame);
    }

    /// Make room for `extra` more charged bytes: if they would not fit in the shard's budget,
    /// evict the connections with the most unsent bytes until the charge (queues + mesh
    /// backlog) is at most [`Governor::evict_to`] and `extra` fits. Evicting releases only
    /// local queues: when the backlog alone leaves no room for `extra`, nobody is evicted, and
    /// when it alone is above `evict_to`, eviction stops once `extra` fits. False if there is
    /// no room.
    #[inline]
    pub fn make_room(&mut self, extra: usize) -> bool {
        self.governor.fits(self.charged(), extra) || self.make_room_by_evicting(extra)
    }

    /// [`make_room`](Self::make_room) when `extra` does not fit as things are.
    #[inline(never)]
    fn make_room_by_evicting(&mut self, extra: usize) -> bool {
        // History (continuity) is a cache: it is halved before any connection is evicted.
        while self.shrink_history() {
            if self.governor.fits(self.charged(), extra) {
                return true;
            }
        }
        let mesh = self.link.mesh_bytes();
        if !self.governor.fits(mesh, extra) {
            return false;
        }
        let target_fits_only = mesh > self.governor.evict_to;
        let candidates = (0..self.conns.slots() as u32)
            .filter_map(|slot| {
                let c = self.conns.at(slot)?;
                // Only connections that have something to release (not just a pinned head).
                let droppable = c.queue.len_frames() > c.queue.protected();
                (!c.closing() && droppable).then(|| (c.unsent(), slot))
            })
            .collect();
        let mut first = None;
        for (unsent, slot) in Governor::ranked(candidates) {
            let charged = self.charged();
            let fits = self.governor.fits(charged, extra);
            if self.governor.relieved(charged, extra) || (target_fits_only && fits) {
                break;
            }
            // Within the budget again: go on toward `evict_to` with stragglers only.
            if fits && first.is_some_and(|f| !Governor::straggler(f, unsent)) {
                break;
            }
            first.get_or_insert(unsent);
            self.evict(slot, Eviction::Ceiling);
        }
        self.governor.fits(self.charged(), extra)
    }

    /// Close a connection with 1013 "try again later": its unpinned frames are released at
    /// once and the close goes out right after what is already being written.
    pub fn evict(&mut self, slot: u32, why: Eviction) {
        let Some(conn) = self.conns.at_mut(slot) else {
            return;
        };
        if conn.closing() {
            return;
        }
        self.record_eviction_stall(slot);
        if let Some(c) = self.conns.at_mut(slot) {
            c.queue.clear_unstarted();
        }
        self.unslow(slot);
        self.release_pauses(slot, usize::MAX);
        self.stats().evict(why);
        let ledger = self.ledger.clone();
        let close = self
            .evict_close
            .get_or_insert_with(|| {
                ledger.shared_frame(
                    encode_close(CloseCode::TRY_AGAIN_LATER, "try again later"),
                    None,
                    None,
                )
            })
            .clone();
        self.close_with_frame(slot, close);
    }

    /// Record how long `slot`, about to be evicted, had gone without write progress: since its
    /// last write that made progress, or since its oldest unsent frame was published if that is
    /// later. An empty queue has not stalled at all (one message alone was over the mark).
    fn record_eviction_stall(&self, slot: u32) {
        if !self.latency.is_recording() {
            return;
        }
        let Some(conn) = self.conns.at(slot) else {
            return;
        };
        let idle_ms = self.now_ms.wrapping_sub(conn.write_progress);
        let since_progress = Duration::from_millis(u64::from(idle_ms));
        let stall = match conn.queue.head() {
            None => Duration::ZERO,
            Some(head) => match head.published_at {
                Some(at) => since_progress.min(self.now.saturating_duration_since(at)),
                None => since_progress,
            },
        };
        self.latency.record(LatencyKind::EvictionStall, stall);
    }

    /// Mark a connection slow (above a high-water mark until below `low`); if slow clients now
    /// exceed [`Governor::slow_limit`], evict the slowest (most unsent bytes) first.
    pub fn mark_slow(&mut self, slot: u32, low: usize) {
        let Some(conn) = self.conns.at_mut(slot) else {
            return;
        };
        if !conn.has(flag::SLOW) {
            conn.set(flag::SLOW);
            self.ledger.kernel_charge(conn.kernel as usize, true);
            self.slow += 1;
            self.stats()
                .slow_clients
                .store(self.slow as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(conn) = self.conns.at_mut(slot) {
            conn.slow_low = u32::try_from(low).unwrap_or(u32::MAX);
        }
        let limit = Governor::slow_limit(self.registered);
        if self.slow <= limit {
            return;
        }
        let candidates = (0..self.conns.slots() as u32)
            .filter_map(|s| {
                let c = self.conns.at(s)?;
                (c.has(flag::SLOW) && !c.closing()).then(|| (c.unsent(), s))
            })
            .collect();
        for s in Governor::order(candidates) {
            if self.slow <= limit {
                break;
            }
            self.evict(s, Eviction::SlowClients);
        }
    }

    pub fn unslow(&mut self, slot: u32) {
        if let Some(c) = self.conns.at_mut(slot) {
            if c.has(flag::SLOW) {
                c.clear(flag::SLOW);
                self.ledger.kernel_charge(c.kernel as usize, false);
                self.slow -= 1;
                self.stats()
                    .slow_clients
                    .store(self.slow as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// After a write: a connection back below its low-water mark is no longer slow and
    /// releases the topics it held paused.
    pub fn after_write(&mut self, slot: u32) {
        let Some(c) = self.conns.at(slot) else {
            return;
        };
        // Queued bytes only: the kernel's share drains by itself, and a stale sample (no send
        // since) must not keep a connection slow or a topic paused forever.
        let unsent = c.backlog_with(0) - c.kernel as usize;
        if c.has(flag::SLOW) && unsent <= c.slow_low as usize {
            self.unslow(slot);
        }
        if self.conns.at(slot).is_some_and(|c| c.paused.is_some()) {
            self.release_pauses(slot, unsent);
        }
    }
}
