//! Protocol errors: each carries the close code RFC 6455 demands for the violation.

use crate::close::CloseCode;
use std::fmt;

/// A violation of RFC 6455 by the peer. The connection must be failed with a close frame
/// carrying [`ProtocolError::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    /// The close code to send (1002, 1007 or 1009 for errors detected by this crate).
    pub code: CloseCode,
    /// A short, static, human-readable reason (fits in a close frame).
    pub reason: &'static str,
}

impl ProtocolError {
    /// 1002: the peer broke the framing rules.
    pub const fn protocol(reason: &'static str) -> Self {
        Self {
            code: CloseCode::PROTOCOL_ERROR,
            reason,
        }
    }

    /// 1007: a text message (or fragment) is not valid UTF-8.
    pub const fn invalid_payload(reason: &'static str) -> Self {
        Self {
            code: CloseCode::INVALID_PAYLOAD,
            reason,
        }
    }

    /// 1009: a message exceeds the configured maximum size.
    pub const fn too_big(reason: &'static str) -> Self {
        Self {
            code: CloseCode::TOO_BIG,
            reason,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "websocket protocol error {}: {}",
            self.code.0, self.reason
        )
    }
}

impl std::error::Error for ProtocolError {}
