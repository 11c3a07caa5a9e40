//! The receive-side state machine: frames in, messages and control events out.
//!
//! Zero copy for single-frame messages (the payload is unmasked in place and borrowed from the
//! caller's buffer); fragmented messages are reassembled into a buffer that exists only while
//! such a message is in progress.
//!
//! permessage-deflate ([`Decoder::set_permessage_deflate`]): RSV1 is accepted on the first
//! frame of a data message only (on a continuation or control frame, or when not negotiated,
//! it is a 1002). Such a message is reported with [`Message::compressed`] set and its
//! compressed payload; the size limit applies to the compressed bytes here and to the inflated
//! ones in [`crate::deflate::Inflater`], and UTF-8 is checked after inflation, not here.

use crate::close::{parse_close_payload, CloseCode};
use crate::error::ProtocolError;
use crate::frame::{parse_header_with, FrameHeader, OpCode, Role, RSV1};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;
use bytes::{Bytes, BytesMut};

/// Decoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Our side of the connection (decides the masking rule for received frames).
    pub role: Role,
    /// Largest message (sum of all fragments) accepted; larger → 1009.
    pub max_message_size: usize,
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (already validated).
    Text,
    /// Binary data.
    Binary,
}

/// A message payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'b> {
    /// A single-frame message: unmasked in place, borrowed from the input (zero copy).
    Borrowed(&'b [u8]),
    /// A fragmented message, reassembled.
    Assembled(Bytes),
}

impl Payload<'_> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Assembled(b) => b,
        }
    }
}

/// A complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'b> {
    /// Text or binary.
    pub kind: MessageKind,
    /// The (unmasked, and unless `compressed`, for text UTF-8-validated) payload.
    pub payload: Payload<'b>,
    /// permessage-deflate: the payload is compressed (RSV1 on its first frame); inflate it
    /// with [`crate::deflate::Inflater`], which also checks text.
    pub compressed: bool,
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'b> {
    /// A complete data message.
    Message(Message<'b>),
    /// A ping; the engine must answer with a pong carrying the same payload.
    Ping(&'b [u8]),
    /// A pong.
    Pong(&'b [u8]),
    /// A close frame: `None` if it carried no status, else a code valid on the wire and a
    /// UTF-8 reason. The decoder accepts no further input after this.
    Close(Option<(CloseCode, &'b str)>),
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'b> {
    /// Bytes to drop from the front of the input (0 while a frame is incomplete).
    pub consumed: usize,
    /// `Ok(Some(event))`; `Ok(None)` when more input is needed (`consumed == 0`) or a frame
    /// was absorbed without producing an event (a non-final fragment, `consumed > 0`); or the
    /// protocol error to fail the connection with.
    pub result: Result<Option<Event<'b>>, ProtocolError>,
}

/// State that exists only while a fragmented message is being reassembled.
#[derive(Debug)]
struct Reassembly {
    kind: MessageKind,
    compressed: bool,
    buf: BytesMut,
}

/// The receive-side state machine. Small by design (one per connection): the reassembly buffer
/// is boxed and allocated only for fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    max_message_size: usize,
    /// Payload bytes of the current (incomplete) front frame already unmasked and validated.
    processed: usize,
    /// Bytes still missing for the current frame, as of the last call.
    needed: usize,
    fragments: Option<Box<Reassembly>>,
    /// UTF-8 state of the text message in progress (single frame or fragmented).
    utf8: Utf8Validator,
    role: Role,
    closed: bool,
    /// RSV bits frames may carry: [`RSV1`] once permessage-deflate is negotiated, else 0.
    allowed_rsv: u8,
}

impl Decoder {
    /// A decoder with the given settings.
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            max_message_size: config.max_message_size,
            processed: 0,
            needed: 0,
            fragments: None,
            utf8: Utf8Validator::new(),
            role: config.role,
            closed: false,
            allowed_rsv: 0,
        }
    }

    /// permessage-deflate was negotiated (or not): accept RSV1 on the first frame of a data
    /// message and report such messages as [`Message::compressed`].
    pub fn set_permessage_deflate(&mut self, on: bool) {
        self.allowed_rsv = if on { RSV1 } else { 0 };
    }

    /// True after a Close event or a protocol error: no further input is decoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes still missing to complete the current frame, as of the last `decode` call that
    /// returned "need more input" (a lower bound while the header itself is incomplete; 0 when
    /// no frame is pending). Lets the caller size its read buffer.
    pub fn bytes_needed(&self) -> usize {
        self.needed
    }

    /// Whether a fragmented message is being reassembled.
    pub fn in_fragmented_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Heap bytes held for the fragmented message in progress (the reassembly buffer's
    /// capacity and its state), 0 when none: what a client parks on the server by leaving a
    /// message unfinished.
    pub fn reassembly_bytes(&self) -> usize {
        self.fragments
            .as_ref()
            .map_or(0, |f| f.buf.capacity() + std::mem::size_of::<Reassembly>())
    }

    /// Decodes at most one event from the front of `input` (the caller's unconsumed bytes).
    ///
    /// Contract: bytes not consumed must be presented again unchanged (possibly with more
    /// appended) on the next call. For a partial frame the bytes present are unmasked in place
    /// and UTF-8-validated right away (so invalid text fails before the frame is complete) and
    /// the decoder remembers how far it got. After a Close event or an error the decoder is
    /// closed and returns `consumed: 0, Ok(None)` forever.
    pub fn decode<'b>(&mut self, input: &'b mut [u8]) -> Decoded<'b> {
        if self.closed {
            self.needed = 0;
            return Decoded {
                consumed: 0,
                result: Ok(None),
            };
        }
        match self.decode_frame(input) {
            Ok((consumed, event)) => Decoded {
                consumed,
                result: Ok(event),
            },
            Err(e) => {
                self.closed = true;
                self.needed = 0;
                Decoded {
                    consumed: 0,
                    result: Err(e),
                }
            }
        }
    }

    fn decode_frame<'b>(
        &mut self,
        input: &'b mut [u8],
    ) -> Result<(usize, Option<Event<'b>>), ProtocolError> {
        let Some(header) = parse_header_with(input, self.role, self.allowed_rsv)? else {
            self.needed = min_header_len(input).saturating_sub(input.len()).max(1);
            return Ok((0, None));
        };
        let text = self.check_header(&header)?;
        // Sizes were bounded by `check_header` (data: ≤ max_message_size; control: ≤ 125), so
        // the conversion cannot truncate.
        let payload_len = header.payload_len as usize;
        let start = header.header_len;
        // Saturating: on 32-bit targets a frame near usize::MAX can simply never complete.
        let frame_len = start.saturating_add(payload_len);
        let available = input.len().min(frame_len) - start;

        if header.opcode.is_control() {
            // Control payloads are tiny: wait for the whole frame, then process it at once.
            if available < payload_len {
                self.needed = frame_len - input.len();
                return Ok((0, None));
            }
            self.needed = 0;
            let payload = &mut input[start..frame_len];
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            let payload: &'b [u8] = payload;
            let event = match header.opcode {
                OpCode::Ping => Event::Ping(payload),
                OpCode::Pong => Event::Pong(payload),
                _ => {
                    let close = parse_close_payload(payload)?;
                    self.closed = true;
                    Event::Close(close)
                }
            };
            return Ok((frame_len, Some(event)));
        }

        // Data frame: unmask and validate whatever arrived since the last call.
        debug_assert!(self.processed <= available, "input changed between calls");
        let done = self.processed.min(available);
        let fresh = &mut input[start + done..start + available];
        if let Some(key) = header.mask {
            apply_mask(fresh, key, done);
        }
        if text && self.utf8.feed(fresh).is_err() {
            return Err(ProtocolError::invalid_payload(
                "invalid UTF-8 in text message",
            ));
        }
        if available < payload_len {
            self.processed = available;
            self.needed = frame_len - input.len();
            return Ok((0, None));
        }
        self.processed = 0;
        self.needed = 0;
        let input: &'b [u8] = input;
        let payload = &input[start..frame_len];
        if text && header.fin && self.utf8.finish().is_err() {
            return Err(ProtocolError::invalid_payload(
                "text message ends mid code point",
            ));
        }
        let event = match (header.opcode, header.fin) {
            (OpCode::Continuation, fin) => {
                let Some(mut state) = self.fragments.take() else {
                    unreachable!("checked by check_header");
                };
                state.buf.extend_from_slice(payload);
                if !fin {
                    self.fragments = Some(state);
                    return Ok((frame_len, None));
                }
                let Reassembly {
                    kind,
                    compressed,
                    buf,
                } = *state;
                Event::Message(Message {
                    kind,
                    payload: Payload::Assembled(buf.freeze()),
                    compressed,
                })
            }
            (opcode, true) => Event::Message(Message {
                kind: kind_of(opcode),
                payload: Payload::Borrowed(payload),
                compressed: header.rsv != 0,
            }),
            (opcode, false) => {
                // Reserve for one more fragment of the same size, capped by the limit.
                let cap = (payload.len() * 2)
                    .min(self.max_message_size)
                    .max(payload.len());
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(payload);
                self.fragments = Some(Box::new(Reassembly {
                    kind: kind_of(opcode),
                    compressed: header.rsv != 0,
                    buf,
                }));
                return Ok((frame_len, None));
            }
        };
        Ok((frame_len, Some(event)))
    }

    /// Checks a header against the connection state before any payload is buffered; returns
    /// whether the frame's payload is text to validate (compressed text is validated once
    /// inflated).
    fn check_header(&self, h: &FrameHeader) -> Result<bool, ProtocolError> {
        // Only RSV1 can get here, and only once negotiated: it marks a message's first frame.
        if h.rsv != 0 && matches!(h.opcode, OpCode::Continuation) {
            return Err(ProtocolError::protocol("RSV1 on a continuation frame"));
        }
        let (assembled, text) = match (h.opcode, &self.fragments) {
            (OpCode::Close, _) if h.payload_len == 1 => {
                return Err(ProtocolError::protocol("close payload of 1 byte"))
            }
            (op, _) if op.is_control() && h.rsv != 0 => {
                return Err(ProtocolError::protocol("RSV1 on a control frame"))
            }
            (op, _) if op.is_control() => return Ok(false),
            (OpCode::Continuation, None) => {
                return Err(ProtocolError::protocol("continuation without a message"))
            }
            (OpCode::Continuation, Some(f)) => (
                f.buf.len() as u64,
                f.kind == MessageKind::Text && !f.compressed,
            ),
            (_, Some(_)) => {
                return Err(ProtocolError::protocol(
                    "new message inside a fragmented one",
                ))
            }
            (op, None) => (0, op == OpCode::Text && h.rsv == 0),
        };
        if assembled.saturating_add(h.payload_len) > self.max_message_size as u64 {
            return Err(ProtocolError::too_big("message over the size limit"));
        }
        Ok(text)
    }
}

fn kind_of(opcode: OpCode) -> MessageKind {
    if opcode == OpCode::Text {
        MessageKind::Text
    } else {
        MessageKind::Binary
    }
}

/// Header length implied by the bytes present so far (at least 2).
fn min_header_len(input: &[u8]) -> usize {
    match input {
        [_, b1, ..] => {
            let ext = match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
        }
        _ => 2,
    }
}
