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
use crate::runtime::driver::{CloseMode, ConnId, Gather, MAX_IOVECS};
use crate::shard::Core;
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
        self.tls_rebuffer(id);
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
        // Isolation: close_notify that does not flush within close_flush_timeout_ms is reset.
        let wait = st.close_flush_ms();
        st.set_deadline(id, st.now_ms.wrapping_add(wait));
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
    pub(crate) fn tls_gather(&mut self, id: ConnId, gather: &mut Gather<'_>) -> usize {
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
                        broadcast.record_since(now, at);
                    }
                }),
                None => c.queue.advance(out.plaintext),
            }
        }
        let n = out.bytes.len();
        if n > 0 {
            c.set(flag::SENDING);
            // SAFETY: `ShardTls` keeps this ciphertext (`in_flight`) until `tls_sent` reports
            // the send's completion, or the slot is freed after the driver's `closed`.
            unsafe { gather.push(&out.bytes) };
        }
        if out.plaintext > 0 {
            st.note_spare(id.slot);
        }
        self.tls_recharge(id);
        self.tls_rebuffer(id);
        if let Some(why) = out.failed {
            self.tls_failed(id, why);
        }
        n
    }

    /// Charge TLS connection `id` for the ciphertext its shard holds for it (in flight or left
    /// unsent), as part of its kernel bytes: the plaintext left the queue when it was sealed,
    /// so without this a stalled TLS send would be memory nothing counts (isolation).
    fn tls_recharge(&mut self, id: ConnId) {
        let st = &mut self.st;
        let Some(tls) = st.tls.as_mut() else {
            return;
        };
        let (was, now) = tls.recharge(id.slot);
        if was != now {
            if let Some(kernel) = st.conns.get(id).map(|c| c.kernel as usize) {
                st.set_kernel(id, kernel.saturating_sub(was) + now);
            }
        }
    }

    /// The ciphertext send on TLS connection `id` completed: all of it, part of it (io_uring on
    /// a full socket: the rest goes first in the next flush, `ShardTls::sent`), or an error.
    /// The queue advanced when it was sealed.
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
                if let Some(t) = st.tls.as_mut() {
                    t.sent(id.slot, n);
                }
                self.tls_recharge(id);
                let st = &mut self.st;
                let Some(c) = st.conns.get_mut(id) else {
                    return;
                };
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

    /// `slot` was freed: drop its session and give back what its buffers were charged.
    pub(crate) fn tls_freed(&mut self, slot: u32) {
        if let Some(t) = self.st.tls.as_mut() {
            let charged = t.remove(slot);
            self.st.ledger.inbound_changed(charged, 0);
        }
    }

    /// Charge TLS connection `id`'s session buffers as unfinished input (isolation): rustls
    /// keeps an incomplete record (≤ ~18 KiB) and, during the handshake, up to 64 KiB of a
    /// fragmented message.
    fn tls_rebuffer(&mut self, id: ConnId) {
        if let Some(t) = self.st.tls.as_mut() {
            let (was, now) = t.rebuffer(id.slot);
            if was != now {
                self.st.ledger.inbound_changed(was, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core's TLS glue on a virtual clock, against an in-memory rustls client: handshake,
    //! upgrade, a broadcast sealed for a TLS subscriber next to a plain one (same shared frame),
    //! close_notify after the close frame, the handshake deadline counted as a timeout with
    //! nothing sent in the clear.

    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::ClientConnection;
    use shardcast_proto::MessageKind;

    use crate::conn::state::{flag, Conn};
    use crate::runtime::driver::{Admit, ConnId, Handler, IoRequest};
    use crate::shard::tests::cores;
    use crate::shard::Core;
    use crate::tls::options::{ClientAuth, Tickets, TlsVersion};
    use crate::tls::{ShardTls, TlsContext, TlsOptions};

    /// A core serving TLS with a fresh CA and leaf; the client's root.
    fn tls_core(args: &[&str], t0: Instant) -> (Core, CertificateDer<'static>) {
        let dir = std::env::temp_dir().join(format!(
            "shardcast-core-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let ctx = TlsContext::start(TlsOptions {
            cert: c,
            key: k,
            min_version: TlsVersion::Tls12,
            client_ca: None,
            client_auth: ClientAuth::Required,
            tickets: Tickets::On,
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut core = cores(1, args, t0).pop().unwrap();
        core.set_tls(ShardTls::new(ctx.shard_config()));
        (core, cert.der().clone())
    }

    fn accept(core: &mut Core) -> ConnId {
        let Admit::Accept(id) = core.handle_accepted("127.0.0.1:40000".parse().unwrap()) else {
            panic!("refused")
        };
        id
    }

    fn client(root: &CertificateDer<'static>) -> ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// The driver's flush: every transmit completes at once; returns the bytes per connection
    /// and the closes requested (reported closed at once).
    fn flush(core: &mut Core) -> (Vec<(ConnId, Vec<u8>)>, Vec<ConnId>) {
        let (mut out, mut closes) = (Vec::new(), Vec::new());
        loop {
            while let Some(req) = core.poll_io() {
                if let IoRequest::Close(id, _) = req {
                    closes.push(id);
                    core.handle_closed(id);
                }
            }
            let Some(id) = core.poll_transmit() else {
                return (out, closes);
            };
            let got = crate::shard::tests::gathered(core, id).concat();
            core.handle_sent(id, Ok(got.len()));
            out.push((id, got));
        }
    }

    /// A TLS core with one client through its handshake and upgraded (subscribed to `t`).
    fn subscribed() -> (Core, ConnId, ClientConnection) {
        let (mut core, root) = tls_core(&[], Instant::now());
        let id = accept(&mut core);
        let mut c = client(&root);
        pump(&mut core, id, &mut c);
        c.writer().write_all(UPGRADE).unwrap();
        pump(&mut core, id, &mut c);
        (core, id, c)
    }

    /// Move bytes both ways until neither side has more to say; returns the closes requested.
    fn pump(core: &mut Core, id: ConnId, c: &mut ClientConnection) -> Vec<ConnId> {
        let mut closes = Vec::new();
        for _ in 0..16 {
            let mut up = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut up).unwrap();
            }
            if !up.is_empty() {
                core.handle_received(id, &mut up);
            }
            let (out, closed) = flush(core);
            closes.extend(closed);
            let down: Vec<u8> = out
                .into_iter()
                .filter(|(to, _)| *to == id)
                .flat_map(|(_, b)| b)
                .collect();
            if up.is_empty() && down.is_empty() {
                break;
            }
            let mut rd = &down[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        closes
    }

    fn plaintext(c: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = c.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    const UPGRADE: &[u8] = b"GET /ws/t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn handshake_upgrade_broadcast_and_close_notify() {
        let t0 = Instant::now();
        let (mut core, root) = tls_core(&[], t0);
        let id = accept(&mut core);
        assert!(core.conn(id).unwrap().has(flag::TLS));
        let mut c = client(&root);
        pump(&mut core, id, &mut c);
        assert!(!c.is_handshaking());
        assert_eq!(core.stats().tls.snapshot().handshakes, 1);
        c.writer().write_all(UPGRADE).unwrap();
        pump(&mut core, id, &mut c);
        let head = plaintext(&mut c);
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        // Ten publishes queued before one flush: sealed together, in order.
        for i in 0..10u8 {
            core.publish(&Arc::from("t"), MessageKind::Binary, &[i; 64]);
        }
        let (out, _) = flush(&mut core);
        let [(to, sealed)] = &out[..] else {
            panic!("one send: {out:?}")
        };
        assert_eq!(*to, id);
        // One application-data record (TLS 1.3: 5 B header + 660 B + content type + 16 B tag).
        assert_eq!(sealed[0], 23);
        assert_eq!(
            sealed.len(),
            5 + 10 * 66 + 1 + 16,
            "one record for ten frames"
        );
        let mut rd = &sealed[..];
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
        let got = plaintext(&mut c);
        assert_eq!(got.len(), 10 * 66);
        for (i, f) in got.chunks(66).enumerate() {
            assert_eq!(&f[..2], &[0x82, 64]);
            assert!(f[2..].iter().all(|&b| b == i as u8));
        }
        // A client close: the close frame, then close_notify, then the half-close.
        let mut close = bytes::BytesMut::new();
        shardcast_proto::encode_client_frame(
            &mut close,
            shardcast_proto::OpCode::Close,
            true,
            &[0x03, 0xe8],
            [1, 2, 3, 4],
        );
        c.writer().write_all(&close).unwrap();
        pump(&mut core, id, &mut c);
        assert_eq!(plaintext(&mut c), vec![0x88, 2, 0x03, 0xe8]);
        // close_notify arrived: rustls reports a clean end of the plaintext stream.
        assert_eq!(c.reader().read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn handshake_deadline_is_a_counted_timeout_with_nothing_in_the_clear() {
        let t0 = Instant::now();
        let (mut core, _) = tls_core(&["--handshake-timeout-ms", "1000"], t0);
        let id = accept(&mut core);
        // Half a ClientHello.
        core.handle_received(id, &mut [0x16, 0x03, 0x01, 0x02, 0x00]);
        core.handle_time(t0 + Duration::from_millis(1500));
        let (out, closes) = flush(&mut core);
        assert!(out.is_empty(), "nothing sent: {out:?}");
        assert_eq!(closes, vec![id]);
        assert_eq!(
            core.stats().tls.snapshot().failures[crate::tls::Failure::Timeout as usize],
            1
        );
        assert_eq!(core.active(), 0);
    }

    /// A send that completes in part (io_uring on a full socket) leaves the rest of its records
    /// to go first, whole, before anything new is sealed: the client decrypts everything.
    #[test]
    fn a_partial_send_is_completed_before_anything_new() {
        let (mut core, id, mut c) = subscribed();
        plaintext(&mut c);
        for i in 0..4u8 {
            core.publish(&Arc::from("t"), MessageKind::Binary, &[i; 3000]);
        }
        let mut wire = Vec::new();
        // The first send writes 100 bytes, the next 7, then whatever is asked.
        for take in [100, 7] {
            let id2 = core.poll_transmit().expect("something to send");
            assert_eq!(id2, id);
            let got = crate::shard::tests::gathered(&mut core, id).concat();
            assert!(got.len() > take);
            wire.extend_from_slice(&got[..take]);
            core.handle_sent(id, Ok(take));
        }
        // More published meanwhile: sealed only after the cut records went out.
        core.publish(&Arc::from("t"), MessageKind::Binary, &[9; 100]);
        let (out, _) = flush(&mut core);
        wire.extend(out.into_iter().flat_map(|(_, b)| b));
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().expect("records intact");
        }
        let got = plaintext(&mut c);
        let frames = 4 * (4 + 3000) + (2 + 100);
        assert_eq!(got.len(), frames);
        assert!(got[4..3004].iter().all(|&b| b == 0));
        assert!(got[frames - 100..].iter().all(|&b| b == 9));
    }

    /// Isolation: sealed plaintext leaves the queue, so the ciphertext the shard holds for a
    /// connection (its send in flight, what a partial send left) is charged as its kernel
    /// bytes until it is written, and a kernel sample keeps that charge beside it.
    #[test]
    fn ciphertext_held_for_a_connection_is_charged_until_written() {
        let (mut core, id, _client) = subscribed();
        assert_eq!(
            core.ledger().kernel(),
            0,
            "nothing held after the handshake"
        );
        for i in 0..4u8 {
            core.publish(&Arc::from("t"), MessageKind::Binary, &[i; 3000]);
        }
        let kernel = |core: &Core| core.conn(id).map_or(0, |c| c.kernel as usize);
        assert_eq!(core.poll_transmit(), Some(id));
        let got = crate::shard::tests::gathered(&mut core, id).concat();
        assert!(got.len() > 12_000, "four frames sealed: {}", got.len());
        assert_eq!(kernel(&core), got.len(), "in flight: charged");
        assert_eq!(core.ledger().kernel(), got.len());
        // The kernel reports its buffer after the send: the ciphertext charge stays beside it
        // until the completion says how much was written.
        core.kernel_held(id, 500);
        assert_eq!(kernel(&core), 500 + got.len());
        core.handle_sent(id, Ok(100));
        assert_eq!(
            kernel(&core),
            500 + got.len() - 100,
            "the unsent rest stays charged"
        );
        // The rest goes out whole; then nothing is held.
        assert_eq!(core.poll_transmit(), Some(id));
        let rest = crate::shard::tests::gathered(&mut core, id).concat();
        assert_eq!(rest.len(), got.len() - 100);
        assert_eq!(kernel(&core), 500 + rest.len());
        core.kernel_held(id, 0);
        core.handle_sent(id, Ok(rest.len()));
        assert_eq!(kernel(&core), 0);
        assert_eq!(core.ledger().kernel(), 0);
        // A connection that ends with ciphertext in flight gives its charge back.
        core.publish(&Arc::from("t"), MessageKind::Binary, &[7; 3000]);
        assert_eq!(core.poll_transmit(), Some(id));
        crate::shard::tests::gathered(&mut core, id);
        assert!(core.ledger().kernel() > 3000);
        core.end(id, crate::runtime::driver::CloseMode::Reset);
        core.handle_sent(id, Ok(10));
        assert_eq!(core.ledger().kernel(), 0, "released with the connection");
    }

    /// A connection from the plain listener beside TLS (`listen_plain`) gets no session: its
    /// upgrade and its frames are plain, next to a TLS subscriber of the same topic.
    #[test]
    fn the_plain_listener_serves_plain_beside_tls() {
        let (mut core, tls_id, mut tls_client) = subscribed();
        plaintext(&mut tls_client); // its 101
        let peer = "127.0.0.1:40001".parse().unwrap();
        let Admit::Accept(id) = core.handle_accepted_via(peer, crate::runtime::driver::Via::Plain)
        else {
            panic!("refused")
        };
        assert!(core.conn(id).is_some_and(|c| !c.has(flag::TLS)));
        core.handle_received(id, &mut UPGRADE.to_vec());
        let (out, _) = flush(&mut core);
        let head = out
            .iter()
            .find(|(to, _)| *to == id)
            .map(|(_, b)| b.clone())
            .unwrap();
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        core.publish(&Arc::from("t"), MessageKind::Text, b"both");
        let (out, _) = flush(&mut core);
        let plain: Vec<u8> = out
            .iter()
            .filter(|(to, _)| *to == id)
            .flat_map(|(_, b)| b.clone())
            .collect();
        assert_eq!(plain, b"\x81\x04both", "a plain frame");
        let sealed: Vec<u8> = out
            .iter()
            .filter(|(to, _)| *to == tls_id)
            .flat_map(|(_, b)| b.clone())
            .collect();
        let mut rd = &sealed[..];
        while !rd.is_empty() {
            tls_client.read_tls(&mut rd).unwrap();
            tls_client.process_new_packets().unwrap();
        }
        assert_eq!(
            plaintext(&mut tls_client),
            b"\x81\x04both",
            "the same frame, sealed"
        );
    }

    /// Isolation: what rustls holds for a connection (a record cut short, half a ClientHello)
    /// is charged as unfinished input until the record completes or the slot is freed.
    #[test]
    fn session_buffers_are_charged_as_inbound_bytes() {
        let (mut core, id, mut c) = subscribed();
        assert_eq!(core.ledger().inbound(), 0);
        // A client frame as one record, delivered in two halves.
        c.writer()
            .write_all(&crate::shard::tests::client_frame(
                shardcast_proto::OpCode::Text,
                &[b'x'; 3000],
            ))
            .unwrap();
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let (first, rest) = wire.split_at(wire.len() / 2);
        core.handle_received(id, &mut first.to_vec());
        let held = core.ledger().inbound();
        assert!(
            held >= first.len(),
            "the incomplete record is charged: {held}"
        );
        core.handle_received(id, &mut rest.to_vec());
        assert_eq!(
            core.ledger().inbound(),
            0,
            "the record completed: nothing held"
        );
        // Half a ClientHello on a new connection, then the connection goes: given back.
        let other = accept(&mut core);
        core.handle_received(other, &mut [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00]);
        assert!(core.ledger().inbound() > 0);
        core.end(other, crate::runtime::driver::CloseMode::Reset);
        flush(&mut core);
        assert!(core.conn(other).is_none(), "freed");
        assert_eq!(core.ledger().inbound(), 0, "released with the slot");
    }

    #[test]
    fn garbage_gets_an_alert_and_a_close() {
        let t0 = Instant::now();
        let (mut core, _) = tls_core(&[], t0);
        let id = accept(&mut core);
        core.handle_received(id, &mut UPGRADE.to_vec());
        let (out, _) = flush(&mut core);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1[0], 21, "an alert record");
        let f = core.stats().tls.snapshot().failures;
        assert_eq!(f.iter().sum::<u64>(), 1, "{f:?}");
        assert!(core.conn(id).is_none_or(|c| c.closing()));
    }

    #[test]
    fn a_plain_connection_pays_nothing_for_tls() {
        // The session lives beside the slab: the slot keeps its idle budget (the same bound as
        // `conn::state`'s size guard: TLS adds nothing to `Conn`).
        assert!(std::mem::size_of::<Conn>() <= 168);
    }
}
