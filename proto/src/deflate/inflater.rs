//! The inflater for received permessage-deflate messages, with the decompressed-size limit
//! enforced while inflating.
//!
//! Contract:
//! - Input: a message's compressed payload (the payload bytes of all its frames, in order), in
//!   one piece ([`Inflater::inflate`]) or in chunks ([`Inflater::feed`] then
//!   [`Inflater::finish`], which appends the `00 00 ff ff` tail of RFC 7692 §7.2.2).
//! - Output: the inflated bytes appended to the caller's `Vec`. At most `limit + 1` bytes of a
//!   message are ever produced, and the buffer never grows beyond that: the moment a message
//!   inflates past `limit` the call fails with 1009 (a deflate bomb costs at most `limit`
//!   bytes and the CPU to produce them, whatever its ratio). Corrupt data fails with 1007.
//!   Text is validated as UTF-8 only by [`Inflater::inflate_message`] (1007).
//! - State: `flate2` with the zlib-rs backend (a streaming inflater: it reads what any client
//!   sends, including in pieces). Without context takeover (what the server negotiates) the
//!   state is reset after every message, so one inflater can serve every connection of a
//!   shard, one message at a time. With context takeover (a client reading a server that
//!   keeps its window) the 32 KiB window carries over between messages. After an error the
//!   state is reset whatever the mode.
//! - Window: always 2^15, which inflates any `client_max_window_bits` a peer may use.

use flate2::{Decompress, FlushDecompress, Status};

use crate::error::ProtocolError;

/// The four bytes a sender removes and a receiver appends (RFC 7692 §7.2.1–7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is grown in steps of at least this many bytes.
const MIN_STEP: usize = 1024;

/// Inflates permessage-deflate messages; see the module docs.
pub struct Inflater {
    d: Decompress,
    context_takeover: bool,
    /// Bytes produced for the message in progress.
    produced: usize,
    /// The deflate stream ended (a final block) within the message in progress: the rest of
    /// its input (the appended tail, or an empty stored block) is ignored.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("context_takeover", &self.context_takeover)
            .field("produced", &self.produced)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater; `context_takeover` keeps the window between messages (the peer keeps
    /// its own: no `*_no_context_takeover` for its direction).
    pub fn new(context_takeover: bool) -> Inflater {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
            context_takeover,
            produced: 0,
            ended: false,
        }
    }

    /// Inflate one whole message (its compressed payload), appending at most `limit` bytes to
    /// `out`; 1009 if it would inflate to more, 1007 if it is not valid deflate data.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        self.feed(compressed, limit, out)?;
        self.finish(limit, out)
    }

    /// [`inflate`](Self::inflate), and for text also the UTF-8 check (1007).
    pub fn inflate_message(
        &mut self,
        text: bool,
        compressed: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let start = out.len();
        self.inflate(compressed, limit, out)?;
        if text && simdutf8::basic::from_utf8(&out[start..]).is_err() {
            return Err(ProtocolError::invalid_payload(
                "invalid UTF-8 in text message",
            ));
        }
        Ok(())
    }

    /// Inflate the next piece of the message in progress.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let r = self.run(chunk, limit, out);
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// End the message in progress (appends the tail): the message is complete in `out`.
    pub fn finish(&mut self, limit: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let r = self.run(&TAIL, limit, out);
        let ended = std::mem::replace(&mut self.ended, false);
        self.produced = 0;
        // A stream that ended in a final block cannot go on: its window is gone either way.
        if r.is_err() || !self.context_takeover || ended {
            self.d.reset(false);
        }
        r
    }

    /// Forget the message in progress (and, with context takeover, the window).
    pub fn reset(&mut self) {
        self.d.reset(false);
        self.produced = 0;
        self.ended = false;
    }

    fn run(&mut self, input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let mut input = input;
        while !self.ended {
            // Room for one byte past the limit, to tell "exactly the limit" from "over it".
            let room = limit.saturating_add(1).saturating_sub(self.produced);
            let step = room.min(
                MIN_STEP
                    .max(self.produced)
                    .max(input.len().saturating_mul(4)),
            );
            let start = out.len();
            // Exact: the step sizes already grow geometrically, and `resize` alone could
            // double the allocation past the limit.
            out.reserve_exact(step);
            out.resize(start + step, 0);
            let (in0, out0) = (self.d.total_in(), self.d.total_out());
            let status = self
                .d
                .decompress(input, &mut out[start..], FlushDecompress::Sync);
            let read = (self.d.total_in() - in0) as usize;
            let wrote = (self.d.total_out() - out0) as usize;
            out.truncate(start + wrote);
            self.produced += wrote;
            input = &input[read..];
            if self.produced > limit {
                return Err(ProtocolError::too_big("message over the size limit"));
            }
            match status {
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(Status::Ok) | Ok(Status::BufError) => {
                    // Done when all input is in and the output had room to spare (nothing is
                    // held back inside the inflater).
                    if input.is_empty() && wrote < step {
                        break;
                    }
                    if read == 0 && wrote == 0 {
                        // No progress with input and room available: not a deflate stream
                        // zlib can continue.
                        return Err(ProtocolError::invalid_payload(
                            "invalid permessage-deflate data",
                        ));
                    }
                }
                Err(_) => {
                    return Err(ProtocolError::invalid_payload(
                        "invalid permessage-deflate data",
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A reference sender (flate2 at `level`): sync flush, tail removed; `reset` per message
    /// for no context takeover.
    struct Sender(Compress, bool);

    impl Sender {
        fn new(context_takeover: bool) -> Sender {
            Sender(Compress::new(Compression::new(6), false), context_takeover)
        }
        fn send(&mut self, msg: &[u8]) -> Vec<u8> {
            if !self.1 {
                self.0.reset();
            }
            let mut out = Vec::with_capacity(msg.len() + 64);
            let start = self.0.total_in();
            loop {
                let done = (self.0.total_in() - start) as usize;
                self.0
                    .compress_vec(&msg[done..], &mut out, FlushCompress::Sync)
                    .unwrap();
                if (self.0.total_in() - start) as usize == msg.len() && out.ends_with(&TAIL) {
                    break;
                }
                out.reserve(out.capacity() + 64);
            }
            out.truncate(out.len() - 4);
            out
        }
    }

    #[test]
    fn reads_flate2_with_and_without_context_takeover() {
        let msgs: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                format!(
                    "{{\"seq\":{i},\"price\":\"97000.{i:02}\",\"pad\":\"{}\"}}",
                    "ab".repeat(i * 40)
                )
                .into_bytes()
            })
            .collect();
        for takeover in [false, true] {
            let mut tx = Sender::new(takeover);
            let mut rx = Inflater::new(takeover);
            for m in &msgs {
                let wire = tx.send(m);
                let mut out = Vec::new();
                rx.inflate(&wire, 1 << 20, &mut out).unwrap();
                assert_eq!(&out, m, "takeover {takeover}");
            }
        }
        // Context takeover data read without the window fails (1007), and the inflater is
        // usable again afterwards.
        let mut tx = Sender::new(true);
        let mut rx = Inflater::new(false);
        let m = b"the same words, the same words, the same words".repeat(3);
        rx.inflate(&tx.send(&m), 1 << 20, &mut Vec::new()).unwrap();
        let err = rx
            .inflate(&tx.send(&m), 1 << 20, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.code.0, 1007);
        let mut out = Vec::new();
        rx.inflate(&Sender::new(false).send(b"fresh"), 100, &mut out)
            .unwrap();
        assert_eq!(out, b"fresh");
    }

    #[test]
    fn limit_is_exact_and_enforced_while_inflating() {
        let m = vec![b'a'; 10_000];
        let wire = Sender::new(false).send(&m);
        let mut rx = Inflater::new(false);
        let mut out = Vec::new();
        rx.inflate(&wire, 10_000, &mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        let mut out = Vec::new();
        let err = rx.inflate(&wire, 9_999, &mut out).unwrap_err();
        assert_eq!(err.code.0, 1009);
        assert!(out.capacity() <= 10_000 + MIN_STEP, "{}", out.capacity());
        // Still usable.
        let mut out = Vec::new();
        rx.inflate(&wire, 10_000, &mut out).unwrap();
        assert_eq!(out, m);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        // ~1 KB of deflate that inflates to 1 GB: stored once, then zero-length-distance-1
        // runs. Built with flate2 on 1 GB of zeros would take seconds; a 10 MB source at
        // level 9 gives ~10 KB; the ratio (~1000:1) is what matters.
        let zeros = vec![0u8; 10 << 20];
        let wire = Sender::new(false).send(&zeros);
        assert!(wire.len() < 12 << 10, "{}", wire.len());
        let mut rx = Inflater::new(false);
        let mut out = Vec::new();
        let err = rx.inflate(&wire, 64 << 10, &mut out).unwrap_err();
        assert_eq!(err.code.0, 1009);
        assert!(
            out.capacity() <= (64 << 10) + 1 + MIN_STEP,
            "{}",
            out.capacity()
        );
    }

    #[test]
    fn chunked_feed_equals_whole_and_final_blocks_are_read() {
        let m = b"{\"e\":\"depthUpdate\",\"b\":[[\"1.0\",\"2\"],[\"1.1\",\"3\"]]}".repeat(50);
        let wire = Sender::new(false).send(&m);
        for chunk in [1, 2, 7, 64, 1000] {
            let mut rx = Inflater::new(false);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                rx.feed(piece, 1 << 20, &mut out).unwrap();
            }
            rx.finish(1 << 20, &mut out).unwrap();
            assert_eq!(out, m, "chunk {chunk}");
        }
        // A final block followed by `00` (RFC 7692 §7.2.3.4), as our Deflater sends.
        let mut c = Compress::new(Compression::new(1), false);
        let mut fin = Vec::with_capacity(m.len() + 64);
        c.compress_vec(&m, &mut fin, FlushCompress::Finish).unwrap();
        fin.push(0);
        let mut rx = Inflater::new(true);
        for _ in 0..2 {
            let mut out = Vec::new();
            rx.inflate(&fin, 1 << 20, &mut out).unwrap();
            assert_eq!(out, m);
        }
        // An empty message is one empty stored block without its tail: zero bytes.
        let mut out = Vec::new();
        rx.inflate(&[0x00], 10, &mut out).unwrap();
        assert!(out.is_empty());
        rx.inflate(&[], 10, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_is_1007_and_text_is_validated() {
        let mut rx = Inflater::new(false);
        let err = rx
            .inflate(&[0xff, 0xff, 0xff], 100, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.code.0, 1007);
        let wire = Sender::new(false).send(&[0xc3, 0x28]);
        let err = rx
            .inflate_message(true, &wire, 100, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.code.0, 1007);
        let mut out = Vec::new();
        rx.inflate_message(false, &wire, 100, &mut out).unwrap();
        assert_eq!(out, [0xc3, 0x28]);
    }
}
