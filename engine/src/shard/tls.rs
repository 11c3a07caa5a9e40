//! wss://: the core's side of a TLS connection (`flag::TLS`). The session and its buffers live in
//! `tls::ShardTls`; this file is the glue at the points where a plain connection's bytes pass:
//! accept (start a session), receive (decrypt, then the plain path), the flush (pending TLS output
//! and the queued frames sealed into one ciphertext send), a completed send (the queue already
//! advanced at sealing), close (`close_notify` before the half-close), the handshake deadline
//! and EOF during the handshake (counted failures). docs/ENGINE.md, "TLS".

use std::io;

use bytes::Bytes;

use crate::conn::state::{flag, Phase};
use crate::obs::latency::LatencyKind;
use crate::obs::stats;
use crate::runtime::driver::{CloseMode, ConnId, MAX_IOVECS};
use crate::shard::{Core, CLOSE_FLUSH_MS};
use crate::tls::shard::MAX_SEAL_PLAINTEXT;
use crate::tls::{Failure, ShardTls};

impl Core {
    /// Serve wss:// on this shard's listener: every accepted connection starts a TLS session.
    pub fn set_tls(&mut self, tls: ShardTls) {
        self.st.tls = Some(tls);
    }

    /// A connection was just admitted on `id`: start its session (TLS listener only).
    pub(crate) fn tls_accepted(&mut self, id: ConnId) {
        let Some(tls) = self.st.tls.as_mut() else {
            return;
        };
        match tls.open(id.slot) {
            Ok(()) => {
                if let Some(c) = self.st.conns.get_mut(id) {
                    c.set(flag::TLS);
                }
            }
            Err(why) => {
                self.st.stats().tls.fail(why);
                self.end(id, CloseMode::Graceful);
            }
        }
    }

    /// Ciphertext arrived on TLS connection `id`: decrypt it and hand the plaintext to the plain
    /// path; a failure sends the session's alert and closes.
    pub(crate) fn handle_ciphertext(&mut self, id: ConnId, data: &mut [u8]) {
        let Some(phase) = self.st.conns.get(id).map(|c| c.phase) else {
            return;
        };
        // Closing or lingering: input is drained unread, as on a plain connection.
        if !matches!(phase, Phase::Http | Phase::Open) {
            return;
        }
        let Some(tls) = self.st.tls.as_mut() else {
            return;
        };
        let mut plain = tls.take_plain();
        let result = tls.receive(id.slot, data, &mut plain);
        match result {
            Ok(got) => {
                if got.opened {
                    if let Some(s) = tls.session(id.slot) {
                        self.st.all_stats[self.st.id].tls.opened(s);
                    }
                }
                if !plain.is_empty() {
                    self.handle_plaintext(id, &mut plain);
                }
                if got.peer_closed {
                    // close_notify: the client sends nothing more.
                    self.handle_read_closed(id, false);
                }
            }
            Err(why) => self.tls_failed(id, why),
        }
        if let Some(tls) = self.st.tls.as_mut() {
            tls.give_plain(plain);
            if tls.wants_transmit(id.slot) {
                self.st.mark_dirty(id.slot);
            }
        }
    }

    /// The session of `id` failed: count it, drop what was queued, send its alert, close.
    fn tls_failed(&mut self, id: ConnId, why: Failure) {
        self.st.stats().tls.fail(why);
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        if c.phase == Phase::Ended {
            return;
        }
        c.queue.clear();
        c.rx = None;
        let http = c.http.take();
        c.phase = Phase::Closing;
        if let Some(http) = http {
            st.recycle(http.buf);
        }
        st.set_deadline(id, st.now_ms.wrapping_add(CLOSE_FLUSH_MS));
        st.mark_dirty(id.slot);
        self.finish_close(id);
    }

    /// True if TLS connection `slot` has something to send: TLS output, or queued frames once
    /// the session is open.
    pub(crate) fn tls_ready(st: &crate::shard::State, slot: u32, queued: bool) -> bool {
        st.tls
            .as_ref()
            .is_some_and(|t| t.wants_transmit(slot) || (queued && t.is_open(slot)))
    }

    /// The flush for TLS connection `id`: its pending TLS output and its queued frames sealed
    /// into one ciphertext `Bytes`, handed to the driver as one iovec. The sealed frames leave
    /// the queue now (nothing is pinned). Returns the ciphertext bytes.
    pub(crate) fn tls_gather(&mut self, id: ConnId, frame: &mut dyn FnMut(&Bytes, usize)) -> usize {
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return 0;
        };
        let mut frames: Vec<Bytes> = Vec::new();
        c.queue.gather(MAX_IOVECS, MAX_SEAL_PLAINTEXT, |b, off| {
            frames.push(b.slice(off..))
        });
        c.queue.unpin();
        let Some(tls) = st.tls.as_mut() else {
            return 0;
        };
        let out = tls.transmit(id.slot, &frames);
        drop(frames);
        if out.plaintext > 0 {
            let now = st.now;
            match st.latency.recorder(LatencyKind::Broadcast) {
                Some(mut broadcast) => c.queue.advance_with(out.plaintext, |f| {
                    if let Some(at) = f.published_at {
                        broadcast.record(now.saturating_duration_since(at));
                    }
                }),
                None => c.queue.advance(out.plaintext),
            }
        }
        let n = out.bytes.len();
        if n > 0 {
            c.set(flag::SENDING);
            frame(&out.bytes, 0);
        }
        if let Some(why) = out.failed {
            self.tls_failed(id, why);
        }
        n
    }

    /// The ciphertext send on TLS connection `id` completed (all of it, or an error: both
    /// drivers complete a send whole). The queue advanced when it was sealed.
    pub(crate) fn tls_sent(&mut self, id: ConnId, result: io::Result<usize>) {
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        c.clear(flag::SENDING);
        if c.phase == Phase::Ended {
            return;
        }
        match result {
            Ok(n) if n > 0 => {
                c.write_progress = st.now_ms;
                stats::add(&st.all_stats[st.id].bytes_out, n as u64);
                let more = !c.queue.is_empty() || Core::tls_ready(st, id.slot, false);
                st.after_write(id.slot);
                if more {
                    st.mark_dirty(id.slot);
                } else {
                    self.finish_close(id);
                }
            }
            // Sealed records cannot be sent again: a lost send ends the session.
            _ => self.end(id, CloseMode::Graceful),
        }
    }

    /// Before the half-close of TLS connection `id`: queue `close_notify`; true if it must be
    /// flushed first.
    pub(crate) fn tls_close_pending(&mut self, id: ConnId) -> bool {
        let st = &mut self.st;
        let pending = st.tls.as_mut().is_some_and(|t| t.close(id.slot));
        if pending {
            st.mark_dirty(id.slot);
        }
        pending
    }

    /// The handshake deadline passed: a TLS connection still in its TLS handshake is counted
    /// (`timeout`) and closed without a response (there is no channel for one). True if handled.
    pub(crate) fn tls_timed_out(&mut self, id: ConnId) -> bool {
        let handshaking = self
            .st
            .tls
            .as_ref()
            .is_some_and(|t| t.is_handshaking(id.slot));
        if handshaking {
            self.st.stats().tls.fail(Failure::Timeout);
            self.end(id, CloseMode::Graceful);
        }
        handshaking
    }

    /// Input ended on TLS connection `id`: during the TLS handshake that is a failure
    /// (`closed_early`).
    pub(crate) fn tls_read_closed(&mut self, id: ConnId) {
        if self
            .st
            .tls
            .as_ref()
            .is_some_and(|t| t.is_handshaking(id.slot))
        {
            self.st.stats().tls.fail(Failure::ClosedEarly);
        }
    }

    /// `slot` was freed: drop its session.
    pub(crate) fn tls_freed(&mut self, slot: u32) {
        if let Some(t) = self.st.tls.as_mut() {
            t.remove(slot);
        }
    }
}
