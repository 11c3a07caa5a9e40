//! The shard's end of the mesh: deliver what other participants sent, flush what this shard
//! sent (ringing only parked consumers), gate publishers on the backlog, and park.

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use std::sync::atomic::Ordering::Relaxed;

use crate::continuity::sequence::Source;
use crate::mesh::MeshItem;
use crate::obs::latency::LatencyKind;
use crate::shard::{Core, MESH_RETRY_MS};

impl Core {
    /// Deliver everything other participants sent so far (at most a ring's worth per ring),
    /// then resume publishers whose pause or backlog ended.
    pub fn drain_mesh(&mut self) {
        let mut batch = std::mem::take(&mut self.st.mesh_batch);
        self.st.link.try_drain(|i| batch.push(i));
        let now = self.st.now;
        for item in batch.drain(..) {
            match item {
                MeshItem::Publish(env) => {
                    self.st.latency.record(
                        LatencyKind::RingTransit,
                        now.saturating_duration_since(env.published_at),
                    );
                    self.deliver(&env);
                    // Continuity: the home shard numbers every message of its topics.
                    if self.st.desk.is_home(&env.topic) {
                        self.seq_append(&env.topic, &env.frame, env.published_at, Source::Local);
                    }
                }
                // From NATS, to this home shard: delivered like a publish, then numbered.
                MeshItem::Remote(b) => {
                    let (env, numbering) = *b;
                    self.deliver(&env);
                    let source = Source::remote(numbering);
                    self.seq_append(&env.topic, &env.frame, env.published_at, source);
                }
                // Continuity (`shard/seq.rs`).
                MeshItem::Sequenced(q) => self.deliver_sequenced(&q),
                MeshItem::SeqInterest { topic, shard, on } => {
                    self.st.seq_interest_at_home(&topic, shard, on)
                }
                MeshItem::Ask { topic, from, ask } => self.seq_serve(topic, from, &ask),
                MeshItem::Answer(a) => self.seq_answer(*a),
                MeshItem::DeepFetched(f) => self.seq_deep(*f),
                MeshItem::DeepHeadIs { topic, stored } => self.seq_head(topic, stored),
                MeshItem::Pause(t) => self.st.pause_count(&t, true),
                MeshItem::Resume(t) => self.st.pause_count(&t, false),
                // permessage-deflate: another shard's compressing readers of a topic came or went.
                MeshItem::Deflate { topic, variant, on } => {
                    self.st.deflate_remote(&topic, variant, on)
                }
                // Addressed to the bridge only.
                MeshItem::Interest { .. }
                | MeshItem::Numbered(_)
                | MeshItem::DeepFetch(_)
                | MeshItem::DeepHead { .. } => {}
            }
        }
        self.st.mesh_batch = batch;
        self.run_resumes();
    }

    /// Signal other participants about what this turn sent, release what they consumed and
    /// retry overflow. Publishers stopped by the mesh backlog resume once it is back at
    /// [`Governor::mesh_resume`](crate::flow::governor::Governor::mesh_resume).
    pub fn flush_mesh(&mut self) -> usize {
        let st = &mut self.st;
        let pending = st.link.flush();
        let s = st.stats();
        s.ring_overflow_total
            .store(st.link.overflow_total(), Relaxed);
        s.overflow_len.store(pending as u64, Relaxed);
        if st.mesh_stalled && st.link.mesh_bytes() <= st.governor.mesh_resume {
            st.mesh_stalled = false;
            let waiters = std::mem::take(&mut st.mesh_waiters);
            st.resume.extend(waiters);
        }
        st.mesh_retry = pending > 0 || st.mesh_stalled;
        pending
    }

    /// True when the loop may wait: nothing is left to do this turn and no item is in the
    /// rings. Registers `waker` as the mesh doorbell first (then re-checks the rings), so a
    /// producer that publishes after the check rings it. Items found by the re-check are kept
    /// for the next [`drain_mesh`](Self::drain_mesh).
    pub fn park(&mut self, waker: &Waker) -> bool {
        let st = &mut self.st;
        if !st.resume.is_empty() || !st.io.is_empty() || st.dirty_pos < st.dirty.len() {
            return false;
        }
        let mut cx = Context::from_waker(waker);
        let batch = &mut st.mesh_batch;
        matches!(
            st.link.poll_drain(&mut cx, |i| batch.push(i)),
            Poll::Pending
        )
    }

    /// How long the loop may wait for I/O: until the next tick or heartbeat sweep, the shutdown
    /// deadline, or a mesh backlog retry; zero when work is pending.
    pub fn poll_timeout(&self) -> Duration {
        let st = &self.st;
        if !st.resume.is_empty() || !st.mesh_batch.is_empty() || !st.io.is_empty() {
            return Duration::ZERO;
        }
        let until = |at: u32| (at.wrapping_sub(st.now_ms) as i32).max(0) as u64;
        let mut ms = until(st.next_tick);
        if st.hb.enabled() {
            ms = ms.min(until(st.next_sweep));
        }
        if st.shutting_down {
            ms = ms.min(until(st.shutdown_deadline));
        }
        if let Some(at) = st.shutdown_notice {
            ms = ms.min(until(at));
        }
        if st.mesh_retry {
            ms = ms.min(MESH_RETRY_MS);
        }
        Duration::from_millis(ms)
    }
}
