//! Close codes (RFC 6455 section 7.4, IANA registry) and close-frame payload parsing.

use crate::error::ProtocolError;

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: endpoint going away (server shutdown, page navigation).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: abnormal closure without a close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (e.g. non-UTF-8 text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY: Self = Self(1008);
    /// 1009: message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1010: client expected an extension the server did not negotiate.
    pub const MANDATORY_EXT: Self = Self(1010);
    /// 1011: unexpected server condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: service restart (IANA registered).
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (IANA registered).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: bad gateway (IANA registered).
    pub const BAD_GATEWAY: Self = Self(1014);

    /// Whether this code may appear in a close frame on the wire: 1000-1003, 1007-1014 and the
    /// application/private range 3000-4999. 1004 is reserved, 1005/1006/1015 are local-only.
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Parses a complete (unmasked) close-frame payload.
///
/// Empty payload → `Ok(None)` (no status). Otherwise a 2-byte big-endian code valid on the wire
/// followed by a UTF-8 reason. A 1-byte payload, an invalid code or a non-UTF-8 reason → 1002.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("close payload of 1 byte")),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::protocol("close reason is not UTF-8"))?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_registry() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(code).is_valid_on_wire(), expected, "code {code}");
        }
        for bad in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!CloseCode(bad).is_valid_on_wire());
        }
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some((CloseCode::NORMAL, "bye")))
        );
        assert_eq!(
            parse_close_payload(b"\x0f\xa0"),
            Ok(Some((CloseCode(4000), "")))
        );
        assert_eq!(parse_close_payload(b"\x03").unwrap_err().code.0, 1002);
        assert_eq!(parse_close_payload(b"\x03\xed").unwrap_err().code.0, 1002);
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff").unwrap_err().code.0,
            1002
        );
    }
}
