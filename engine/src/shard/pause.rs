//! The `pause` policy across shards, and stopped publishers.
//!
//! A subscriber whose queue goes over the high-water mark of a `pause` topic holds the topic
//! paused until it is back under the low-water mark (or leaves). Per topic a shard counts its
//! own holders (`local`) and how many shards hold it (`shards`, its own included); the first and
//! last local holder tell every other participant over the mesh (`Pause`/`Resume`). While any
//! shard holds a topic, its WebSocket publishers stop being read (TCP back-pressure reaches the
//! producer) and HTTP publishes get 503; the mesh backlog stops every publisher of the shard the
//! same way. A stopped publisher waits in a list and is resumed — its held input decoded, its
//! reads restarted — when what stopped it ends.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::conn::state::{flag, Phase};
use crate::mesh::MeshItem;
use crate::obs::stats;
use crate::obs::stats::Refusal;
use crate::runtime::driver::{ConnId, IoRequest};
use crate::shard::{Core, State};

/// A topic paused on this shard: by its own subscribers (`local`) and by how many shards (this
/// one included) hold it paused; publishers waiting for it to resume.
#[derive(Debug, Default)]
pub struct PauseState {
    local: usize,
    shards: usize,
    waiters: Vec<ConnId>,
}

impl State {
    /// True if some shard holds `topic` paused.
    pub fn is_paused(&self, topic: &str) -> bool {
        self.pauses.get(topic).is_some_and(|e| e.shards > 0)
    }

    /// Why a publish to `topic` must not happen now: the mesh backlog is over its share, or the
    /// topic is paused (with the 503 body an HTTP publisher gets).
    pub fn publish_refusal(&self, topic: &str) -> crate::conn::upgrade::Stopped {
        if self.mesh_stalled {
            Some((
                Refusal::MeshBacklog,
                b"other shards are behind (mesh backlog), retry later",
            ))
        } else if self.is_paused(topic) {
            Some((
                Refusal::Paused,
                b"topic paused by back-pressure, retry later",
            ))
        } else {
            None
        }
    }

    /// True if a publisher of `topic` on this shard must not publish now.
    pub fn publishing_stopped(&self, topic: &str) -> bool {
        self.mesh_stalled || self.is_paused(topic)
    }

    /// Stop reading publisher `id` of `topic` until what stops it ends. Each publisher stopped
    /// by the mesh backlog is counted once per episode (`mesh_stalls_total`).
    pub fn stop_publisher(&mut self, id: ConnId, topic: &str) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if !c.has(flag::STOPPED) {
            c.set(flag::STOPPED);
            self.io.push_back(IoRequest::StopRead(id));
        }
        if self.mesh_stalled {
            if !self.mesh_waiters.contains(&id) {
                self.mesh_waiters.push(id);
                stats::add(&self.stats().mesh_stalls_total, 1);
            }
        } else if let Some(p) = self.pauses.get_mut(topic).filter(|p| p.shards > 0) {
            if !p.waiters.contains(&id) {
                p.waiters.push(id);
            }
        }
    }

    pub fn hold_pause(&mut self, slot: u32, topic: &str, low: usize) {
        let Some(conn) = self.conns.at_mut(slot) else {
            return;
        };
        let held = conn.paused.get_or_insert_with(Default::default);
        if held.iter().any(|(t, _)| &**t == topic) {
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        held.push((name.clone(), low));
        stats::add(&self.stats().pauses_total, 1);
        let e = self.pauses.entry(name.clone()).or_default();
        e.local += 1;
        if e.local == 1 {
            e.shards += 1;
        }
        let first = e.local == 1;
        self.stats()
            .paused_topics
            .store(self.pauses.len() as u64, Relaxed);
        if first {
            self.notify(|| MeshItem::Pause(name.clone()));
        }
    }

    /// Release the pauses `slot` holds whose low-water mark is at least `unsent`
    /// (`usize::MAX`: all of them).
    pub fn release_pauses(&mut self, slot: u32, unsent: usize) {
        let Some(conn) = self.conns.at_mut(slot) else {
            return;
        };
        let Some(held) = conn.paused.as_mut() else {
            return;
        };
        let mut released = Vec::new();
        held.retain(|(t, low)| {
            let keep = unsent != usize::MAX && unsent > *low;
            if !keep {
                released.push(t.clone());
            }
            keep
        });
        if held.is_empty() {
            conn.paused = None;
        }
        for t in released {
            let e = self.pauses.get_mut(&t).expect("held pause is in the table");
            e.local -= 1;
            if e.local == 0 {
                self.pause_count(&t, false);
                self.notify(|| MeshItem::Resume(t.clone()));
            }
        }
    }

    /// One more (`up`) or one fewer shard holds `topic` paused; at zero, resume its publishers.
    pub fn pause_count(&mut self, topic: &Arc<str>, up: bool) {
        let e = self.pauses.entry(topic.clone()).or_default();
        if up {
            e.shards += 1;
        } else {
            e.shards = e.shards.saturating_sub(1);
        }
        if e.shards == 0 && e.local == 0 {
            let waiters = self.pauses.remove(topic).expect("present").waiters;
            self.resume.extend(waiters);
        }
        self.stats()
            .paused_topics
            .store(self.pauses.len() as u64, Relaxed);
    }

    /// Send a notice to every other participant (shards and the bridge).
    pub(super) fn notify(&mut self, item: impl Fn() -> MeshItem) {
        for dest in (0..self.link.shards()).filter(|&d| d != self.id) {
            self.link.send(dest, item());
        }
    }
}

impl Core {
    /// Publishers whose pause or mesh backlog ended: decode what they hold and read again (or
    /// stop again, if something else stops them now).
    pub fn run_resumes(&mut self) {
        while !self.st.resume.is_empty() {
            for id in std::mem::take(&mut self.st.resume) {
                let Some(c) = self.st.conns.get(id) else {
                    continue;
                };
                if c.phase != Phase::Open || !c.has(flag::STOPPED) {
                    continue;
                }
                let Some(topic) = c.publishes().cloned() else {
                    continue;
                };
                if self.st.publishing_stopped(&topic) {
                    self.st.stop_publisher(id, &topic);
                    continue;
                }
                if let Some(c) = self.st.conns.get_mut(id) {
                    c.clear(flag::STOPPED | flag::HELD);
                }
                self.handle_ws_input(id, &mut []);
                let Some(c) = self.st.conns.get(id) else {
                    continue;
                };
                if c.phase == Phase::Open && !c.has(flag::STOPPED) {
                    if c.has(flag::READ_EOF) {
                        // The peer finished while it was stopped: all it sent is published.
                        self.end(id, crate::runtime::driver::CloseMode::Graceful);
                    } else {
                        self.st.io.push_back(IoRequest::Read(id));
                    }
                }
            }
        }
    }
}
