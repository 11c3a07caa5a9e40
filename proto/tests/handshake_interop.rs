//! Interop: tungstenite's client completes (or refuses) the opening handshake against a server
//! built from `RequestParser` + `validate_upgrade` + `write_switching_protocols`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use shardcast_proto::handshake::{
    accept_key, validate_upgrade, write_rejection, write_switching_protocols,
};
use shardcast_proto::http::{HttpError, Parse, RequestParser, Status};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{Error, ProtocolError};
use tungstenite::http::HeaderValue;

const SUPPORTED: &[&str] = &["chat.v1", "superchat"];
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the server saw, for assertions in the test thread.
#[derive(Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    offered: Vec<String>,
}

/// How the test server answers a valid upgrade.
#[derive(Clone, Copy)]
enum Answer {
    Accept,
    WrongAcceptKey,
    Reject(Status),
}

/// Accept one connection, read the head with `RequestParser`, validate it and answer.
fn serve_once(answer: Answer) -> (SocketAddr, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut buf = Vec::new();
        let mut parser = RequestParser::default();
        let mut chunk = [0u8; 64]; // small reads so the head arrives in several feeds
                                   // Parse after every read; the borrow of `buf` ends before the next read extends it.
        loop {
            let n = stream.read(&mut chunk).expect("read");
            assert!(n > 0, "client closed before the head was complete");
            buf.extend_from_slice(&chunk[..n]);
            if matches!(parser.parse(&buf).expect("parse"), Parse::Complete { .. }) {
                break;
            }
        }
        let Ok(Parse::Complete { request, head_len }) = parser.parse(&buf) else {
            unreachable!("parsed complete above");
        };
        assert_eq!(head_len, buf.len(), "client sent nothing after the head");
        let upgrade = validate_upgrade(&request).expect("valid upgrade");
        let seen = Seen {
            path: upgrade.path().to_owned(),
            query: upgrade.query().map(str::to_owned),
            offered: upgrade.protocols().map(str::to_owned).collect(),
        };
        let mut out = Vec::new();
        match answer {
            Answer::Accept => write_switching_protocols(
                &mut out,
                &upgrade.accept_key(),
                upgrade.select_protocol(SUPPORTED),
                &[("X-Server", "shardcast")],
            ),
            Answer::WrongAcceptKey => {
                write_switching_protocols(&mut out, &accept_key(b"not the key"), None, &[])
            }
            Answer::Reject(status) => write_rejection(&mut out, &HttpError::new(status, "go away")),
        }
        stream.write_all(&out).expect("write");
        seen
    });
    (addr, handle)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

#[test]
fn tungstenite_client_completes_handshake_with_subprotocol() {
    let (addr, server) = serve_once(Answer::Accept);
    let mut req = format!("ws://{addr}/chat?room=a")
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("chat.v2, chat.v1"),
    );
    let (_ws, response) = tungstenite::client(req, connect(addr)).expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    let header = |n: &str| {
        response
            .headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("sec-websocket-protocol").as_deref(), Some("chat.v1"));
    assert_eq!(header("x-server").as_deref(), Some("shardcast"));
    let seen = server.join().expect("server");
    assert_eq!(seen.path, "/chat");
    assert_eq!(seen.query.as_deref(), Some("room=a"));
    assert_eq!(seen.offered, ["chat.v2", "chat.v1"]);
}

#[test]
fn tungstenite_client_completes_handshake_without_subprotocol() {
    let (addr, server) = serve_once(Answer::Accept);
    let req = format!("ws://{addr}/").into_client_request().expect("req");
    let (_ws, response) = tungstenite::client(req, connect(addr)).expect("handshake");
    assert_eq!(response.status().as_u16(), 101);
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    let seen = server.join().expect("server");
    assert!(seen.offered.is_empty());
}

#[test]
fn tungstenite_client_rejects_wrong_accept_key() {
    let (addr, server) = serve_once(Answer::WrongAcceptKey);
    let req = format!("ws://{addr}/").into_client_request().expect("req");
    let err = tungstenite::client(req, connect(addr)).expect_err("must reject");
    assert!(
        matches!(
            err,
            tungstenite::HandshakeError::Failure(Error::Protocol(
                ProtocolError::SecWebSocketAcceptKeyMismatch
            ))
        ),
        "{err:?}"
    );
    server.join().expect("server");
}

#[test]
fn tungstenite_client_sees_rejection_status() {
    let (addr, server) = serve_once(Answer::Reject(Status::Forbidden));
    let req = format!("ws://{addr}/").into_client_request().expect("req");
    let err = tungstenite::client(req, connect(addr)).expect_err("must fail");
    match err {
        tungstenite::HandshakeError::Failure(Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
            assert_eq!(response.body().as_deref(), Some(&b"go away"[..]));
        }
        other => panic!("{other:?}"),
    }
    server.join().expect("server");
}
