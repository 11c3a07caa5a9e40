//! Frame encoding: server frames as one contiguous, shareable `Bytes`; masked client frames.

use crate::close::CloseCode;
use crate::frame::{header_len, write_header, OpCode, MAX_CONTROL_PAYLOAD};
use crate::mask::apply_mask;
use bytes::{Bytes, BytesMut};

/// Encodes one final, unmasked (server) frame: a single allocation of exactly header + payload,
/// so the result can be shared by reference across connections and threads.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header_len(len, false) + payload.len());
    write_header(&mut out, true, opcode, None, len);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Like [`encode_frame`], with the payload being the concatenation of `parts` (e.g. a JSON
/// wrapper around a message), still in one allocation.
pub fn encode_frame_parts(opcode: OpCode, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(header_len(len as u64, false) + len);
    write_header(&mut out, true, opcode, None, len as u64);
    for part in parts {
        out.extend_from_slice(part);
    }
    // len == capacity, so the conversion keeps the allocation as is.
    Bytes::from(out)
}

/// Encodes a server close frame with `code` and `reason`; the reason is truncated at a char
/// boundary to fit the 123 bytes a control frame leaves after the code.
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let max = MAX_CONTROL_PAYLOAD - 2;
    let mut end = reason.len().min(max);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode_frame_parts(
        OpCode::Close,
        &[&code.0.to_be_bytes(), &reason.as_bytes()[..end]],
    )
}

/// Encodes a server pong echoing `payload` (at most 125 bytes, as any decoded ping is; longer
/// input is truncated to keep the frame valid).
pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode_frame(
        OpCode::Pong,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// Appends a masked (client-role) frame to `out`; used by load generators and tests.
pub fn encode_client_frame(
    out: &mut BytesMut,
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: [u8; 4],
) {
    out.reserve(header_len(payload.len() as u64, true) + payload.len());
    write_header(out, fin, opcode, Some(mask), payload.len() as u64);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frame_is_exact_and_unmasked() {
        let f = encode_frame(OpCode::Text, b"hi");
        assert_eq!(&f[..], b"\x81\x02hi");
        let f = encode_frame_parts(OpCode::Binary, &[b"ab", b"", b"cd"]);
        assert_eq!(&f[..], b"\x82\x04abcd");
        let big = vec![7u8; 70_000];
        let f = encode_frame(OpCode::Binary, &big);
        assert_eq!(f.len(), 10 + big.len());
        assert_eq!(&f[..2], &[0x82, 127]);
    }

    #[test]
    fn close_reason_truncated_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let f = encode_close(CloseCode::GOING_AWAY, &reason);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(f.len() - 2 <= 125);
        assert_eq!(&f[2..4], &1001u16.to_be_bytes());
        let text = std::str::from_utf8(&f[4..]).unwrap();
        assert_eq!(text, "é".repeat(61));
        assert_eq!(
            &encode_close(CloseCode::NORMAL, "")[..],
            b"\x88\x02\x03\xe8"
        );
    }

    #[test]
    fn pong_and_client_frame() {
        assert_eq!(&encode_pong(b"x")[..], b"\x8a\x01x");
        let mut out = BytesMut::new();
        encode_client_frame(&mut out, OpCode::Text, false, b"abcd", [1, 2, 3, 4]);
        assert_eq!(
            &out[..],
            &[
                0x01,
                0x84,
                1,
                2,
                3,
                4,
                b'a' ^ 1,
                b'b' ^ 2,
                b'c' ^ 3,
                b'd' ^ 4
            ]
        );
    }
}
