//! Opening WebSocket client connections: a source address per connection (so more than one
//! ephemeral port range is available), a non-blocking connect, the TLS handshake for `wss://`,
//! and the HTTP upgrade.

use base64::Engine as _;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use crate::stream::{Stream, Transport};
use crate::tls::{Tls, TlsClient};

/// Where to connect and how to spread connections over source addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    /// Connections are bound to 127.0.0.1 ..= 127.0.0.N in turn (1 = let the kernel choose).
    pub source_addrs: u32,
    /// `Sec-WebSocket-Extensions` to offer in every upgrade (e.g. permessage-deflate).
    pub extensions: Option<String>,
    /// The URL said `wss://`.
    pub secure: bool,
    /// The TLS client of a `wss://` target (see [`Target::with_tls`]).
    pub tls: Option<TlsClient>,
}

impl Target {
    /// Parses `ws://host:port` or `wss://host:port` (an IP literal; the benchmark is loopback
    /// only). A `wss://` target needs [`Target::with_tls`] before it can connect.
    pub fn from_url(url: &str, source_addrs: u32) -> Result<Self, String> {
        let (secure, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err(format!("URL must start with ws:// or wss://: {url}")),
        };
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr = hostport
            .parse::<SocketAddr>()
            .map_err(|e| format!("bad address {hostport:?} in URL: {e}"))?;
        Ok(Target {
            addr,
            source_addrs: source_addrs.max(1),
            extensions: None,
            secure,
            tls: None,
        })
    }

    /// For a `wss://` target: trust the PEM roots in `ca` (required) and, with `resume`, share
    /// one session cache so handshakes resume. A `ws://` target is returned as it is.
    pub fn with_tls(mut self, ca: Option<&Path>, resume: bool) -> Result<Self, String> {
        if !self.secure {
            return Ok(self);
        }
        let ca = ca.ok_or("a wss:// URL needs --ca FILE (the PEM root to trust)")?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        self.tls = Some(TlsClient::new(ca, resume, name)?);
        Ok(self)
    }

    /// The same target, offering `extensions` in every upgrade.
    pub fn with_extensions(mut self, extensions: Option<&str>) -> Self {
        self.extensions = extensions.map(str::to_owned);
        self
    }

    /// Source address for connection number `n`.
    fn source(&self, n: u64) -> Option<SocketAddr> {
        if self.source_addrs <= 1 || !self.addr.is_ipv4() {
            return None;
        }
        let host = 1 + (n % u64::from(self.source_addrs)) as u32;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host);
        Some(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
    }
}

/// An upgraded connection and what the server said in its 101.
pub struct WsConn {
    /// The socket (or TLS session), positioned after the response head.
    pub stream: Stream,
    /// Bytes received after the response head (early frames), to be parsed first.
    pub leftover: Vec<u8>,
    /// `X-Shardcast-Shard` from the 101, if present.
    pub shard: Option<u32>,
    /// `Sec-WebSocket-Extensions` from the 101: what the server accepted, if anything.
    pub extensions: Option<String>,
}

/// Connects (binding the source address first when asked), runs the TLS handshake for a
/// `wss://` target, and upgrades to WebSocket on `path`.
pub async fn connect(target: &Target, n: u64, path: &str) -> io::Result<WsConn> {
    let tcp = tcp_connect(target, n).await?;
    tcp.set_nodelay(true)?;
    let stream = match (&target.tls, target.secure) {
        (None, false) => Transport::Plain(tcp),
        (Some(client), _) => Transport::Tls(Tls::connect(tcp, client).await?),
        (None, true) => return Err(io::Error::other("wss:// target without a TLS client")),
    };
    upgrade(stream, target, n, path).await
}

async fn tcp_connect(target: &Target, n: u64) -> io::Result<TcpStream> {
    let Some(src) = target.source(n) else {
        return TcpStream::connect_addr(target.addr).await;
    };
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    sock.bind(&src.into())?;
    match sock.connect(&target.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = sock.into();
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    // The connect outcome is in SO_ERROR once the socket is writable.
    if let Some(e) = socket2::SockRef::from(&std_ref(&stream)).take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// A borrowed view of the monoio socket's descriptor for socket options.
fn std_ref(stream: &TcpStream) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is owned by `stream`, which outlives the returned borrow.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

fn websocket_key(n: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&n.to_le_bytes());
    raw[8..].copy_from_slice(&crate::clock::now_ns().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

async fn upgrade(mut stream: Stream, target: &Target, n: u64, path: &str) -> io::Result<WsConn> {
    let key = websocket_key(n);
    let ext = target
        .extensions
        .as_deref()
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n",
        target.addr
    );
    let (res, _) = stream.write_all(req.into_bytes()).await;
    res?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            return Err(io::Error::other("upgrade response head too large"));
        }
        let len = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if res? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some((head_len, shard, extensions)) = check_response(&buf, &key)? {
            let leftover = buf[head_len..].to_vec();
            return Ok(WsConn {
                stream,
                leftover,
                shard,
                extensions,
            });
        }
    }
}

/// The head length, shard id and accepted extensions of a valid 101.
type Upgraded = (usize, Option<u32>, Option<String>);

/// `Ok(None)` while the head is incomplete; what [`Upgraded`] says on a valid 101.
fn check_response(buf: &[u8], key: &str) -> io::Result<Option<Upgraded>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::other(format!("bad upgrade response: {e}"))),
    };
    if resp.code != Some(101) {
        return Err(io::Error::other(format!(
            "upgrade refused: {} {}",
            resp.code.unwrap_or(0),
            resp.reason.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let expected = shardcast_proto::handshake::accept_key(key.as_bytes());
    if header("Sec-WebSocket-Accept") != Some(&expected[..]) {
        return Err(io::Error::other("wrong Sec-WebSocket-Accept"));
    }
    let shard = header("X-Shardcast-Shard")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok());
    let extensions = header("Sec-WebSocket-Extensions")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|v| v.trim().to_owned());
    Ok(Some((head_len, shard, extensions)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_sources() {
        let t = Target::from_url("ws://127.0.0.1:8080", 3).unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.source(0).unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(t.source(2).unwrap().ip().to_string(), "127.0.0.3");
        assert_eq!(t.source(3).unwrap().ip().to_string(), "127.0.0.1");
        assert!(Target::from_url("ws://127.0.0.1:1", 1)
            .unwrap()
            .source(5)
            .is_none());
        assert!(Target::from_url("http://x", 1).is_err());
        let wss = Target::from_url("wss://127.0.0.1:8443/ws/x", 1).unwrap();
        assert!(wss.secure && wss.tls.is_none());
        assert!(wss.clone().with_tls(None, false).is_err());
        let ws = Target::from_url("ws://127.0.0.1:1", 1).unwrap();
        assert!(ws.with_tls(None, true).unwrap().tls.is_none());
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Shardcast-Shard: 3\r\n\r\n\x82\x00";
        let (n, shard, ext) = check_response(ok, key).unwrap().unwrap();
        assert_eq!(&ok[n..], b"\x82\x00");
        assert_eq!((shard, ext), (Some(3), None));
        assert!(check_response(&ok[..20], key).unwrap().is_none());
        assert!(check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", key).is_err());
        let bad = b"HTTP/1.1 101 S\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(bad, key).is_err());
    }

    #[test]
    fn upgrades_against_a_std_server_with_source_address() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = l.accept().unwrap();
            let mut buf = vec![0u8; 2048];
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                got += s.read(&mut buf[got..]).unwrap();
            }
            let text = std::str::from_utf8(&buf[..got]).unwrap();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = shardcast_proto::handshake::accept_key(key.as_bytes());
            let accept = std::str::from_utf8(&accept).unwrap();
            write!(
                s,
                "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\nhi"
            )
            .unwrap();
            peer
        });
        let target = Target::from_url(&format!("ws://{addr}"), 2).unwrap();
        let conn = workers::run(&[0], move |_| {
            let target = target.clone();
            async move {
                let c = connect(&target, 1, "/ws/t").await.unwrap();
                (c.leftover, c.shard)
            }
        });
        let peer = server.join().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        assert_eq!(conn[0], (b"hi".to_vec(), None));
    }
    use crate::workers;
}
