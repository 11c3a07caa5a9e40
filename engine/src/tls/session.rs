//! One server-side TLS session over rustls's unbuffered API: ciphertext in, plaintext out, queued
//! WebSocket frames sealed into as few records as possible, and no buffer of its own while idle.
//!
//! Contract (per connection, driven by the shard core; no I/O, no clock):
//! 1. [`Session::new`] at accept, with the configuration of `ShardConfig::current`.
//! 2. Bytes read from the socket go to [`Session::handle_ciphertext`] (the slice may be the
//!    driver's receive buffer: records are decrypted in place, only an incomplete record's tail
//!    is copied into the session). Plaintext comes out through the callback, in order;
//!    [`Received::opened`] says the handshake completed during this call (count it, start the
//!    HTTP upgrade); [`Received::peer_closed`] that the client sent `close_notify`.
//!    An `Err(Failure)` ends the session: count it, transmit what [`Session::poll_transmit`]
//!    gives (the fatal alert rustls chose), then close the socket.
//! 3. TLS output that is not application data (handshake flights, session tickets, alerts, key
//!    updates, `close_notify`) waits in the session until [`Session::poll_transmit`] copies it into
//!    the caller's buffer; call it whenever [`Session::wants_transmit`] is true (after every
//!    `handle_ciphertext`, at every flush). Output must reach the socket in the order it was
//!    produced: never send a buffer filled later before one filled earlier.
//! 4. Once open, [`Session::seal`] encrypts queued frames (shared `Bytes`, given as slices, the
//!    first one possibly partly sent) into the caller's output buffer: pending TLS output first,
//!    then up to 16 KiB of plaintext per record, frames gathered into one record until it is
//!    full. It reports the plaintext it consumed: the send queue advances by that many bytes at
//!    once (they are encrypted, a record cannot be unsealed), and the ciphertext it wrote must be
//!    sent before anything sealed later. [`Sealed::written`] counts every byte written.
//! 5. [`Session::close`] queues `close_notify` (after the handshake; nothing before it), to be
//!    taken by `poll_transmit` or the next `seal`. Input after it is discarded unread: close
//!    once the WebSocket closing handshake is over, when the core only drains the socket.
//!
//! Memory: an idle session is rustls's connection state only (measured in docs/ENGINE.md,
//! "TLS"); `incoming` holds the tail of an incomplete record (at most one record, up to
//! ~18 KiB; during the handshake a fragmented handshake message, at most 64 KiB) and `outgoing`
//! the TLS output not yet taken; both are freed when empty. [`Session::buffered_bytes`] is what
//! to charge the connection for them.

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use std::sync::Arc;

use super::failure::Failure;

/// Largest plaintext in one record (TLS's 2^14).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Most bytes a record adds to its plaintext: header 5 + explicit nonce 8 + tag 16 (TLS 1.2
/// AES-GCM, the largest; TLS 1.3 adds 5 + 1 + 16).
pub const MAX_RECORD_OVERHEAD: usize = 29;

/// An output buffer of this size always holds one full record.
pub const FULL_RECORD: usize = MAX_RECORD_PLAINTEXT + MAX_RECORD_OVERHEAD;

/// Largest ciphertext kept for an incomplete input: a fragmented handshake message (rustls caps
/// them at 64 KiB) plus its record headers. More is not a TLS peer.
const MAX_INCOMING: usize = 80 * 1024;

/// What one [`Session::handle_ciphertext`] call changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed during this call.
    pub opened: bool,
    /// The client sent `close_notify` during this call (it will send nothing more).
    pub peer_closed: bool,
}

/// What one [`Session::seal`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes consumed from the frames (advance the send queue by this).
    pub plaintext: usize,
    /// Bytes written to the output buffer (pending TLS output plus the sealed records).
    pub written: usize,
    /// Application-data records sealed.
    pub records: usize,
}

/// One TLS server session.
pub struct Session {
    conn: UnbufferedServerConnection,
    /// Ciphertext of an incomplete record (or handshake message); empty and unallocated when idle.
    incoming: Vec<u8>,
    /// TLS output not yet taken by `poll_transmit`/`seal`; empty and unallocated when idle.
    outgoing: Vec<u8>,
    open: bool,
    peer_closed: bool,
    close_queued: bool,
    failed: Option<Failure>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("open", &self.open)
            .field("peer_closed", &self.peer_closed)
            .field("close_queued", &self.close_queued)
            .field("failed", &self.failed)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .finish()
    }
}

/// Where one turn of rustls's state machine left it.
enum Step {
    /// It did something (plaintext, output); ask again.
    More,
    /// It needs more input (handshake) or has nothing to do (open: writable, all input used).
    Idle,
}

/// Append to `out` what `write` produces, sized by rustls: `write` is called with an empty
/// buffer first and answers `Err(Some(required))` (rustls's InsufficientSize, nothing consumed),
/// then with exactly that much room. `Err(None)`: nothing to write.
fn append_sized(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    let start = out.len();
    let Err(Some(need)) = write(&mut []) else {
        return;
    };
    out.resize(start + need, 0);
    match write(&mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        Err(_) => out.truncate(start),
    }
}

/// Append one pending TLS record of rustls's to `out`.
fn encode_into(e: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    append_sized(out, |buf| {
        e.encode(buf).map_err(|err| match err {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(required_size)
            }
            _ => None,
        })
    });
}

/// One call into rustls with `input`: returns the bytes of `input` it is done with and the step.
fn step(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    plaintext: &mut dyn FnMut(&[u8]),
) -> (usize, Result<Step, rustls::Error>) {
    let UnbufferedStatus { mut discard, state } = conn.process_tls_records(input);
    let step = match state {
        Err(e) => Err(e),
        Ok(ConnectionState::ReadTraffic(mut records)) => {
            let mut result = Ok(Step::More);
            while let Some(record) = records.next_record() {
                match record {
                    Ok(record) => {
                        discard += record.discard;
                        plaintext(record.payload);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        }
        // Early data is never accepted (max_early_data_size is 0); drop it if rustls offers any.
        Ok(ConnectionState::ReadEarlyData(mut records)) => {
            while let Some(Ok(record)) = records.next_record() {
                discard += record.discard;
            }
            Ok(Step::More)
        }
        Ok(ConnectionState::EncodeTlsData(mut e)) => {
            encode_into(&mut e, outgoing);
            Ok(Step::More)
        }
        // The record is in `outgoing`, which the caller transmits in order: done as far as
        // rustls is concerned.
        Ok(ConnectionState::TransmitTlsData(t)) => {
            t.done();
            Ok(Step::More)
        }
        Ok(ConnectionState::PeerClosed) => {
            *peer_closed = true;
            Ok(Step::More)
        }
        Ok(_) => Ok(Step::Idle),
    };
    (discard, step)
}

impl Session {
    /// A new session for an accepted connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<Session, Failure> {
        let conn = UnbufferedServerConnection::new(config).map_err(|e| Failure::of(&e))?;
        Ok(Session {
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            open: false,
            peer_closed: false,
            close_queued: false,
            failed: None,
        })
    }

    /// Feed ciphertext read from the socket; decrypted application data goes to `plaintext`.
    pub fn handle_ciphertext(
        &mut self,
        input: &mut [u8],
        mut plaintext: impl FnMut(&[u8]),
    ) -> Result<Received, Failure> {
        if let Some(f) = self.failed {
            return Err(f);
        }
        // After our close_notify, input is drained unread (the core's linger): rustls must not
        // see it, a bad record would make it raise a fatal alert after close_notify.
        if self.close_queued {
            return Ok(Received::default());
        }
        let was_peer_closed = self.peer_closed;
        let result = if self.incoming.is_empty() {
            let (used, result) = self.run(input, &mut plaintext);
            if result.is_ok() && !self.peer_closed {
                self.incoming.extend_from_slice(&input[used..]);
            }
            result
        } else {
            self.incoming.extend_from_slice(input);
            let mut buf = std::mem::take(&mut self.incoming);
            let (used, result) = self.run(&mut buf, &mut plaintext);
            if result.is_ok() && !self.peer_closed && used < buf.len() {
                buf.drain(..used);
                self.incoming = buf;
            }
            result
        };
        result?;
        if self.incoming.len() > MAX_INCOMING {
            return Err(self.fail(Failure::BadRecord));
        }
        let opened = !self.open && !self.conn.is_handshaking();
        self.open |= opened;
        Ok(Received {
            opened,
            peer_closed: self.peer_closed && !was_peer_closed,
        })
    }

    /// Run rustls over `buf` until it needs more input; returns the bytes it is done with.
    fn run(
        &mut self,
        buf: &mut [u8],
        plaintext: &mut dyn FnMut(&[u8]),
    ) -> (usize, Result<(), Failure>) {
        let mut used = 0;
        loop {
            let (discard, result) = step(
                &mut self.conn,
                &mut buf[used..],
                &mut self.outgoing,
                &mut self.peer_closed,
                plaintext,
            );
            used += discard;
            match result {
                Ok(Step::More) => continue,
                Ok(Step::Idle) => return (used, Ok(())),
                Err(e) => {
                    let why = Failure::of(&e);
                    self.drain_alert(&mut buf[used..]);
                    return (used, Err(self.fail(why)));
                }
            }
        }
    }

    /// After an error, move the fatal alert rustls queued into `outgoing`. Only while rustls has
    /// output queued: it hands that out before it reads input again (reading the bad input
    /// again would raise a second alert). It still gets the same unconsumed input it saw
    /// before, never an empty slice: its handshake deframer keeps offsets into it.
    fn drain_alert(&mut self, rest: &mut [u8]) {
        for _ in 0..8 {
            if !self.conn.wants_write() {
                break;
            }
            let _ = step(
                &mut self.conn,
                rest,
                &mut self.outgoing,
                &mut self.peer_closed,
                &mut |_| {},
            );
        }
    }

    /// End the session; `poll_transmit` still gives whatever alert is in `outgoing`.
    fn fail(&mut self, why: Failure) -> Failure {
        self.failed = Some(why);
        self.incoming = Vec::new();
        why
    }

    /// Copy pending TLS output (not application data) into `out`; returns the bytes copied.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> usize {
        let n = self.outgoing.len().min(out.len());
        out[..n].copy_from_slice(&self.outgoing[..n]);
        if n == self.outgoing.len() {
            self.outgoing = Vec::new();
        } else {
            self.outgoing.drain(..n);
        }
        n
    }

    /// Run `f` with rustls in its writable state, first moving any record it wants to send
    /// (key update, ticket) into `outgoing`. `None`: not writable (handshaking or closed).
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> Result<Option<R>, rustls::Error> {
        for _ in 0..8 {
            // The carried-over input, never an empty slice: rustls's handshake deframer may hold
            // offsets into it (see `drain_alert`). It holds no complete record here
            // (`handle_ciphertext` ran rustls until it needed more), so nothing is read from it.
            let UnbufferedStatus { state, discard } =
                self.conn.process_tls_records(&mut self.incoming);
            debug_assert_eq!(discard, 0, "handle_ciphertext left a complete record");
            match state? {
                ConnectionState::WriteTraffic(mut w) => {
                    return Ok(Some(f(&mut w, &mut self.outgoing)))
                }
                ConnectionState::EncodeTlsData(mut e) => encode_into(&mut e, &mut self.outgoing),
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Seal `frames` (in queue order; empty slices are skipped) into `out`, after any pending TLS
    /// output. `scratch` gathers several frames into one record (a shard-wide buffer; it grows to
    /// at most 16 KiB). Records are full-size while the frames last and `out` has room.
    pub fn seal<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a [u8]>,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Sealed, Failure> {
        if let Some(f) = self.failed {
            return Err(f);
        }
        let mut sealed = Sealed {
            written: self.poll_transmit(out),
            ..Sealed::default()
        };
        if !self.open || self.close_queued || !self.outgoing.is_empty() {
            return Ok(sealed);
        }
        let result = self.with_write_traffic(|w, pending| {
            // Records rustls queued on the way here go first.
            let n = pending.len().min(out.len() - sealed.written);
            out[sealed.written..sealed.written + n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            sealed.written += n;
            if !pending.is_empty() {
                return Ok(());
            }
            seal_records(w, frames, &mut out[sealed.written..], scratch, &mut sealed)
        });
        match result {
            Ok(Some(Err(()))) => Err(self.fail(Failure::Other)),
            Ok(_) => Ok(sealed),
            Err(e) => Err(self.fail(Failure::of(&e))),
        }
    }

    /// Queue `close_notify` (once; only after the handshake, before it there is nothing to
    /// protect and the socket is simply closed).
    pub fn close(&mut self) {
        if self.close_queued || self.failed.is_some() || !self.open {
            self.close_queued = true;
            return;
        }
        self.close_queued = true;
        let _ = self.with_write_traffic(|w, pending| {
            append_sized(pending, |buf| {
                w.queue_close_notify(buf).map_err(|err| match err {
                    EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                        Some(required_size)
                    }
                    _ => None,
                })
            })
        });
    }

    /// Bytes of TLS output waiting for [`poll_transmit`](Self::poll_transmit).
    pub fn pending_output(&self) -> usize {
        self.outgoing.len()
    }

    /// TLS output is waiting for [`poll_transmit`](Self::poll_transmit).
    pub fn wants_transmit(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The handshake completed and the session has not failed.
    pub fn is_open(&self) -> bool {
        self.open && self.failed.is_none()
    }

    /// Still in the handshake (what a handshake timeout looks at).
    pub fn is_handshaking(&self) -> bool {
        !self.open && self.failed.is_none()
    }

    /// The client sent `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.failed
    }

    /// The handshake resumed a session (from a ticket).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The negotiated version, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The negotiated ALPN protocol (`http/1.1`), if the client offered ALPN.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The client's certificate chain, when it presented one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Bytes this session holds in its own buffers (to charge to the connection).
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }
}

/// Seal frames into `out`, one record per `MAX_RECORD_PLAINTEXT` (or what `out` still holds).
/// `Err(())`: the keys are exhausted (TLS 1.2 after 2^24.5 records; rustls queued close_notify).
fn seal_records<'a>(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    frames: impl IntoIterator<Item = &'a [u8]>,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    sealed: &mut Sealed,
) -> Result<(), ()> {
    let mut frames = frames.into_iter().filter(|f| !f.is_empty()).peekable();
    let mut at = 0;
    let mut current: &[u8] = &[];
    loop {
        if current.is_empty() {
            match frames.next() {
                Some(f) => current = f,
                None => return Ok(()),
            }
        }
        let room = out.len() - at;
        if room <= MAX_RECORD_OVERHEAD {
            return Ok(());
        }
        let cap = MAX_RECORD_PLAINTEXT.min(room - MAX_RECORD_OVERHEAD);
        // One frame that fills the record, or the last one: seal it in place, no copy.
        let plain: &[u8] = if current.len() >= cap || frames.peek().is_none() {
            let take = current.len().min(cap);
            let (p, rest) = current.split_at(take);
            current = rest;
            p
        } else {
            scratch.clear();
            scratch.extend_from_slice(current);
            current = &[];
            while scratch.len() < cap {
                let Some(f) = frames.next() else { break };
                let take = f.len().min(cap - scratch.len());
                scratch.extend_from_slice(&f[..take]);
                current = &f[take..];
            }
            scratch
        };
        match w.encrypt(plain, &mut out[at..]) {
            Ok(n) => {
                at += n;
                sealed.written += n;
                sealed.plaintext += plain.len();
                sealed.records += 1;
            }
            // Only if rustls added a record of its own (key update) that did not fit: next time.
            Err(EncryptError::InsufficientSize(_)) => return Ok(()),
            Err(_) => return Err(()),
        }
    }
}
