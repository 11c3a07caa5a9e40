//! Interop over a real TCP socket pair: tungstenite's client against a small echo server built
//! only from this crate (`RequestParser` + `validate_upgrade` + `write_switching_protocols`,
//! then `Decoder` + the encoders). Every socket has timeouts so a failure cannot hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use shardcast_proto::handshake::{validate_upgrade, write_rejection, write_switching_protocols};
use shardcast_proto::http::{Parse, RequestParser};
use shardcast_proto::{
    encode_close, encode_frame, encode_pong, Decoder, DecoderConfig, Event, MessageKind, OpCode,
    Role,
};
use tungstenite::protocol::frame::coding::{
    CloseCode as TCloseCode, Control, Data, OpCode as TOpCode,
};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as TError, Message as TMessage, WebSocket};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Server limit used by every test; the large-message tests send exactly this much.
const MAX_MESSAGE: usize = 4 << 20;

/// What the echo server does with one decoded step.
enum Step {
    NeedMore,
    Continue,
    Reply(Bytes),
    /// Send this close frame, then shut the connection down.
    Close(Bytes),
}

/// Accepts one connection and echoes until a close (either side's) or EOF.
fn spawn_echo_server() -> (std::net::SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = handshake(&mut stream);
        echo(&mut stream, &mut buf);
    });
    (addr, handle)
}

/// Reads the request head, answers 101 (or a rejection, which ends the test with a panic), and
/// returns the bytes received after the head: they are the first frame bytes.
fn handshake(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut parser = RequestParser::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read head");
        assert!(n > 0, "EOF before the request head was complete");
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let head_len = match parser.parse(&buf).expect("parse head") {
            Parse::Partial => continue,
            Parse::Complete { request, head_len } => match validate_upgrade(&request) {
                Ok(upgrade) => {
                    write_switching_protocols(&mut out, &upgrade.accept_key(), None, &[]);
                    head_len
                }
                Err(err) => {
                    write_rejection(&mut out, &err);
                    stream.write_all(&out).unwrap();
                    panic!("upgrade rejected: {err}");
                }
            },
        };
        stream.write_all(&out).expect("write 101");
        buf.drain(..head_len);
        return buf;
    }
}

/// The frame loop: append reads to `buf`, decode repeatedly, drain what was consumed.
fn echo(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut dec = Decoder::new(DecoderConfig {
        role: Role::Server,
        max_message_size: MAX_MESSAGE,
    });
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let d = dec.decode(buf);
        let consumed = d.consumed;
        let step = match d.result {
            Ok(None) if consumed == 0 => Step::NeedMore,
            Ok(None) | Ok(Some(Event::Pong(_))) => Step::Continue,
            Ok(Some(Event::Message(m))) => {
                let opcode = match m.kind {
                    MessageKind::Text => OpCode::Text,
                    MessageKind::Binary => OpCode::Binary,
                };
                Step::Reply(encode_frame(opcode, m.payload.as_bytes()))
            }
            Ok(Some(Event::Ping(p))) => Step::Reply(encode_pong(p)),
            Ok(Some(Event::Close(Some((code, reason))))) => Step::Close(encode_close(code, reason)),
            Ok(Some(Event::Close(None))) => Step::Close(encode_frame(OpCode::Close, &[])),
            Err(err) => Step::Close(encode_close(err.code, err.reason)),
        };
        buf.drain(..consumed);
        match step {
            Step::Continue => {}
            Step::Reply(frame) => stream.write_all(&frame).expect("write reply"),
            Step::Close(frame) => {
                stream.write_all(&frame).expect("write close");
                shut_down(stream);
                return;
            }
            Step::NeedMore => {
                let n = stream.read(&mut chunk).expect("read frames");
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Ends our side, then reads and discards until the client closes: closing a socket with unread
/// input sends a RST, which could destroy the close frame before the client reads it.
fn shut_down(stream: &mut TcpStream) {
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut sink = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("draining after close: {e}"),
        }
    }
}

fn connect() -> (WebSocket<TcpStream>, JoinHandle<()>) {
    let (addr, server) = spawn_echo_server();
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(2 * MAX_MESSAGE))
        .max_frame_size(Some(2 * MAX_MESSAGE));
    let url = format!("ws://{addr}/echo");
    let (ws, response) =
        tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
            .expect("client handshake");
    assert_eq!(response.status().as_u16(), 101);
    (ws, server)
}

/// Sends `msg`, expects it echoed unchanged, then closes cleanly.
fn roundtrip(msg: TMessage) {
    let (mut ws, server) = connect();
    ws.send(msg.clone()).expect("send");
    let echoed = ws.read().expect("read echo");
    assert!(echoed == msg, "echo differs from what was sent");
    close_normally(ws, server);
}

/// Client-initiated close: expects the server's close (1000 + reason echoed), then the end.
fn close_normally(mut ws: WebSocket<TcpStream>, server: JoinHandle<()>) {
    ws.close(Some(CloseFrame {
        code: TCloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("close");
    match ws.read().expect("read close reply") {
        TMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, TCloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(matches!(ws.read(), Err(TError::ConnectionClosed)));
    drop(ws);
    server.join().expect("server thread");
}

/// Sends raw frames, expects the server to fail the connection with `code`.
fn expect_failure(frames: Vec<Frame>, code: u16) {
    let (mut ws, server) = connect();
    for frame in frames {
        ws.send(TMessage::Frame(frame)).expect("send frame");
    }
    let got = loop {
        match ws.read() {
            Ok(TMessage::Close(Some(frame))) => break u16::from(frame.code),
            Ok(TMessage::Close(None)) => panic!("close without a code"),
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got error {e}"),
        }
    };
    assert_eq!(got, code);
    // tungstenite answered the close; the server has shut down its side, so the stream ends.
    assert!(matches!(ws.read(), Err(TError::ConnectionClosed)));
    drop(ws);
    server.join().expect("server thread");
}

/// Mixed ASCII and multi-byte text of exactly `len` bytes.
fn text(len: usize) -> String {
    let unit = "shardcast héllo wörld € 😀 ";
    let mut s = unit.repeat(len / unit.len() + 1);
    let mut end = len;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    while s.len() < len {
        s.push('x');
    }
    s
}

#[test]
fn text_echo() {
    roundtrip(TMessage::text("hello, wörld"));
}

#[test]
fn binary_echo() {
    roundtrip(TMessage::binary((0..=255u8).collect::<Vec<u8>>()));
}

#[test]
fn empty_message_echo() {
    roundtrip(TMessage::text(""));
    roundtrip(TMessage::binary(Vec::new()));
}

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    let (mut ws, server) = connect();
    let frames = [
        Frame::message("frag", TOpCode::Data(Data::Text), false),
        Frame::ping("mid"),
        Frame::message("mént", TOpCode::Data(Data::Continue), false),
        Frame::message("ed!", TOpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        ws.send(TMessage::Frame(frame)).expect("send frame");
    }
    // The ping is answered as soon as it is decoded, before the message completes.
    assert_eq!(ws.read().expect("pong"), TMessage::Pong("mid".into()));
    assert_eq!(ws.read().expect("echo"), TMessage::text("fragménted!"));
    close_normally(ws, server);
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let (mut ws, server) = connect();
    ws.send(TMessage::Ping(vec![1, 2, 3, 250].into()))
        .expect("ping");
    assert_eq!(
        ws.read().expect("pong"),
        TMessage::Pong(vec![1, 2, 3, 250].into())
    );
    close_normally(ws, server);
}

#[test]
fn client_initiated_close_handshake() {
    let (ws, server) = connect();
    close_normally(ws, server);
}

#[test]
fn large_text_1mib() {
    roundtrip(TMessage::text(text(1 << 20)));
}

#[test]
fn large_binary_4mib_at_the_limit() {
    let payload: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i * 7 + i / 251) as u8).collect();
    roundtrip(TMessage::binary(payload));
}

#[test]
fn message_over_max_gets_1009() {
    let frame = Frame::message(
        vec![0u8; MAX_MESSAGE + 1],
        TOpCode::Data(Data::Binary),
        true,
    );
    expect_failure(vec![frame], 1009);
}

#[test]
fn invalid_utf8_gets_1007() {
    let frame = Frame::message(
        vec![b'o', b'k', 0xff, 0xfe],
        TOpCode::Data(Data::Text),
        true,
    );
    expect_failure(vec![frame], 1007);
}

#[test]
fn rsv_bit_gets_1002() {
    let mut frame = Frame::message("rsv", TOpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    expect_failure(vec![frame], 1002);
}

#[test]
fn unknown_control_opcode_gets_1002() {
    let header = FrameHeader {
        opcode: TOpCode::Control(Control::Reserved(0xB)),
        ..FrameHeader::default()
    };
    expect_failure(vec![Frame::from_payload(header, "?".into())], 1002);
}
