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
