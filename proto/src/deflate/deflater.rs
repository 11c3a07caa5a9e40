//! The compress-once encoder: one message, compressed on its own (no context takeover), into a
//! complete final server frame with RSV1 set, ready to be shared by every connection that
//! negotiated permessage-deflate.
//!
//! Contract:
//! - Input: the message payload (for a `/stream` wrapper, the wrapped payload), its opcode.
//! - Output: `Some(frame)` — one `Bytes` of exactly header + compressed payload, RSV1 set,
//!   FIN set, unmasked — or `None` when compressing does not make the payload smaller
//!   (already-compressed binary data: the plain frame is then the better one for everybody).
//! - Compressor: `libdeflate` (chosen by measurement, docs/DEPENDENCIES.md), one-shot. Its
//!   output ends in a block with BFINAL set; one `0x00` byte is appended, the form RFC 7692
//!   §7.2.3.4 gives for it, so a receiver that appends `00 00 ff ff` (§7.2.2) finds an empty
//!   stored block after the final one. The LZ77 window is 32 KiB (`server_max_window_bits`
//!   15): a connection that negotiated less must get this frame only for messages no longer
//!   than its window (see [`Agreed::max_compressed_len`](super::Agreed::max_compressed_len)).
//! - State: the compressor (allocated once: 200 KiB at level 1, ~650 KiB at 2–9, 8.6 MiB at
//!   10–12) and one scratch buffer that grows to the largest message's bound. One per shard: no
//!   state is kept between messages.

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor};

use crate::frame::{header_len, write_header_rsv, OpCode, RSV1};

/// Compresses messages one at a time into RSV1 frames.
pub struct Deflater {
    compressor: Compressor,
    level: u8,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Lowest and highest compression level (libdeflate's scale: 1 fastest … 12 smallest; 1–9
/// match zlib's meaning roughly).
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=12;

impl Deflater {
    /// A compressor at `level` (clamped to [`LEVELS`]).
    pub fn new(level: u8) -> Deflater {
        let level = level.clamp(*LEVELS.start(), *LEVELS.end());
        let lvl = CompressionLvl::new(i32::from(level)).expect("level within 1..=12");
        Deflater {
            compressor: Compressor::new(lvl),
            level,
            scratch: Vec::new(),
        }
    }

    /// The compression level in use.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Compress `payload` on its own into `out` (cleared first) as a permessage-deflate
    /// message payload. False (and `out` unspecified) when the result would not be smaller
    /// than `payload`.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        let bound = self.compressor.deflate_compress_bound(payload.len());
        out.resize(bound, 0);
        let n = match self.compressor.deflate_compress(payload, out) {
            Ok(n) => n,
            // Cannot happen with a buffer of the bound's size; a plain frame is always valid.
            Err(_) => return false,
        };
        out.truncate(n);
        out.push(0);
        out.len() < payload.len()
    }

    /// Compress `payload` into one complete final frame with RSV1 set (exactly sized, so it
    /// can be shared and charged at its length); `None` when compression would not shrink it.
    pub fn encode_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let smaller = self.compress(payload, &mut scratch);
        let frame = smaller.then(|| {
            let len = scratch.len() as u64;
            let mut out = Vec::with_capacity(header_len(len, false) + scratch.len());
            write_header_rsv(&mut out, true, RSV1, opcode, None, len);
            out.extend_from_slice(&scratch);
            Bytes::from(out)
        });
        self.scratch = scratch;
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::Inflater;
    use crate::frame::{parse_header_with, Role};

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::new();
        let mut i = 0u64;
        while s.len() < n {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(&format!(
                "{{\"e\":\"trade\",\"p\":\"97{:03}.{:02}\",\"q\":\"0.{:05}\"}}",
                i % 1000,
                (i >> 10) % 100,
                (i >> 20) % 100000
            ));
        }
        s.truncate(n);
        s.into_bytes()
    }

    #[test]
    fn frame_is_rsv1_exact_and_inflates_back() {
        let mut d = Deflater::new(6);
        let mut inf = Inflater::new(false);
        for len in [0usize, 1, 50, 125, 126, 1000, 65_535, 65_536, 300_000] {
            let msg = json(len);
            let Some(frame) = d.encode_frame(OpCode::Text, &msg) else {
                assert!(len < 50, "{len} B of JSON did not shrink");
                continue;
            };
            let h = parse_header_with(&frame, Role::Client, RSV1)
                .unwrap()
                .unwrap();
            assert_eq!((h.fin, h.rsv, h.opcode), (true, RSV1, OpCode::Text));
            assert_eq!(h.header_len as u64 + h.payload_len, frame.len() as u64);
            assert_eq!(frame.len(), frame.as_ref().len());
            let mut out = Vec::new();
            inf.inflate(&frame[h.header_len..], usize::MAX, &mut out)
                .unwrap();
            assert_eq!(out, msg, "{len}");
        }
    }

    #[test]
    fn incompressible_payloads_stay_plain() {
        let mut d = Deflater::new(1);
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(d.encode_frame(OpCode::Binary, &noise), None);
        assert_eq!(Deflater::new(0).level(), 1);
        assert_eq!(Deflater::new(99).level(), 12);
    }
}
