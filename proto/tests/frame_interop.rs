//! Interop with tungstenite: our server frames decode in tungstenite's client, and tungstenite's
//! masked client frames decode in our server-role decoder.

use bytes::BytesMut;
use shardcast_proto::frame::write_header;
use shardcast_proto::{encode_close, encode_frame, CloseCode, OpCode};
use std::io::{Cursor, Read, Write};
use tungstenite::protocol::frame::coding::{CloseCode as TCloseCode, Data, OpCode as TOpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::Role as TRole;
use tungstenite::{Message as TMessage, WebSocket};

mod common;
use common::{decode_all, Ev};

/// An in-memory duplex stream: reads from `input`, records writes in `output`.
struct Mem {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tungstenite_client(input: Vec<u8>) -> WebSocket<Mem> {
    let mem = Mem {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    WebSocket::from_raw_socket(mem, TRole::Client, None)
}

fn our_server() -> shardcast_proto::Decoder {
    shardcast_proto::Decoder::new(shardcast_proto::DecoderConfig {
        role: shardcast_proto::Role::Server,
        max_message_size: 4 << 20,
    })
}

fn big() -> Vec<u8> {
    (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn our_frames_decode_in_tungstenite() {
    let big = big();
    let mut stream = Vec::new();
    stream.extend_from_slice(&encode_frame(OpCode::Text, "héllo".as_bytes()));
    stream.extend_from_slice(&encode_frame(OpCode::Binary, &[0, 1, 2, 255]));
    // Fragmented text with a ping in between, using the header writer.
    write_header(&mut stream, false, OpCode::Text, None, 3);
    stream.extend_from_slice(b"abc");
    stream.extend_from_slice(&encode_frame(OpCode::Ping, b"p!"));
    write_header(&mut stream, true, OpCode::Continuation, None, 2);
    stream.extend_from_slice(b"de");
    stream.extend_from_slice(&encode_frame(OpCode::Pong, b"q"));
    stream.extend_from_slice(&encode_frame(OpCode::Text, &big));
    stream.extend_from_slice(&encode_close(CloseCode::GOING_AWAY, "bye"));

    let mut ws = tungstenite_client(stream);
    assert_eq!(ws.read().unwrap(), TMessage::text("héllo"));
    assert_eq!(ws.read().unwrap(), TMessage::binary(vec![0, 1, 2, 255]));
    assert_eq!(ws.read().unwrap(), TMessage::Ping(b"p!".to_vec().into()));
    assert_eq!(ws.read().unwrap(), TMessage::text("abcde"));
    assert_eq!(ws.read().unwrap(), TMessage::Pong(b"q".to_vec().into()));
    assert_eq!(
        ws.read().unwrap(),
        TMessage::text(String::from_utf8(big).unwrap())
    );
    assert_eq!(
        ws.read().unwrap(),
        TMessage::Close(Some(CloseFrame {
            code: TCloseCode::Away,
            reason: "bye".into()
        }))
    );
}

#[test]
fn tungstenite_frames_decode_in_ours() {
    let big = big();
    let mut ws = tungstenite_client(Vec::new());
    ws.send(TMessage::text("héllo")).unwrap();
    ws.send(TMessage::binary(vec![0, 1, 2, 255])).unwrap();
    ws.send(TMessage::Ping(b"p!".to_vec().into())).unwrap();
    ws.send(TMessage::Pong(b"q".to_vec().into())).unwrap();
    ws.send(TMessage::binary(big.clone())).unwrap();
    let mut stream = std::mem::take(&mut ws.get_mut().output);

    // Fragmented message with an interleaved ping, built from tungstenite's masked frames.
    let frames = [
        Frame::message("€".as_bytes().to_vec(), TOpCode::Data(Data::Text), false),
        Frame::ping(b"mid".to_vec()),
        Frame::message(vec![0xF0, 0x9F], TOpCode::Data(Data::Continue), false),
        Frame::message(vec![0x98, 0x80], TOpCode::Data(Data::Continue), true),
    ];
    for (i, mut frame) in frames.into_iter().enumerate() {
        frame.header_mut().mask = Some([i as u8, 0x5a, 0xa5, 0xff]);
        frame.format(&mut stream).unwrap();
    }

    ws.close(Some(CloseFrame {
        code: TCloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    let _ = ws.flush();
    stream.extend(std::mem::take(&mut ws.get_mut().output));

    assert_eq!(
        decode_all(&mut our_server(), &stream),
        [
            Ev::Text("héllo".as_bytes().to_vec()),
            Ev::Binary(vec![0, 1, 2, 255]),
            Ev::Ping(b"p!".to_vec()),
            Ev::Pong(b"q".to_vec()),
            Ev::Binary(big),
            Ev::Ping(b"mid".to_vec()),
            Ev::Text("€😀".as_bytes().to_vec()),
            Ev::Close(Some((1000, "done".to_string()))),
        ]
    );
}

#[test]
fn client_frames_we_encode_decode_in_tungstenite_server() {
    // Our masked client frames are accepted by tungstenite in the server role.
    let mut out = BytesMut::new();
    shardcast_proto::encode_client_frame(&mut out, OpCode::Binary, false, b"12", [9, 8, 7, 6]);
    shardcast_proto::encode_client_frame(&mut out, OpCode::Continuation, true, b"34", [1, 2, 3, 4]);
    let mem = Mem {
        input: Cursor::new(out.to_vec()),
        output: Vec::new(),
    };
    let mut ws = WebSocket::from_raw_socket(mem, TRole::Server, None);
    assert_eq!(ws.read().unwrap(), TMessage::binary(b"1234".to_vec()));
}
