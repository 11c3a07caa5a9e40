//! Sans-IO, zero-copy RFC 6455 (WebSocket) framing and the HTTP/1.1 upgrade, for shardcast.
//!
//! This crate does no I/O, owns no clock and depends on no async runtime: every item is a pure
//! function or a state machine over byte slices. The engine (`shardcast`) drives it.
//!
//! Layout, one concern per module:
//! - [`http`]: incremental HTTP/1.1 request-head parsing with limits, plain responses.
//! - [`handshake`]: WebSocket upgrade validation, `Sec-WebSocket-Accept`, the 101 response.
//! - [`frame`]: frame header parsing/writing and opcodes.
//! - [`mask`]: in-place (un)masking, word-at-a-time, with a scalar reference.
//! - [`utf8`]: incremental, fail-fast UTF-8 validation across fragments.
//! - [`close`]: close codes and close-frame payloads.
//! - [`decode`]: the receive-side state machine (frames → messages and control events).
//! - [`encode`]: frame encoding (server frames as one shared `Bytes`, masked client frames).
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compress-once frames, bounded
//!   inflation.
//! - [`error`]: protocol errors, each carrying the close code the RFC demands.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod close;
pub mod decode;
pub mod deflate;
pub mod encode;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod mask;
pub mod utf8;

pub use close::CloseCode;
pub use decode::{Decoded, Decoder, DecoderConfig, Event, Message, MessageKind, Payload};
pub use encode::{
    encode_client_frame, encode_close, encode_frame, encode_frame_parts, encode_pong,
};
pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode, Role};
