//! Frame header parsing and writing (RFC 6455 section 5.2) and opcodes.

use crate::error::ProtocolError;
use bytes::BufMut;

/// A frame opcode. Reserved opcodes (3-7, 0xB-0xF) are rejected at parse time, so they have
/// no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit wire opcode; `None` for reserved values.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong are control frames: at most 125 bytes, never fragmented.
    pub const fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Which side of the connection this endpoint is; decides the masking rule for received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server: every frame from the peer must be masked.
    Server,
    /// We are the client: frames from the peer must not be masked.
    Client,
}

/// The RSV1 bit as it appears in [`FrameHeader::rsv`]: set on the first frame of a message
/// compressed with permessage-deflate (RFC 7692 §6).
pub const RSV1: u8 = 0x4;

/// Largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1-3 bits (`0b100` = RSV1): only bits the caller allowed
    /// ([`parse_header_with`]) can be set.
    pub rsv: u8,
    /// The frame opcode.
    pub opcode: OpCode,
    /// Masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Declared payload length.
    pub payload_len: u64,
    /// Length of the header on the wire (2..=14).
    pub header_len: usize,
}

/// Parses a frame header from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. Every rule decidable from the first two bytes (RSV,
/// reserved opcode, control frame fragmented or over 125 bytes, masking vs `role`) is checked
/// before the extended length arrives, so bad frames fail as early as possible. Non-minimal
/// length encodings and 64-bit lengths with the top bit set are 1002 errors. Every RSV bit is
/// refused (no extension negotiated); see [`parse_header_with`].
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, ProtocolError> {
    parse_header_with(buf, role, 0)
}

/// [`parse_header`] that lets the RSV bits in `allowed_rsv` through (e.g. [`RSV1`] once
/// permessage-deflate is negotiated); the caller checks where they may appear (RSV1: on the
/// first frame of a data message only).
#[inline]
pub fn parse_header_with(
    buf: &[u8],
    role: Role,
    allowed_rsv: u8,
) -> Result<Option<FrameHeader>, ProtocolError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    if rsv & !allowed_rsv != 0 {
        return Err(ProtocolError::protocol("reserved bits set"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::protocol("reserved opcode"))?;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::protocol(
                "control frame payload over 125 bytes",
            ));
        }
    }
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::protocol("unmasked client frame")),
        (Role::Client, true) => return Err(ProtocolError::protocol("masked server frame")),
        _ => {}
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
            if len < 126 {
                return Err(ProtocolError::protocol("non-minimal 16-bit length"));
            }
            (len, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(b);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(ProtocolError::protocol("64-bit length with top bit set"));
            }
            if len < 65536 {
                return Err(ProtocolError::protocol("non-minimal 64-bit length"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(k) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: pos,
    }))
}

/// Length of a header for a payload of `payload_len` bytes, with or without a mask key.
pub const fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= 0xFFFF {
        4
    } else {
        10
    };
    if masked {
        base + 4
    } else {
        base
    }
}

/// Appends a frame header (minimal length encoding) to `out`, so a caller can write the payload
/// itself (e.g. straight from another buffer) without an intermediate copy.
/// Returns the number of header bytes written.
pub fn write_header(
    out: &mut impl BufMut,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    write_header_rsv(out, fin, 0, opcode, mask, payload_len)
}

/// [`write_header`] with RSV bits (`rsv` as in [`FrameHeader::rsv`], e.g. [`RSV1`]).
pub fn write_header_rsv(
    out: &mut impl BufMut,
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    // Built on the stack and appended once: one capacity check instead of up to four.
    let mut h = [0u8; MAX_HEADER_LEN];
    h[0] = (u8::from(fin) << 7) | ((rsv & 0x7) << 4) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if payload_len < 126 {
        h[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= 0xFFFF {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        h[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    out.put_slice(&h[..pos]);
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(buf: &[u8], role: Role) -> u16 {
        parse_header(buf, role).unwrap_err().code.0
    }

    #[test]
    fn opcodes_round_trip_and_reserved_rejected() {
        for v in 0u8..16 {
            match OpCode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(matches!(v, 3..=7 | 0xB..=0xF)),
            }
        }
    }

    #[test]
    fn header_errors_are_decided_from_two_bytes() {
        for rsv in 1..8u8 {
            assert_eq!(code(&[0x81 | (rsv << 4), 0x80], Role::Server), 1002);
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(code(&[0x80 | op, 0x80], Role::Server), 1002);
        }
        assert_eq!(code(&[0x09, 0x80], Role::Server), 1002, "fragmented ping");
        assert_eq!(code(&[0x89, 0x80 | 126], Role::Server), 1002, "ping > 125");
        assert_eq!(code(&[0x81, 0x05], Role::Server), 1002, "server: unmasked");
        assert_eq!(code(&[0x81, 0x85], Role::Client), 1002, "client: masked");
        assert_eq!(parse_header(&[0x81], Role::Server), Ok(None));
    }

    #[test]
    fn allowed_rsv_bits_pass_and_round_trip() {
        assert_eq!(
            code(&[0xC1, 0x80], Role::Server),
            1002,
            "RSV1 not negotiated"
        );
        let h = parse_header_with(&[0xC1, 0x80, 1, 2, 3, 4], Role::Server, RSV1)
            .unwrap()
            .unwrap();
        assert_eq!((h.rsv, h.opcode, h.fin), (RSV1, OpCode::Text, true));
        for rsv in [2u8, 1, 3, 6] {
            let b0 = 0x81 | (rsv << 4);
            let err = parse_header_with(&[b0, 0x80], Role::Server, RSV1).unwrap_err();
            assert_eq!(err.code.0, 1002, "rsv {rsv:#b}");
        }
        let mut out = Vec::new();
        write_header_rsv(&mut out, true, RSV1, OpCode::Binary, None, 300);
        assert_eq!(&out[..2], &[0xC2, 126]);
        let h = parse_header_with(&out, Role::Client, RSV1)
            .unwrap()
            .unwrap();
        assert_eq!((h.rsv, h.payload_len), (RSV1, 300));
    }

    #[test]
    fn lengths_must_be_minimal_and_63_bit() {
        assert_eq!(code(&[0x82, 0xFE, 0, 125], Role::Server), 1002);
        assert_eq!(
            code(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], Role::Server),
            1002
        );
        assert_eq!(
            code(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], Role::Server),
            1002
        );
        let h = parse_header(&[0x82, 0x7E, 0, 126], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len, h.mask), (126, 4, None));
        let h = parse_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0], Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, h.header_len), (65536, 10));
        assert_eq!(parse_header(&[0x82, 0xFE, 0], Role::Server), Ok(None));
        assert_eq!(
            parse_header(&[0x82, 0xFE, 0, 200, 1, 2, 3], Role::Server),
            Ok(None)
        );
    }

    #[test]
    fn write_then_parse_at_boundaries() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                let n = write_header(&mut out, true, OpCode::Binary, mask, len);
                assert_eq!(n, out.len());
                assert_eq!(n, header_len(len, mask.is_some()));
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let h = parse_header(&out, role).unwrap().unwrap();
                assert_eq!(
                    (h.payload_len, h.header_len, h.mask, h.fin),
                    (len, n, mask, true)
                );
                assert_eq!(parse_header(&out[..n - 1], role), Ok(None));
            }
        }
    }
}
