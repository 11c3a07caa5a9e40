//! One shard's TLS: the sessions of its TLS connections (rare state, by slot) and the buffers
//! they share. Sans-IO: the shard core calls it, the drivers never see it.
//!
//! Contract (the core's glue is `shard/tls.rs`):
//! 1. [`ShardTls::open`] when a connection is accepted on a TLS listener, with the
//!    configuration published last (a SIGHUP reload serves new handshakes; live sessions keep
//!    theirs). [`ShardTls::remove`] when the slot is freed.
//! 2. [`ShardTls::receive`] decrypts what the socket gave (in place) and appends the plaintext to
//!    the caller's buffer ([`ShardTls::take_plain`] lends the shard's).
//! 3. [`ShardTls::transmit`] at the flush: pending TLS output first, then the queued frames
//!    (shared `Bytes`, encoded once for every subscriber) sealed together into records, all into
//!    one ciphertext `Bytes` cut from the shard's arena, plus the plaintext consumed (the queue
//!    advances by it at once). The arena is one allocation reused once every send cut from it
//!    completed (`BytesMut::reserve` reclaims it), so steady traffic allocates nothing.
//! 4. [`ShardTls::close`] queues `close_notify` before the half-close.
//!
//! Why a table beside the slab and not a field of `Conn`: the connection struct is at its idle
//! budget (docs/ENGINE.md, "Per-connection memory budget") and a plain connection must not pay for
//! TLS; a TLS connection has `flag::TLS` and one entry here (a boxed session).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::failure::Failure;
use super::reload::ShardConfig;
use super::session::{Received, Session, MAX_RECORD_OVERHEAD, MAX_RECORD_PLAINTEXT};

/// Most plaintext sealed per flush: four full records. More waits for the next send (the
/// corked flush comes back as soon as this one completes).
pub const MAX_SEAL_PLAINTEXT: usize = 4 * MAX_RECORD_PLAINTEXT;

/// Most ciphertext one connection's flush holds: [`MAX_SEAL_PLAINTEXT`] sealed plus record
/// overhead and pending handshake output, with room to spare. It is charged to the connection
/// like its kernel send buffer (it is on its way there) until the send completes, so the
/// `evict` mark's kernel allowance grows by it when TLS is on (`flow::limits`).
pub const MAX_SEND_CIPHERTEXT: usize = MAX_SEAL_PLAINTEXT + 8 * 1024;

/// The ciphertext arena's allocation: a few flushes of small frames, or one full flush.
const ARENA_BYTES: usize = MAX_SEND_CIPHERTEXT;

/// What one flush produced.
#[derive(Debug, Default)]
pub struct Transmit {
    /// Ciphertext to send (may be empty).
    pub bytes: Bytes,
    /// Plaintext taken from the queue (sealed: the queue advances by it now).
    pub plaintext: usize,
    /// Records sealed.
    pub records: usize,
    /// The session failed while sealing (`bytes` holds its alert, if any).
    pub failed: Option<Failure>,
}

/// The TLS sessions of one shard and their shared buffers.
pub struct ShardTls {
    config: ShardConfig,
    sessions: HashMap<u32, Box<Session>>,
    /// Gathers small frames into one record (`Session::seal`).
    scratch: Vec<u8>,
    /// Decrypted input on its way to the HTTP parser or the WebSocket decoder.
    plain: Vec<u8>,
    /// Ciphertext: each flush cuts its send from here.
    arena: BytesMut,
    /// The ciphertext of each send in flight, by slot (a clone of what the driver holds).
    in_flight: HashMap<u32, Bytes>,
    /// What a send that completed in part left unsent, by slot: it goes first, before anything
    /// new is sealed (a TLS record cut short cannot be sealed again). io_uring completes a send
    /// on a full socket in part; the epoll driver only whole.
    unsent: HashMap<u32, Bytes>,
    /// The ciphertext each connection is charged for now (part of its `Conn::kernel`): what
    /// [`ShardTls::held`] was at the last [`ShardTls::recharge`].
    charged: HashMap<u32, usize>,
    /// What each session's own buffers are charged as inbound bytes (`Session::buffered_bytes`
    /// at the last [`ShardTls::rebuffer`]).
    buffered: HashMap<u32, usize>,
}

/// Record that `slot` is charged `now` bytes in `charges` (no entry for 0); returns (was, now).
fn settle(charges: &mut HashMap<u32, usize>, slot: u32, now: usize) -> (usize, usize) {
    let was = if now == 0 {
        charges.remove(&slot)
    } else {
        charges.insert(slot, now)
    };
    (was.unwrap_or(0), now)
}

impl ShardTls {
    /// A shard's TLS state over the published configuration.
    pub fn new(config: ShardConfig) -> ShardTls {
        ShardTls {
            config,
            sessions: HashMap::new(),
            scratch: Vec::new(),
            plain: Vec::new(),
            arena: BytesMut::new(),
            in_flight: HashMap::new(),
            unsent: HashMap::new(),
            charged: HashMap::new(),
            buffered: HashMap::new(),
        }
    }

    /// Start a session for `slot` (a connection just accepted).
    pub fn open(&mut self, slot: u32) -> Result<(), Failure> {
        let session = Session::new(self.config.current().clone())?;
        self.sessions.insert(slot, Box::new(session));
        Ok(())
    }

    /// Forget `slot`'s session (its slot is freed); returns what its buffers were charged as
    /// inbound bytes, for the caller to give back.
    pub fn remove(&mut self, slot: u32) -> usize {
        self.sessions.remove(&slot);
        self.in_flight.remove(&slot);
        self.unsent.remove(&slot);
        self.charged.remove(&slot);
        self.buffered.remove(&slot).unwrap_or(0)
    }

    /// Bring the inbound charge of `slot`'s session buffers (an incomplete record, handshake
    /// output not taken yet) to what they hold now; returns (was, now).
    pub fn rebuffer(&mut self, slot: u32) -> (usize, usize) {
        let now = self.sessions.get(&slot).map_or(0, |s| s.buffered_bytes());
        settle(&mut self.buffered, slot, now)
    }

    /// Ciphertext this shard holds for `slot`: the send in flight, or what one left unsent.
    /// Sealed plaintext left the queue, so this is what the connection costs past its queue.
    pub fn held(&self, slot: u32) -> usize {
        let len = |m: &HashMap<u32, Bytes>| m.get(&slot).map_or(0, Bytes::len);
        len(&self.in_flight) + len(&self.unsent)
    }

    /// What `slot` is charged for now (see [`ShardTls::recharge`]).
    pub fn charged(&self, slot: u32) -> usize {
        self.charged.get(&slot).copied().unwrap_or(0)
    }

    /// Bring `slot`'s charge to what it holds; returns (was, now).
    pub fn recharge(&mut self, slot: u32) -> (usize, usize) {
        let now = self.held(slot);
        settle(&mut self.charged, slot, now)
    }

    /// The send in flight on `slot` completed with `n` bytes written: keep what it did not
    /// write to go first next time. True if something was left.
    pub fn sent(&mut self, slot: u32, n: usize) -> bool {
        match self.in_flight.remove(&slot) {
            Some(b) if n < b.len() => {
                self.unsent.insert(slot, b.slice(n..));
                true
            }
            _ => false,
        }
    }

    /// `slot`'s session.
    pub fn session(&self, slot: u32) -> Option<&Session> {
        self.sessions.get(&slot).map(|s| &**s)
    }

    /// Sessions on this shard.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when the shard has no TLS connection.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The shard's plaintext buffer (give it back with [`give_plain`](Self::give_plain)).
    pub fn take_plain(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.plain)
    }

    /// Return the plaintext buffer (kept if small).
    pub fn give_plain(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= 2 * MAX_RECORD_PLAINTEXT {
            buf.clear();
            self.plain = buf;
        }
    }

    /// Decrypt `data` (in place) for `slot`, appending plaintext to `plain`.
    pub fn receive(
        &mut self,
        slot: u32,
        data: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, Failure> {
        let Some(s) = self.sessions.get_mut(&slot) else {
            return Ok(Received::default());
        };
        s.handle_ciphertext(data, |p| plain.extend_from_slice(p))
    }

    /// `slot` has TLS output waiting (handshake flight, ticket, alert, close_notify).
    pub fn wants_transmit(&self, slot: u32) -> bool {
        self.unsent.contains_key(&slot)
            || self.sessions.get(&slot).is_some_and(|s| s.wants_transmit())
    }

    /// `slot` can seal application data.
    pub fn is_open(&self, slot: u32) -> bool {
        self.sessions.get(&slot).is_some_and(|s| s.is_open())
    }

    /// `slot` is still in its handshake.
    pub fn is_handshaking(&self, slot: u32) -> bool {
        self.sessions.get(&slot).is_some_and(|s| s.is_handshaking())
    }

    /// Queue `close_notify` on `slot`; true if there is output to transmit before the close.
    pub fn close(&mut self, slot: u32) -> bool {
        self.sessions.get_mut(&slot).is_some_and(|s| {
            s.close();
            s.wants_transmit()
        })
    }

    /// Everything `slot` has to send now: its pending TLS output, then `frames` (queue order, the
    /// head without its sent part) sealed into records, up to [`MAX_SEAL_PLAINTEXT`].
    pub fn transmit(&mut self, slot: u32, frames: &[Bytes]) -> Transmit {
        // The rest of a send that completed in part goes alone, before anything new.
        if let Some(rest) = self.unsent.remove(&slot) {
            self.in_flight.insert(slot, rest.clone());
            return Transmit {
                bytes: rest,
                ..Transmit::default()
            };
        }
        let Some(s) = self.sessions.get_mut(&slot) else {
            return Transmit::default();
        };
        let plain: usize = if s.is_open() {
            frames
                .iter()
                .map(Bytes::len)
                .sum::<usize>()
                .min(MAX_SEAL_PLAINTEXT)
        } else {
            0
        };
        // Room for every record it can make (plus one rustls may add: key update) and the
        // pending output.
        let records = plain.div_ceil(MAX_RECORD_PLAINTEXT) + frames.len().min(4) + 1;
        let need = s.pending_output() + plain + records * MAX_RECORD_OVERHEAD;
        if self.arena.capacity() < need {
            // Reclaims the arena's allocation when every send cut from it completed; else a new
            // one (the old one is freed when its last send completes).
            self.arena.reserve(need.max(ARENA_BYTES));
        }
        self.arena.resize(need, 0);
        let mut out = Transmit::default();
        let sealed = if plain > 0 {
            s.seal(
                frames.iter().map(|f| &f[..]),
                &mut self.arena,
                &mut self.scratch,
            )
        } else {
            Ok(super::Sealed {
                written: s.poll_transmit(&mut self.arena),
                ..Default::default()
            })
        };
        let written = match sealed {
            Ok(sealed) => {
                out.plaintext = sealed.plaintext;
                out.records = sealed.records;
                sealed.written
            }
            Err(f) => {
                out.failed = Some(f);
                s.poll_transmit(&mut self.arena)
            }
        };
        self.arena.truncate(written);
        out.bytes = self.arena.split().freeze();
        if !out.bytes.is_empty() {
            self.in_flight.insert(slot, out.bytes.clone());
        }
        out
    }
}
