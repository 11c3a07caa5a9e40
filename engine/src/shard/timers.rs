//! Time in the core: [`Core::handle_time`] is the only clock input. It runs what is due: the
//! 100 ms tick (stats stamp, gauges, histograms, depth sample; `obs::tick`), the deadlines of
//! connections that have one (handshake, flush, linger: a list, checked every tick, so a
//! deadline is late by at most one tick) and the heartbeat sweep (one pass over the slab every
//! `sweep_period`, not a timer per connection).

use std::time::Instant;

use shardcast_proto::encode_close;

use crate::conn::closing::{on_flush_deadline, Decision};
use crate::conn::heartbeat::{Action, Reason};
use crate::conn::state::{flag, Phase};
use crate::obs::stats;
use crate::obs::tick::TICK;
use crate::runtime::clock::reached;
use crate::runtime::driver::{CloseMode, ConnId};
use crate::shard::Core;

impl Core {
    /// The loop's one clock reading for this turn; runs every timer that is due.
    pub fn handle_time(&mut self, now: Instant) {
        self.st.now = now;
        self.st.now_ms = self.st.clock.ms(now);
        let now_ms = self.st.now_ms;
        if reached(now_ms, self.st.next_tick) {
            self.st.next_tick = now_ms.wrapping_add(TICK.as_millis() as u32);
            self.tick();
            self.seq_tick();
            self.deadlines();
        }
        if self
            .st
            .shutdown_notice
            .is_some_and(|at| reached(now_ms, at))
        {
            self.end_shutdown_notice();
        }
        if self.st.hb.enabled() && reached(now_ms, self.st.next_sweep) {
            self.st.next_sweep = now_ms.wrapping_add(self.st.hb.sweep_period().as_millis() as u32);
            self.sweep();
        }
    }

    /// Record the next slice of the queue depth sample (each tick does this; one pass takes
    /// `obs::depth::SLICES` slices). Public to measure its cost (`examples/depth_sweep.rs`).
    pub fn sample_depth_slice(&mut self) {
        let st = &mut self.st;
        let slots = st.conns.slots();
        let conns = &st.conns;
        st.ticker
            .sample_depth(&st.all_stats[st.id], slots, |range, sample| {
                for slot in range {
                    if let Some(c) = conns.at(slot as u32) {
                        sample.record(c.queue.len_frames(), c.queue.len_bytes());
                    }
                }
            });
    }

    fn tick(&mut self) {
        let st = &mut self.st;
        st.trim_queues();
        st.publish_gauges();
        let slots = st.conns.slots();
        let conns = &st.conns;
        st.ticker.on_tick(
            &st.all_stats[st.id],
            &st.latency,
            st.now,
            slots,
            |range, sample| {
                for slot in range {
                    if let Some(c) = conns.at(slot as u32) {
                        sample.record(c.queue.len_frames(), c.queue.len_bytes());
                    }
                }
            },
        );
    }

    /// Act on every passed deadline: a request not complete in time gets 408; a final frame
    /// not flushed in time, or a linger without the peer's EOF, ends the connection.
    fn deadlines(&mut self) {
        let now = self.st.now_ms;
        let mut expired: Vec<ConnId> = Vec::new();
        let conns = &mut self.st.conns;
        self.st.timed.retain(|&id| {
            let Some(c) = conns.get_mut(id) else {
                return false;
            };
            if !matches!(c.phase, Phase::Http | Phase::Closing | Phase::Linger) {
                c.clear(flag::TIMED);
                return false;
            }
            if reached(now, c.deadline) {
                c.clear(flag::TIMED);
                expired.push(id);
                return false;
            }
            true
        });
        for id in expired {
            match self.st.conns.get(id).map(|c| c.phase) {
                Some(Phase::Http) => self.handshake_timed_out(id),
                Some(Phase::Closing) => self.flush_deadline(id),
                // No EOF within the linger: every frame went to the kernel, but a peer that
                // does not read would leave them pinned there (isolation).
                Some(Phase::Linger) => self.end(id, CloseMode::ResetIfUnsent),
                _ => {}
            }
        }
    }

    /// A closing connection did not flush its final frame in time: reset it, or during
    /// shutdown look again while it keeps draining (`conn::closing`).
    fn flush_deadline(&mut self, id: ConnId) {
        let Some(c) = self.st.conns.get(id) else {
            return;
        };
        let end = self.st.shutting_down.then_some(self.st.shutdown_deadline);
        let flush = self.st.close_flush_ms();
        match on_flush_deadline(self.st.now_ms, c.write_progress, flush, end) {
            Decision::Recheck(at) => self.st.set_deadline(id, at),
            Decision::Abort(why) => {
                self.st.stats().abort(why);
                self.end(id, CloseMode::Reset);
            }
        }
    }

    /// Apply every open connection's heartbeat rules: queue the shared ping, or close the dead
    /// (abort), idle and expired (orderly), counted per kind.
    pub fn sweep(&mut self) {
        let st = &mut self.st;
        let (now, hb) = (st.now_ms, st.hb);
        let now_ns = st.clock.ns(st.now);
        for slot in 0..st.conns.slots() as u32 {
            let Some(c) = st.conns.at_mut(slot) else {
                continue;
            };
            if c.phase != Phase::Open {
                continue;
            }
            // Access: drop a box that holds only a full rate bucket again (`access::state`).
            if c.access.as_ref().is_some_and(|a| {
                let publisher = !c.is_subscriber();
                a.is_idle(st.access.limit(publisher), now_ns)
            }) {
                c.access = None;
            }
            match c.liveness.check(now, &hb) {
                Action::None => {}
                Action::SendPing => {
                    let ping = st.ping.clone();
                    st.push_bytes(slot, ping);
                    stats::add(&st.all_stats[st.id].pings_sent_total, 1);
                }
                Action::Close(reason) => {
                    let s = &st.all_stats[st.id];
                    let counter = match reason {
                        Reason::PongTimeout => &s.heartbeat_timeouts_total,
                        Reason::IdleTimeout => &s.idle_timeouts_total,
                        Reason::MaxLifetime => &s.lifetime_closes_total,
                        Reason::FragmentTimeout => &s.fragment_timeouts_total,
                        Reason::TokenExpired => &s.access.token_expired,
                    };
                    stats::add(counter, 1);
                    if reason.abort() {
                        c.set(flag::ABORT);
                    }
                    st.close_with_bytes(slot, encode_close(reason.code(), reason.text()));
                }
            }
        }
    }
}
