//! Server-side opening handshake of one typical browser request (~550 bytes, 14 headers).
//!
//! Compared, per iteration, on the same bytes already in memory:
//! - `shardcast`: `RequestParser::parse` + `validate_upgrade` + subprotocol choice +
//!   `accept_key` + `write_switching_protocols` into a reused `Vec`.
//! - `tungstenite`: `accept_hdr_with_config` over an in-memory `Read + Write` stream, with a
//!   callback that chooses the same subprotocol. This is tungstenite's public server handshake:
//!   it parses (httparse), builds `http::Request`/`Response` values, validates, writes the 101,
//!   and constructs the `WebSocket` (its buffers set to 4 KiB so allocation size does not
//!   dominate). Constructing the socket is extra work our side does not do.

use std::hint::black_box;
use std::io::{self, Cursor, Read, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast_proto::handshake::{validate_upgrade, write_switching_protocols};
use shardcast_proto::http::{Parse, RequestParser};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;

const REQUEST: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: ws.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f1c2a9be7d04c55a3c1b2e9f0d8a7c6\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: chat.v2, chat.v1\r\n\
\r\n";

const SUPPORTED: &[&str] = &["chat.v1"];

fn shardcast_handshake(out: &mut Vec<u8>) {
    out.clear();
    let mut parser = RequestParser::default();
    let Ok(Parse::Complete { request, .. }) = parser.parse(black_box(REQUEST)) else {
        panic!("request must parse");
    };
    let upgrade = validate_upgrade(&request).expect("valid upgrade");
    let protocol = upgrade.select_protocol(SUPPORTED);
    write_switching_protocols(out, &upgrade.accept_key(), protocol, &[]);
}

/// In-memory stream: reads the request, collects what is written.
struct Mem {
    input: Cursor<&'static [u8]>,
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// The callback's large `Err` type is fixed by tungstenite's `Callback` trait.
#[allow(clippy::result_large_err)]
fn tungstenite_handshake(mem: &mut Mem, config: WebSocketConfig) {
    mem.input.set_position(0);
    mem.output.clear();
    let choose = |req: &Request, mut resp: Response| {
        let offered = req.headers().get("Sec-WebSocket-Protocol");
        let chosen = offered
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').map(str::trim).find(|p| SUPPORTED.contains(p)));
        if let Some(p) = chosen {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("chat.v1"),
            );
            debug_assert_eq!(p, "chat.v1");
        }
        Ok(resp)
    };
    let ws = tungstenite::accept_hdr_with_config(&mut *mem, choose, Some(config))
        .expect("tungstenite handshake");
    black_box(ws);
}

fn bench(c: &mut Criterion) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);

    // Both sides must produce an equivalent 101 before we time them.
    let mut ours = Vec::with_capacity(256);
    shardcast_handshake(&mut ours);
    let mut mem = Mem {
        input: Cursor::new(REQUEST),
        output: Vec::with_capacity(256),
    };
    tungstenite_handshake(&mut mem, config);
    for out in [&ours, &mem.output] {
        let text = std::str::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("sec-websocket-protocol: chat.v1"),
            "{text}"
        );
    }

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("shardcast", |b| b.iter(|| shardcast_handshake(&mut ours)));
    group.bench_function("tungstenite", |b| {
        b.iter(|| tungstenite_handshake(&mut mem, config))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
