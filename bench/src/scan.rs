//! Minimal parsing of received frames: headers through proto, and only the first 16 payload
//! bytes of each data message (send timestamp, sequence). The rest of a payload is skipped, so
//! any message size costs the same to receive.

use bytes::BytesMut;
use shardcast_proto::encode_client_frame;
use shardcast_proto::frame::{parse_header, OpCode, Role};

/// What the generator embeds at the front of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `CLOCK_MONOTONIC` ns when the publisher sent it.
    pub sent_ns: u64,
    /// `publisher id << 32 | sequence`.
    pub seq: u64,
}

/// Bytes of payload the stamp occupies.
pub const STAMP_LEN: usize = 16;

impl Stamp {
    /// Writes the stamp into the front of `payload` (at least [`STAMP_LEN`] bytes).
    pub fn write(self, payload: &mut [u8]) {
        payload[..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    fn read(b: &[u8]) -> Stamp {
        let word = |r: &[u8]| u64::from_le_bytes(r.try_into().expect("8 bytes"));
        Stamp {
            sent_ns: word(&b[..8]),
            seq: word(&b[8..16]),
        }
    }
}

/// Why scanning stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server sent a close frame, with its status code when the frame carried one.
    Closed(Option<u16>),
    /// The stream broke the protocol (reason from proto).
    Protocol(&'static str),
}

/// Receive-side state carried between reads: how much of the current payload is still to skip.
#[derive(Debug, Default)]
pub struct Scanner {
    skip: u64,
    /// Data messages shorter than a stamp (not ours).
    pub short: u64,
    /// Masked pongs answering the pings scanned so far, for the caller to write: a client
    /// that ignored pings would be closed by the server's heartbeat (like a dead peer), which
    /// no real client (browser, tungstenite) is.
    pub pongs: BytesMut,
    /// Pings answered.
    pub pings: u64,
    /// Sequenced subscribers (`seq=1`, continuity): binary messages carry this many prefix
    /// bytes before the payload (`10 + topic length`), and text messages are notices (skipped).
    pub seq_prefix: Option<usize>,
}

impl Scanner {
    /// Scans `buf` from the front, calling `on` for each stamped data message; returns how many
    /// bytes were consumed (the caller keeps the rest and appends to it).
    pub fn scan(&mut self, buf: &[u8], mut on: impl FnMut(Stamp)) -> Result<usize, End> {
        let mut pos = 0usize;
        loop {
            if self.skip > 0 {
                let n = self.skip.min((buf.len() - pos) as u64);
                pos += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(pos);
                }
            }
            let h = match parse_header(&buf[pos..], Role::Client) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(e) => return Err(End::Protocol(e.reason)),
            };
            let body = pos + h.header_len;
            let prefix = self.seq_prefix.unwrap_or(0);
            match h.opcode {
                OpCode::Text if self.seq_prefix.is_some() => {}
                OpCode::Text | OpCode::Binary if h.payload_len >= (prefix + STAMP_LEN) as u64 => {
                    let at = body + prefix;
                    if buf.len() < at + STAMP_LEN {
                        return Ok(pos);
                    }
                    on(Stamp::read(&buf[at..at + STAMP_LEN]));
                }
                OpCode::Text | OpCode::Binary => self.short += 1,
                OpCode::Close => {
                    // The status code is the first two payload bytes (RFC 6455 5.5.1).
                    if h.payload_len < 2 {
                        return Err(End::Closed(None));
                    }
                    if buf.len() < body + 2 {
                        return Ok(pos);
                    }
                    let code = u16::from_be_bytes([buf[body], buf[body + 1]]);
                    return Err(End::Closed(Some(code)));
                }
                OpCode::Ping => {
                    // Control payloads are at most 125 bytes: wait for the whole ping.
                    let end = body + h.payload_len as usize;
                    if buf.len() < end {
                        return Ok(pos);
                    }
                    let mask = (self.pings as u32 ^ 0x5A3C_96E1).to_le_bytes();
                    encode_client_frame(&mut self.pongs, OpCode::Pong, true, &buf[body..end], mask);
                    self.pings += 1;
                }
                // Continuations of a fragmented message, pongs: nothing to record.
                _ => {}
            }
            pos = body;
            self.skip = h.payload_len;
        }
    }
}

/// An unmasked final server frame with `opcode` (payload < 64 KiB), built by hand rather than
/// through proto so tests of the receive side do not trust the encoder they exercise.
#[cfg(test)]
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(seq: u64, size: usize) -> Vec<u8> {
        let mut p = vec![0xAB; size];
        Stamp { sent_ns: 7, seq }.write(&mut p);
        frame(2, &p)
    }

    #[test]
    fn every_split_point_yields_the_same_stamps() {
        let mut wire = stamped(1, 16);
        wire.extend(stamped(2, 300));
        wire.extend(frame(9, b"ping"));
        wire.extend(frame(2, b"tiny"));
        wire.extend(stamped(3, 64));
        for chunk in [1, 2, 3, 7, 17, 100, wire.len()] {
            let mut sc = Scanner::default();
            let mut pending: Vec<u8> = Vec::new();
            let mut seen = Vec::new();
            for piece in wire.chunks(chunk) {
                pending.extend_from_slice(piece);
                let used = sc.scan(&pending, |s| seen.push(s.seq)).unwrap();
                pending.drain(..used);
            }
            assert_eq!(seen, vec![1, 2, 3], "chunk {chunk}");
            assert_eq!(sc.short, 1);
        }
    }

    #[test]
    fn pings_are_answered_with_masked_pongs_carrying_the_same_payload() {
        let mut wire = stamped(1, 16);
        wire.extend(frame(9, b"hb"));
        wire.extend(stamped(2, 16));
        let mut sc = Scanner::default();
        // The ping split mid-payload: nothing answered until it is whole.
        let cut = wire.len() - 18 - 1;
        assert_eq!(sc.scan(&wire[..cut], |_| {}), Ok(18));
        assert!(sc.pongs.is_empty());
        let mut seen = Vec::new();
        assert_eq!(
            sc.scan(&wire[18..], |s| seen.push(s.seq)),
            Ok(wire.len() - 18)
        );
        assert_eq!((seen, sc.pings), (vec![2], 1));
        // Decode what we would send as the server would.
        let mut pong = sc.pongs.to_vec();
        let mut dec = shardcast_proto::Decoder::new(shardcast_proto::DecoderConfig {
            role: Role::Server,
            max_message_size: 1024,
        });
        let d = dec.decode(&mut pong);
        assert_eq!(d.result, Ok(Some(shardcast_proto::Event::Pong(&b"hb"[..]))));
    }

    #[test]
    fn sequenced_streams_skip_notices_and_the_binary_prefix() {
        let mut p = vec![1, 0, 0, 0, 0, 0, 0, 0, 9, 1, b't'];
        let mut stamp = vec![0u8; 16];
        Stamp { sent_ns: 7, seq: 9 }.write(&mut stamp);
        p.extend(stamp);
        let mut wire = frame(1, br#"{"stream":"t","epoch":"0000000000000001","seq":0}"#);
        wire.extend(frame(2, &p));
        let mut sc = Scanner {
            seq_prefix: Some(11),
            ..Scanner::default()
        };
        let mut seen = Vec::new();
        assert_eq!(sc.scan(&wire, |s| seen.push(s.seq)), Ok(wire.len()));
        assert_eq!(seen, vec![9]);
    }

    #[test]
    fn close_and_garbage_end_the_scan() {
        let mut sc = Scanner::default();
        assert_eq!(sc.scan(&frame(8, b""), |_| {}), Err(End::Closed(None)));
        let mut sc = Scanner::default();
        let close = frame(8, &[0x03, 0xF5, b'x']);
        // Split inside the code: wait for both bytes, then report 1013.
        assert_eq!(sc.scan(&close[..3], |_| {}), Ok(0));
        assert_eq!(sc.scan(&close, |_| {}), Err(End::Closed(Some(1013))));
        let mut sc = Scanner::default();
        assert!(matches!(sc.scan(&[0xF2, 0], |_| {}), Err(End::Protocol(_))));
    }
}
