//! WebSocket opening handshake (RFC 6455 §4.2): validate the client's upgrade request, compute
//! `Sec-WebSocket-Accept`, and write the 101 or the rejection.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::http::{
    trim_ows, write_headers, write_response, write_status_line, HttpError, Request, Status,
};

/// The GUID RFC 6455 §1.3 appends to the client key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Maximum number of `Sec-WebSocket-Protocol` header lines accepted; more gives 400. Kept inline
/// so [`Upgrade`] needs no allocation.
pub const MAX_PROTOCOL_LINES: usize = 8;

/// A validated upgrade request. Everything borrows from the request buffer.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'b> {
    key: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    origin: Option<&'b [u8]>,
    authorization: Option<&'b [u8]>,
    protocol_lines: [&'b str; MAX_PROTOCOL_LINES],
    protocol_line_count: usize,
}

impl<'b> Upgrade<'b> {
    /// The `Sec-WebSocket-Key` (24 base64 characters encoding 16 bytes).
    pub fn key(&self) -> &'b str {
        self.key
    }

    /// The request path (before `?`, not percent-decoded).
    pub fn path(&self) -> &'b str {
        self.path
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&'b str> {
        self.query
    }

    /// The `Origin` header, if sent (browsers always send it).
    pub fn origin(&self) -> Option<&'b [u8]> {
        self.origin
    }

    /// The `Authorization` header, if sent.
    pub fn authorization(&self) -> Option<&'b [u8]> {
        self.authorization
    }

    /// The subprotocols the client offers, in its order of preference, across every
    /// `Sec-WebSocket-Protocol` line (comma-separated, whitespace trimmed, empty items skipped).
    pub fn protocols(&self) -> Protocols<'_, 'b> {
        Protocols {
            lines: self.protocol_lines[..self.protocol_line_count].iter(),
            current: None,
        }
    }

    /// The first offered subprotocol (client preference) that is in `supported`, compared
    /// exactly as RFC 6455 requires (subprotocol names are case-sensitive).
    pub fn select_protocol(&self, supported: &[&str]) -> Option<&'b str> {
        self.protocols().find(|p| supported.contains(p))
    }

    /// `Sec-WebSocket-Accept` for this request's key.
    pub fn accept_key(&self) -> [u8; 28] {
        accept_key(self.key.as_bytes())
    }
}

/// Iterator over offered subprotocols; see [`Upgrade::protocols`].
#[derive(Debug, Clone)]
pub struct Protocols<'u, 'b> {
    lines: std::slice::Iter<'u, &'b str>,
    current: Option<std::str::Split<'b, char>>,
}

impl<'b> Iterator for Protocols<'_, 'b> {
    type Item = &'b str;

    fn next(&mut self) -> Option<&'b str> {
        loop {
            if let Some(items) = &mut self.current {
                for item in items.by_ref() {
                    let item = item.trim_matches([' ', '\t']);
                    if !item.is_empty() {
                        return Some(item);
                    }
                }
            }
            self.current = Some(self.lines.next()?.split(','));
        }
    }
}

/// Whether `b` may appear in an HTTP token (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Exactly one header named `name`, else `err`.
fn single_header<'b>(req: &Request<'b>, name: &str, err: HttpError) -> Result<&'b [u8], HttpError> {
    let mut values = req.headers_named(name);
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(err),
    }
}

/// Check that `req` is a valid WebSocket opening handshake (RFC 6455 §4.2.1).
///
/// In order: method `GET` else 405; HTTP/1.1 else 400; exactly one `Host` else 400;
/// `Upgrade` listing `websocket` and `Connection` listing `upgrade` (case-insensitive tokens in
/// comma lists) else 400; exactly one `Sec-WebSocket-Version: 13` else 426 (the rejection then
/// advertises version 13); exactly one `Sec-WebSocket-Key` that is base64 of exactly 16 bytes
/// else 400; every `Sec-WebSocket-Protocol` item a token, in at most [`MAX_PROTOCOL_LINES`]
/// lines, else 400.
pub fn validate_upgrade<'b>(req: &Request<'b>) -> Result<Upgrade<'b>, HttpError> {
    let bad = |reason| HttpError::new(Status::BadRequest, reason);
    if req.method() != "GET" {
        return Err(HttpError::new(
            Status::MethodNotAllowed,
            "WebSocket upgrade requires GET",
        ));
    }
    if req.minor_version() != 1 {
        return Err(bad("WebSocket upgrade requires HTTP/1.1"));
    }
    single_header(req, "host", bad("exactly one Host header required"))?;
    if !req.has_token("upgrade", "websocket") {
        return Err(bad("missing Upgrade: websocket"));
    }
    if !req.has_token("connection", "upgrade") {
        return Err(bad("missing Connection: upgrade"));
    }
    let version_err = HttpError::new(
        Status::UpgradeRequired,
        "unsupported Sec-WebSocket-Version (13 required)",
    );
    if single_header(req, "sec-websocket-version", version_err)? != b"13" {
        return Err(version_err);
    }
    let key_err = bad("invalid Sec-WebSocket-Key");
    let key = single_header(req, "sec-websocket-key", key_err)?;
    if key.len() != 24 {
        return Err(key_err);
    }
    // 24 base64 characters estimate to 18 bytes; a valid key decodes to exactly 16.
    let mut decoded = [0u8; 18];
    if STANDARD.decode_slice(key, &mut decoded) != Ok(16) {
        return Err(key_err);
    }
    let key = std::str::from_utf8(key).map_err(|_| key_err)?;

    let mut protocol_lines = [""; MAX_PROTOCOL_LINES];
    let mut protocol_line_count = 0;
    for line in req.headers_named("sec-websocket-protocol") {
        let slot = protocol_lines
            .get_mut(protocol_line_count)
            .ok_or(bad("too many Sec-WebSocket-Protocol headers"))?;
        let tokens_only = line
            .split(|&b| b == b',')
            .map(trim_ows)
            .all(|item| item.iter().all(|&b| is_tchar(b)));
        if !tokens_only {
            return Err(bad("invalid Sec-WebSocket-Protocol"));
        }
        // All bytes are ASCII tchars, commas or whitespace, so this cannot fail.
        *slot = std::str::from_utf8(line).map_err(|_| bad("invalid Sec-WebSocket-Protocol"))?;
        protocol_line_count += 1;
    }

    Ok(Upgrade {
        key,
        path: req.path(),
        query: req.query(),
        origin: req.header("origin"),
        authorization: req.header("authorization"),
        protocol_lines,
        protocol_line_count,
    })
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters (with one '=' of padding).
    let written = STANDARD.encode_slice(digest, &mut out);
    debug_assert_eq!(written, Ok(28));
    out
}

/// Append the `101 Switching Protocols` response, with `Sec-WebSocket-Protocol` when a
/// subprotocol was chosen, then `extra_headers`.
pub fn write_switching_protocols(
    out: &mut Vec<u8>,
    accept: &[u8; 28],
    protocol: Option<&str>,
    extra_headers: &[(&str, &str)],
) {
    write_status_line(out, Status::SwitchingProtocols);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        write_headers(out, &[("Sec-WebSocket-Protocol", p)]);
    }
    write_headers(out, extra_headers);
    out.extend_from_slice(b"\r\n");
}

/// Append the response refusing a request: `err.status` with `err.reason` as a plain-text body
/// and `Connection: close`. A 426 carries `Upgrade: websocket` and `Sec-WebSocket-Version: 13` (RFC 6455 §4.4) and a
/// 405 carries `Allow: GET` (RFC 9110 §15.5.6).
pub fn write_rejection(out: &mut Vec<u8>, err: &HttpError) {
    let headers: &[(&str, &str)] = match err.status {
        Status::UpgradeRequired => &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
        Status::MethodNotAllowed => &[("Allow", "GET")],
        _ => &[],
    };
    write_response(
        out,
        err.status,
        headers,
        "text/plain; charset=utf-8",
        err.reason.as_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Parse, RequestParser};

    /// A typical browser upgrade request, as (name, value) header pairs.
    fn browser_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "example.com:8080"),
            ("Connection", "Upgrade"),
            ("Pragma", "no-cache"),
            ("Upgrade", "websocket"),
            ("Origin", "https://example.com"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Authorization", "Bearer t0k"),
            ("Sec-WebSocket-Protocol", "chat.v2, chat.v1"),
            ("Sec-WebSocket-Protocol", " ,superchat "),
        ]
    }

    fn build(request_line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut s = format!("{request_line}\r\n");
        for (n, v) in headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    /// Validate the browser request after applying `edit` to its headers.
    fn check(
        request_line: &str,
        edit: impl FnOnce(&mut Vec<(&'static str, &'static str)>),
    ) -> Result<(), Status> {
        let mut headers = browser_headers();
        edit(&mut headers);
        let buf = build(request_line, &headers);
        let result = match RequestParser::default().parse(&buf) {
            Ok(Parse::Complete { request, .. }) => validate_upgrade(&request).map(|_| ()),
            Ok(Parse::Partial) => panic!("partial"),
            Err(e) => Err(e),
        };
        result.map_err(|e| e.status)
    }

    fn set(h: &mut Vec<(&'static str, &'static str)>, name: &str, value: &'static str) {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        let name = browser_headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("X-Unknown", |(n, _)| n);
        h.push((name, value));
    }

    fn remove(h: &mut Vec<(&'static str, &'static str)>, name: &str) {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    const GET: &str = "GET /chat?room=a HTTP/1.1";

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_browser_request() {
        let buf = build(GET, &browser_headers());
        let Ok(Parse::Complete { request, .. }) = RequestParser::default().parse(&buf) else {
            panic!("not complete");
        };
        assert!(request.is_websocket_upgrade());
        let up = validate_upgrade(&request).expect("valid");
        assert_eq!(up.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.path(), "/chat");
        assert_eq!(up.query(), Some("room=a"));
        assert_eq!(up.origin(), Some(&b"https://example.com"[..]));
        assert_eq!(up.authorization(), Some(&b"Bearer t0k"[..]));
        assert_eq!(
            up.protocols().collect::<Vec<_>>(),
            ["chat.v2", "chat.v1", "superchat"]
        );
        assert_eq!(
            up.select_protocol(&["superchat", "chat.v1"]),
            Some("chat.v1")
        );
        assert_eq!(up.select_protocol(&["CHAT.V1"]), None);
        assert_eq!(&up.accept_key(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn optional_headers_may_be_absent() {
        let mut headers = browser_headers();
        for name in ["origin", "authorization", "sec-websocket-protocol"] {
            remove(&mut headers, name);
        }
        let buf = build("GET / HTTP/1.1", &headers);
        let Ok(Parse::Complete { request, .. }) = RequestParser::default().parse(&buf) else {
            panic!("not complete");
        };
        let up = validate_upgrade(&request).expect("valid");
        assert_eq!(
            (up.origin(), up.authorization(), up.query()),
            (None, None, None)
        );
        assert_eq!(up.protocols().next(), None);
    }

    #[test]
    fn method_must_be_get() {
        assert_eq!(check(GET, |_| {}), Ok(()));
        for m in ["POST", "HEAD", "PUT", "get"] {
            let line = format!("{m} / HTTP/1.1");
            assert_eq!(check(&line, |_| {}), Err(Status::MethodNotAllowed), "{m}");
        }
    }

    #[test]
    fn version_must_be_1_1() {
        assert_eq!(check("GET / HTTP/1.0", |_| {}), Err(Status::BadRequest));
    }

    #[test]
    fn host_required_once() {
        assert_eq!(check(GET, |h| remove(h, "host")), Err(Status::BadRequest));
        assert_eq!(
            check(GET, |h| h.push(("host", "other"))),
            Err(Status::BadRequest)
        );
    }

    #[test]
    fn upgrade_and_connection_tokens() {
        let ok = Ok(());
        let bad = Err(Status::BadRequest);
        assert_eq!(check(GET, |h| set(h, "upgrade", "WebSocket")), ok);
        assert_eq!(check(GET, |h| set(h, "upgrade", "h2c, websocket")), ok);
        assert_eq!(check(GET, |h| set(h, "upgrade", "websockets")), bad);
        assert_eq!(check(GET, |h| set(h, "upgrade", "h2c")), bad);
        assert_eq!(check(GET, |h| remove(h, "upgrade")), bad);
        assert_eq!(
            check(GET, |h| set(h, "connection", "keep-alive, Upgrade")),
            ok
        );
        assert_eq!(check(GET, |h| set(h, "connection", "UPGRADE")), ok);
        assert_eq!(check(GET, |h| set(h, "connection", "keep-alive")), bad);
        assert_eq!(check(GET, |h| set(h, "connection", "upgraded")), bad);
        assert_eq!(check(GET, |h| remove(h, "connection")), bad);
        // Tokens may be spread over several header lines.
        assert_eq!(
            check(GET, |h| {
                set(h, "connection", "keep-alive");
                h.push(("Connection", "upgrade"));
            }),
            ok
        );
    }

    #[test]
    fn version_13_required_else_426() {
        let up = Err(Status::UpgradeRequired);
        assert_eq!(check(GET, |h| set(h, "sec-websocket-version", "8")), up);
        assert_eq!(check(GET, |h| set(h, "sec-websocket-version", "13, 8")), up);
        assert_eq!(check(GET, |h| remove(h, "sec-websocket-version")), up);
        assert_eq!(check(GET, |h| h.push(("Sec-WebSocket-Version", "13"))), up);
        assert_eq!(
            check(GET, |h| set(h, "sec-websocket-version", " 13 ")),
            Ok(())
        );
    }

    #[test]
    fn key_must_be_16_base64_bytes() {
        let bad = Err(Status::BadRequest);
        let key = |v: &'static str| check(GET, move |h| set(h, "sec-websocket-key", v));
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAAA=="), Ok(()));
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAAAAA"), bad); // 18 bytes
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAAAA="), bad); // 17 bytes
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAAA="), bad); // bad padding
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAAA"), bad); // unpadded
        assert_eq!(key("AAAAAAAAAAAAAAAAAAAAA*=="), bad);
        assert_eq!(key("dGhlIHNhbXBsZSBub25jZR=="), bad); // non-zero trailing bits
        assert_eq!(key(""), bad);
        assert_eq!(check(GET, |h| remove(h, "sec-websocket-key")), bad);
        assert_eq!(
            check(GET, |h| h
                .push(("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="))),
            bad
        );
    }

    #[test]
    fn protocol_offers_must_be_tokens() {
        let bad = Err(Status::BadRequest);
        let proto = |v: &'static str| check(GET, move |h| set(h, "sec-websocket-protocol", v));
        assert_eq!(proto("a,b ,\tc"), Ok(()));
        assert_eq!(proto(""), Ok(()));
        assert_eq!(proto("a b"), bad);
        assert_eq!(proto("a;b"), bad);
        assert_eq!(proto("ä"), bad);
        let many = check(GET, |h| {
            for _ in 0..=MAX_PROTOCOL_LINES {
                h.push(("Sec-WebSocket-Protocol", "x"));
            }
        });
        assert_eq!(many, bad);
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let buf = b"GET / HTTP/1.1\r\nhOST: h\r\nuPgRaDe: WEBSOCKET\r\nconnection: upgrade\r\n\
sec-websocket-version: 13\r\nSEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let Ok(Parse::Complete { request, .. }) = RequestParser::default().parse(buf) else {
            panic!("not complete");
        };
        assert!(validate_upgrade(&request).is_ok());
    }

    #[test]
    fn switching_protocols_response() {
        let mut out = Vec::new();
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        write_switching_protocols(&mut out, &accept, Some("chat"), &[("X-Shard", "3")]);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\
X-Shard: 3\r\n\r\n"
        );
        out.clear();
        write_switching_protocols(&mut out, &accept, None, &[]);
        assert!(!out.windows(18).any(|w| w == b"WebSocket-Protocol"));
        assert!(out.ends_with(b"xOo=\r\n\r\n"));
    }

    #[test]
    fn rejections() {
        let mut out = Vec::new();
        let err = HttpError::new(Status::UpgradeRequired, "need 13");
        write_rejection(&mut out, &err);
        assert_eq!(
            out,
            b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 7\r\nConnection: close\r\n\r\nneed 13"
        );
        out.clear();
        write_rejection(
            &mut out,
            &HttpError::new(Status::MethodNotAllowed, "GET only"),
        );
        assert!(out.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"));
        assert!(out.ends_with(b"\r\n\r\nGET only"));
        out.clear();
        write_rejection(&mut out, &HttpError::new(Status::BadRequest, "bad key"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(!text.contains("Sec-WebSocket-Version"));
        assert!(text.ends_with("Content-Length: 7\r\nConnection: close\r\n\r\nbad key"));
    }
}
