//! Writing and closing: what the core hands the driver at the end of a turn, and the
//! connection's way out.
//!
//! Writing is corked: queueing marks a connection dirty once; the flush asks
//! [`Core::next_transmit`] for each dirty connection with frames and no send in flight, and
//! [`Core::gather_into`] hands the driver one gather of everything queued (up to the iovec and
//! byte limits), pinning those frames until [`Core::handle_sent`]: the driver holds no
//! reference to them (driver contract 3), so a pinned frame stays in its queue — never
//! dropped or conflated — until the send's completion. A connection that ends meanwhile lets
//! its queue go at once (and the ledger its charge, as before), and the shard keeps a `Bytes`
//! handle to each frame the send reads (`State::ended_in_flight`) until the completion, or
//! until [`Core::handle_closed`] for a send the driver dropped at close.
//!
//! Closing: a final frame (close frame, HTTP response) puts the connection in
//! [`Phase::Closing`] under the flush deadline; once it is written the connection half-closes
//! and lingers (discarding input) until the peer's EOF or the linger deadline, unless it is an
//! abort (dead peer) or the peer already ended. Then the driver is asked to close, and the slot
//! is freed when the driver reports the socket released ([`Core::handle_closed`]).

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use shardcast_proto::{encode_close, CloseCode};

use crate::conn::closing::AbortReason;
use crate::conn::state::{flag, Phase};
use crate::flow::queue::QueuedFrame;
use crate::obs::latency::LatencyKind;
use crate::obs::stats;
use crate::runtime::clock::reached;
use crate::runtime::driver::{CloseMode, ConnId, Gather, IoRequest, MAX_GATHER_BYTES, MAX_IOVECS};
use crate::runtime::shutdown::SHUTDOWN_REASON;
use crate::shard::{Core, State, CLOSE_LINGER_MS};

impl State {
    /// Queue a shared frame on `slot` (no-op once it is closing) and mark it dirty.
    pub fn push_frame(&mut self, slot: u32, frame: Rc<QueuedFrame>) {
        let Some(c) = self.conns.at_mut(slot) else {
            return;
        };
        if c.closing() {
            return;
        }
        c.queue.push(frame);
        self.mark_dirty(slot);
    }

    /// Queue a frame of the connection's own (counted in the ledger, no topic, no limits).
    pub fn push_bytes(&mut self, slot: u32, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let qf = self.ledger.frame(frame, None, None);
        self.push_frame(slot, qf);
    }

    /// Queue a final frame of the connection's own and close after it (once).
    pub fn close_with_bytes(&mut self, slot: u32, frame: Bytes) {
        let qf = self.ledger.frame(frame, None, None);
        self.close_with_frame(slot, qf);
    }

    /// Queue a final shared frame and close after it (once): flushed under the close deadline
    /// (an abort gets until the next tick: what the socket takes now).
    pub fn close_with_frame(&mut self, slot: u32, frame: Rc<QueuedFrame>) {
        let Some(c) = self.conns.at_mut(slot) else {
            return;
        };
        if c.closing() {
            return;
        }
        c.http = None;
        c.queue.push(frame);
        c.phase = Phase::Closing;
        // Isolation: a close that does not flush within close_flush_timeout_ms is reset
        // (`timers.rs`, `conn::closing`).
        let wait = if c.has(flag::ABORT) {
            0
        } else {
            self.close_flush_ms()
        };
        let id = self.conns.id_at(slot).expect("occupied");
        self.set_deadline(id, self.now_ms.wrapping_add(wait));
        self.mark_dirty(slot);
    }

    /// Ask the driver to close `id` (its registrations are released by the caller).
    pub fn request_close(&mut self, id: ConnId, mode: CloseMode) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.phase == Phase::Ended {
            return;
        }
        c.phase = Phase::Ended;
        // Its kernel bytes go with the socket (isolation).
        let kernel = std::mem::take(&mut c.kernel) as usize;
        self.ledger.kernel_changed(kernel, 0, c.has(flag::SLOW));
        // Its frames go, with their charge (nothing can release them sooner) — but a send in
        // flight still reads its own: the shard keeps a handle to each until the completion
        // (driver contract 3; `handle_sent`, or `handle_closed` when the driver dropped it).
        let held = c.queue.release_in_flight();
        c.queue.trim(&self.ledger);
        if !held.is_empty() {
            self.ended_in_flight.insert(id.slot, held);
        }
        c.rx = None;
        if let Some(http) = c.http.take() {
            self.recycle(http.buf);
        }
        self.io.push_back(IoRequest::Close(id, mode));
    }
}

impl Core {
    /// A closing connection whose final frame is written: half-close and linger, or end at once
    /// (an abort, or the peer already ended its side).
    pub fn finish_close(&mut self, id: ConnId) {
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        if c.phase != Phase::Closing || !c.queue.is_empty() || c.has(flag::SENDING) {
            return;
        }
        // wss://: close_notify goes out before the half-close.
        if c.has(flag::TLS) && self.tls_close_pending(id) {
            return;
        }
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        // A peer that stopped answering (ABORT) may not read either: reset it if the kernel
        // still holds bytes for it, so nothing stays pinned in an orphaned socket.
        if c.has(flag::ABORT) {
            return self.end(id, CloseMode::ResetIfUnsent);
        }
        if c.has(flag::READ_EOF) {
            return self.end(id, CloseMode::Graceful);
        }
        c.phase = Phase::Linger;
        st.io.push_back(IoRequest::ShutdownWrite(id));
        st.set_deadline(id, st.now_ms.wrapping_add(CLOSE_LINGER_MS));
    }

    /// End `id` now: leave every topic, drop what is queued, and ask the driver to close.
    pub fn end(&mut self, id: ConnId, mode: CloseMode) {
        if self.st.conns.get(id).is_none() {
            return;
        }
        self.unregister(id.slot);
        self.st.request_close(id, mode);
    }

    /// The next connection to write to this turn, if any.
    pub fn next_transmit(&mut self) -> Option<ConnId> {
        let st = &mut self.st;
        while st.dirty_pos < st.dirty.len() {
            let slot = st.dirty[st.dirty_pos];
            st.dirty_pos += 1;
            let Some(c) = st.conns.at_mut(slot) else {
                continue;
            };
            c.clear(flag::DIRTY);
            let queued = !c.queue.is_empty();
            // wss://: TLS output (handshake, alert, close_notify) needs a flush too.
            let queued = if c.has(flag::TLS) {
                Core::tls_ready(st, slot, queued)
            } else {
                queued
            };
            let Some(c) = st.conns.at_mut(slot) else {
                continue;
            };
            let ready = queued && !c.has(flag::SENDING) && c.phase != Phase::Ended;
            if ready {
                return st.conns.id_at(slot);
            }
        }
        st.dirty.clear();
        st.dirty_pos = 0;
        None
    }

    /// At most how many frames [`gather_into`](Self::gather_into) hands over for `id` now: a
    /// TLS connection's gather is one ciphertext buffer.
    pub fn gather_bound(&self, id: ConnId) -> usize {
        match self.st.conns.get(id) {
            Some(c) if c.has(flag::TLS) => 1,
            Some(c) => c.queue.len_frames().min(MAX_IOVECS),
            None => 0,
        }
    }

    /// Hand one gather of `id`'s queue to the driver and pin it (see the module docs); returns
    /// its bytes.
    pub fn gather_into(&mut self, id: ConnId, out: &mut Gather<'_>) -> usize {
        let Some(c) = self.st.conns.get_mut(id) else {
            return 0;
        };
        if c.has(flag::TLS) {
            return self.tls_gather(id, out);
        }
        let (_, bytes) = c.queue.gather(MAX_IOVECS, MAX_GATHER_BYTES, |b, offset| {
            // SAFETY: the queue pins these frames (`SendQueue::gather`): they stay in it until
            // `handle_sent` unpins them after this send's completion; if the connection ends
            // first, `request_close` moves a handle to each into `State::ended_in_flight`,
            // released by that completion or by `handle_closed` (the socket released).
            unsafe { out.push(&b[offset..]) }
        });
        if bytes > 0 {
            c.set(flag::SENDING);
        }
        bytes
    }

    /// The send in flight on `id` completed.
    pub fn handle_sent(&mut self, id: ConnId, result: io::Result<usize>) {
        let st = &mut self.st;
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        if c.has(flag::TLS) {
            return self.tls_sent(id, result);
        }
        c.clear(flag::SENDING);
        if c.phase == Phase::Ended {
            // The kernel is done with what this send read (kept since the end: `request_close`).
            st.ended_in_flight.remove(&id.slot);
            return;
        }
        match result {
            Ok(n) if n > 0 => {
                // One clock reading per turn, shared by every frame the send completed.
                let now = st.now;
                match st.latency.recorder(LatencyKind::Broadcast) {
                    Some(mut broadcast) => {
                        c.queue.advance_with(n, |f| {
                            if let Some(at) = f.published_at {
                                broadcast.record_since(now, at);
                            }
                        });
                    }
                    None => c.queue.advance(n),
                }
                // Progress also extends a draining connection's shutdown flush (`conn::closing`).
                c.write_progress = st.now_ms;
                c.queue.unpin();
                stats::add(&st.all_stats[st.id].bytes_out, n as u64);
                let more = !c.queue.is_empty();
                st.note_spare(id.slot);
                st.after_write(id.slot);
                if more {
                    st.mark_dirty(id.slot);
                } else {
                    self.finish_close(id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                c.queue.unpin();
                st.mark_dirty(id.slot);
            }
            // The socket is gone (or took nothing for a non-empty gather).
            _ => {
                c.queue.unpin();
                self.end(id, CloseMode::Graceful);
            }
        }
        // Continuity: a resume waiting for this connection to drain asks for its next chunk.
        if self.st.desk.any_draining() {
            self.seq_drained(id.slot);
        }
    }

    /// The driver released `id`'s socket and nothing is pending on it: free the slot.
    pub fn handle_closed(&mut self, id: ConnId) {
        // Every way out unregisters before asking for the close; this keeps a freed slot out
        // of every topic whatever the path.
        self.unregister(id.slot);
        let Some(mut conn) = self.st.conns.remove(id) else {
            return;
        };
        // Nothing is pending on the socket any more: what a send the driver dropped at close
        // (epoll) read goes now; the queue was emptied at the end, its entry array is trimmed.
        self.st.ended_in_flight.remove(&id.slot);
        conn.queue.unpin();
        conn.queue.clear();
        conn.queue.trim(&self.st.ledger);
        self.tls_freed(id.slot);
        let st = &mut self.st;
        // Access: give back the per-address ticket (under a concurrent limit).
        if let Some(a) = conn.access {
            st.access.ip.release(a.ticket);
        }
        st.active -= 1;
        st.global_active.fetch_sub(1, Relaxed);
        stats::sub(&st.stats().connections_active, 1);
    }

    /// Begin graceful shutdown at `now`: no more connections, 1001 to every client, and at most
    /// `shutdown_grace_ms` for the flush ([`is_done`](Self::is_done)).
    pub fn begin_shutdown(&mut self) {
        if self.st.shutting_down {
            return;
        }
        self.st.shutting_down = true;
        let grace = self
            .st
            .config
            .shutdown_grace_ms
            .min(crate::conn::heartbeat::MAX_DURATION_MS) as u32;
        self.st.io.push_back(IoRequest::StopAccepting);
        // Binance's contract (access, issue 14): a `serverShutdown` event to every client,
        // then the 1001 close `shutdown_notice_ms` later (`handle_time`); the grace follows.
        let unix_ms = crate::access::token::unix_now_ms();
        let event = crate::conn::control::server_shutdown_event(unix_ms);
        self.push_all(&shardcast_proto::encode_frame(
            shardcast_proto::OpCode::Text,
            event.as_bytes(),
        ));
        let notice = self
            .st
            .config
            .shutdown_notice_ms
            .min(crate::conn::heartbeat::MAX_DURATION_MS) as u32;
        let now = self.st.now_ms;
        self.st.shutdown_deadline = now.wrapping_add(notice).wrapping_add(grace);
        if notice == 0 {
            self.close_all(&encode_close(CloseCode::GOING_AWAY, SHUTDOWN_REASON));
        } else {
            self.st.shutdown_notice = Some(now.wrapping_add(notice));
        }
    }

    /// The shutdown notice is over: close every client (1001).
    pub(crate) fn end_shutdown_notice(&mut self) {
        if self.st.shutdown_notice.take().is_some() {
            self.close_all(&encode_close(CloseCode::GOING_AWAY, SHUTDOWN_REASON));
        }
    }

    /// At the end of the shutdown grace: the connections still here are dropped by the driver
    /// with a reset (its teardown sets `SO_LINGER` 0); count them as aborts.
    pub fn count_abandoned(&self) {
        for _ in 0..self.st.conns.len() {
            self.st.stats().abort(AbortReason::Shutdown);
        }
    }

    /// True once shutdown began and every connection is gone, or the grace period is over.
    pub fn is_done(&self) -> bool {
        self.st.shutting_down
            && (self.st.conns.is_empty() || reached(self.st.now_ms, self.st.shutdown_deadline))
    }
}
