//! permessage-deflate (RFC 7692), sans-IO: negotiation, the compress-once encoder and the
//! bounded inflater.
//!
//! - [`negotiate`]: parse every offer of the client's `Sec-WebSocket-Extensions` lines and
//!   choose the response ([`Agreed`]). The server always answers `server_no_context_takeover`
//!   (each message is compressed on its own, so one compressed frame serves every connection)
//!   and `client_no_context_takeover` (no inflate window is kept between messages).
//! - [`Deflater`]: one message → one complete RSV1 frame, shared like any broadcast frame.
//! - [`Inflater`]: received compressed messages → bytes, the size limit enforced while
//!   inflating (1009 before the limit is exceeded by more than one byte).
//!
//! The [`Decoder`](crate::Decoder) accepts RSV1 on the first frame of a data message only when
//! told permessage-deflate was negotiated ([`Decoder::set_permessage_deflate`](crate::Decoder::set_permessage_deflate))
//! and reports such messages as [`Message::compressed`](crate::Message::compressed); their
//! payload is the compressed bytes, for the caller to inflate.

mod deflater;
mod inflater;
pub mod negotiate;

pub use deflater::{Deflater, LEVELS};
pub use inflater::{Inflater, TAIL};
pub use negotiate::{negotiate, Agreed};
