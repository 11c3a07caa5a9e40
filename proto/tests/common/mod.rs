//! Helpers shared by the decoder test suites.
#![allow(dead_code)]

use shardcast_proto::*;

/// An owned copy of an event, so results can be collected across calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// A permessage-deflate message: text or not, and its compressed payload.
    Compressed(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Error(u16),
}

pub fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Message(m) if m.compressed => {
            Ev::Compressed(m.kind == MessageKind::Text, m.payload.as_bytes().to_vec())
        }
        Event::Message(m) => match m.kind {
            MessageKind::Text => Ev::Text(m.payload.as_bytes().to_vec()),
            MessageKind::Binary => Ev::Binary(m.payload.as_bytes().to_vec()),
        },
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close(c) => Ev::Close(c.map(|(c, r)| (c.0, r.to_string()))),
    }
}

/// Decodes everything in `buf` (one shot), returning the events, stopping at an error.
pub fn decode_all(dec: &mut Decoder, buf: &[u8]) -> Vec<Ev> {
    let mut buf = buf.to_vec();
    let mut out = Vec::new();
    loop {
        let d = dec.decode(&mut buf);
        let consumed = d.consumed;
        match d.result {
            Err(e) => {
                out.push(Ev::Error(e.code.0));
                return out;
            }
            Ok(Some(ev)) => out.push(own(ev)),
            Ok(None) if consumed == 0 => return out,
            Ok(None) => {}
        }
        buf.drain(..consumed);
    }
}

/// Decodes `stream` delivered in pieces of the given sizes, like a caller that appends each
/// read to a buffer and drains consumed bytes from its front.
pub fn decode_chunked(
    dec: &mut Decoder,
    stream: &[u8],
    sizes: &mut dyn Iterator<Item = usize>,
) -> Vec<Ev> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        // Drain every event available in the buffer.
        loop {
            let d = dec.decode(&mut buf);
            let consumed = d.consumed;
            match d.result {
                Err(e) => {
                    out.push(Ev::Error(e.code.0));
                    return out;
                }
                Ok(Some(ev)) => out.push(own(ev)),
                Ok(None) if consumed == 0 => break,
                Ok(None) => {}
            }
            buf.drain(..consumed);
        }
        if pos == stream.len() {
            return out;
        }
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .max(1)
            .min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
    }
}
