//! Incremental HTTP/1.1 request-head parsing with limits, and plain responses.
//!
//! The parser is sans-IO: the caller accumulates received bytes in one buffer and calls
//! [`RequestParser::parse`] after each read. Parsed items borrow from that buffer; nothing is
//! copied and nothing is allocated per request (headers live in a fixed inline array).

use std::fmt;

/// Hard upper bound on [`RequestLimits::max_headers`]: the size of the inline header array that
/// every [`Request`] carries, so parsing never allocates.
pub const HEADER_CAPACITY: usize = 64;

/// Limits enforced while parsing a request head. Exceeding either gives status 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Maximum size of the head (request line + headers + the blank line), in bytes.
    pub max_head_bytes: usize,
    /// Maximum number of header lines; values above [`HEADER_CAPACITY`] are clamped to it.
    pub max_headers: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_head_bytes: 8192,
            max_headers: 32,
        }
    }
}

/// HTTP status codes this crate can produce, each with its standard reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 101 Switching Protocols.
    SwitchingProtocols,
    /// 200 OK.
    Ok,
    /// 204 No Content.
    NoContent,
    /// 400 Bad Request.
    BadRequest,
    /// 401 Unauthorized.
    Unauthorized,
    /// 403 Forbidden.
    Forbidden,
    /// 404 Not Found.
    NotFound,
    /// 405 Method Not Allowed.
    MethodNotAllowed,
    /// 408 Request Timeout.
    RequestTimeout,
    /// 413 Payload Too Large.
    PayloadTooLarge,
    /// 426 Upgrade Required.
    UpgradeRequired,
    /// 429 Too Many Requests.
    TooManyRequests,
    /// 431 Request Header Fields Too Large.
    RequestHeaderFieldsTooLarge,
    /// 500 Internal Server Error.
    InternalServerError,
    /// 501 Not Implemented (used for `Transfer-Encoding`, which this crate does not support).
    NotImplemented,
    /// 503 Service Unavailable.
    ServiceUnavailable,
}

impl Status {
    /// The numeric status code.
    pub const fn code(self) -> u16 {
        match self {
            Status::SwitchingProtocols => 101,
            Status::Ok => 200,
            Status::NoContent => 204,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::PayloadTooLarge => 413,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::RequestHeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The standard reason phrase.
    pub const fn reason(self) -> &'static str {
        match self {
            Status::SwitchingProtocols => "Switching Protocols",
            Status::Ok => "OK",
            Status::NoContent => "No Content",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::RequestHeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// Whether responses with this status must not carry a body or `Content-Length`
    /// (RFC 9110 §8.6: 1xx and 204).
    const fn is_bodiless(self) -> bool {
        matches!(self, Status::SwitchingProtocols | Status::NoContent)
    }
}

/// A request that must be refused: the status to answer with and a short human-readable reason
/// (sent as the body by [`crate::handshake::write_rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// Status to respond with.
    pub status: Status,
    /// Short explanation, safe to send to the peer.
    pub reason: &'static str,
}

impl HttpError {
    /// Build an error from a status and a reason.
    pub const fn new(status: Status, reason: &'static str) -> Self {
        HttpError { status, reason }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.code(),
            self.status.reason(),
            self.reason
        )
    }
}

impl std::error::Error for HttpError {}

const fn bad_request(reason: &'static str) -> HttpError {
    HttpError::new(Status::BadRequest, reason)
}

/// One header line, borrowed from the request buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'b> {
    /// Header name as sent (compare case-insensitively).
    pub name: &'b str,
    /// Header value with surrounding whitespace removed; may contain non-UTF-8 bytes.
    pub value: &'b [u8],
}

const EMPTY_HEADER: Header<'static> = Header {
    name: "",
    value: b"",
};

/// Result of one [`RequestParser::parse`] call.
#[derive(Debug)]
pub enum Parse<'b> {
    /// The head is not complete yet: read more bytes and call again.
    Partial,
    /// The head is complete.
    Complete {
        /// The parsed request, borrowing from the buffer.
        request: Request<'b>,
        /// Length of the head in bytes; any body or pipelined data starts at this offset.
        head_len: usize,
    },
}

/// A parsed request head. Everything borrows from the caller's buffer.
#[derive(Debug, Clone)]
pub struct Request<'b> {
    method: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    minor_version: u8,
    headers: [Header<'b>; HEADER_CAPACITY],
    header_count: usize,
}

/// Case-insensitive ASCII equality, for header names and tokens.
fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Strips HTTP optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

impl<'b> Request<'b> {
    /// The request method, e.g. `"GET"`.
    pub fn method(&self) -> &'b str {
        self.method
    }

    /// The request target before any `?`. Percent-decoding is NOT done.
    pub fn path(&self) -> &'b str {
        self.path
    }

    /// The request target after the first `?`, if there is one (may be empty).
    pub fn query(&self) -> Option<&'b str> {
        self.query
    }

    /// The value of the first `name=value` pair in the query whose name equals `name` exactly.
    ///
    /// Pairs are split on `&`; a pair without `=` has the empty value. Neither names nor values
    /// are percent-decoded and `+` is not turned into a space: callers that need decoding do it.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// All header lines, in the order received.
    pub fn headers(&self) -> &[Header<'b>] {
        &self.headers[..self.header_count]
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers_named(name).next()
    }

    /// The values of every header named `name` (case-insensitive), in order.
    pub fn headers_named<'r>(&'r self, name: &'r str) -> impl Iterator<Item = &'b [u8]> + 'r {
        self.headers()
            .iter()
            .filter(move |h| eq_ignore_case(h.name.as_bytes(), name.as_bytes()))
            .map(|h| h.value)
    }

    /// Whether any `name` header, read as a comma-separated list, contains `token`
    /// (case-insensitive, surrounding whitespace ignored). E.g. `Connection: keep-alive, Upgrade`
    /// contains `upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|item| eq_ignore_case(trim_ows(item), token.as_bytes()))
        })
    }

    /// The body length announced by `Content-Length`: `Ok(None)` when absent.
    ///
    /// Repeated headers must all carry the same value; a value that is not a plain decimal
    /// number fitting in `u64`, or conflicting repeats, give a 400 error.
    pub fn content_length(&self) -> Result<Option<u64>, HttpError> {
        let mut found: Option<u64> = None;
        for value in self.headers_named("content-length") {
            let n = parse_decimal(value).ok_or(bad_request("invalid Content-Length"))?;
            match found {
                Some(prev) if prev != n => return Err(bad_request("conflicting Content-Length")),
                _ => found = Some(n),
            }
        }
        Ok(found)
    }

    /// Whether the client asks for a WebSocket: an `Upgrade` header listing `websocket`.
    ///
    /// This only routes the request; [`crate::handshake::validate_upgrade`] checks the rest, so a
    /// half-formed upgrade gets a precise error rather than being served as plain HTTP.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }
}

/// Parses a non-empty run of ASCII digits into a `u64`, rejecting overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Incremental request-head parser for one request on one connection.
///
/// The caller keeps every received byte of the request in one growing buffer and passes the
/// whole buffer each time. The parser remembers how far its end-of-head scan got, so feeding a
/// head in many small pieces costs O(total bytes); `httparse` runs only on the complete head,
/// plus once on the partial request line when a space or the line end arrives, so garbage is
/// rejected (400) before the head is complete.
#[derive(Debug, Clone)]
pub struct RequestParser {
    limits: RequestLimits,
    /// Scan cursor: every index below it has been examined for the end of the head.
    scanned: usize,
    /// Index of the first byte after leading empty lines (which HTTP lets us skip).
    start: Option<usize>,
    /// Whether the request line has been fully seen (and checked).
    line_done: bool,
    /// Length of the head once its end has been found.
    head_len: Option<usize>,
}

impl Default for RequestParser {
    fn default() -> Self {
        RequestParser::new(RequestLimits::default())
    }
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: RequestLimits) -> Self {
        RequestParser {
            limits,
            scanned: 0,
            start: None,
            line_done: false,
            head_len: None,
        }
    }

    /// Forget all progress, to parse a new request (e.g. the next one on a keep-alive
    /// connection, in a fresh buffer).
    pub fn reset(&mut self) {
        *self = RequestParser::new(self.limits);
    }

    /// Parse what has been received so far.
    ///
    /// `buf` holds every byte received so far for this request (it only grows between calls;
    /// if it shrinks the parser starts over rather than misbehave). Over a limit gives a 431
    /// error; malformed input gives 400; a `Transfer-Encoding` header gives 501 because chunked
    /// bodies are not supported.
    pub fn parse<'b>(&mut self, buf: &'b [u8]) -> Result<Parse<'b>, HttpError> {
        if buf.len() < self.scanned || self.head_len.is_some_and(|n| n > buf.len()) {
            self.reset();
        }
        let head_len = match self.head_len {
            Some(n) => n,
            None => match self.scan(buf)? {
                Some(n) => {
                    self.head_len = Some(n);
                    n
                }
                None => return Ok(Parse::Partial),
            },
        };
        let request = self.parse_head(&buf[..head_len])?;
        Ok(Parse::Complete { request, head_len })
    }

    /// Advance the end-of-head scan over the bytes not examined yet. Returns the head length
    /// once the blank line is found.
    ///
    /// httparse ends a line with `\n` or `\r\n`, so the head ends at the first `\n\n` or
    /// `\n\r\n` after the request line starts.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, HttpError> {
        let max = self.limits.max_head_bytes;
        // Bytes past the limit can never belong to an acceptable head.
        let limit = buf.len().min(max);
        let mut i = self.scanned;

        let start = match self.start {
            Some(s) => s,
            None => {
                while i < limit && matches!(buf[i], b'\r' | b'\n') {
                    i += 1;
                }
                if i == limit {
                    self.scanned = i;
                    return self.partial_or_too_large(buf.len());
                }
                self.start = Some(i);
                i
            }
        };

        if !self.line_done {
            while i < limit {
                match buf[i] {
                    b'\n' => {
                        check_request_line(&buf[start..=i])?;
                        self.line_done = true;
                        break;
                    }
                    b' ' => check_request_line(&buf[start..=i])?,
                    // Control bytes can never appear in a request line: fail before the
                    // line is complete (e.g. a TLS ClientHello sent to a plain-text port).
                    b'\r' | b'\t' => {}
                    b if b < 0x20 || b == 0x7f => {
                        return Err(bad_request("malformed request line"))
                    }
                    _ => {}
                }
                i += 1;
            }
        }

        while i < limit {
            if buf[i] != b'\n' {
                i += 1;
                continue;
            }
            // Need to see what follows this line end; stop here if it has not arrived.
            let Some(&next) = buf[..limit].get(i + 1) else {
                break;
            };
            match next {
                b'\n' => return Ok(Some(i + 2)),
                b'\r' => match buf[..limit].get(i + 2) {
                    Some(b'\n') => return Ok(Some(i + 3)),
                    Some(_) => return Err(bad_request("malformed line ending")),
                    None => break,
                },
                _ => i += 1,
            }
        }
        self.scanned = i;
        self.partial_or_too_large(buf.len())
    }

    /// Without a complete head in the first `max_head_bytes` bytes, the head is too large once
    /// that many bytes have arrived.
    fn partial_or_too_large(&self, received: usize) -> Result<Option<usize>, HttpError> {
        if received >= self.limits.max_head_bytes {
            Err(HttpError::new(
                Status::RequestHeaderFieldsTooLarge,
                "request head too large",
            ))
        } else {
            Ok(None)
        }
    }

    /// Run httparse over a complete head.
    fn parse_head<'b>(&self, head: &'b [u8]) -> Result<Request<'b>, HttpError> {
        let max_headers = self.limits.max_headers.min(HEADER_CAPACITY);
        let mut raw = [httparse::EMPTY_HEADER; HEADER_CAPACITY];
        let mut req = httparse::Request::new(&mut raw[..max_headers]);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            // The scan found the blank line, so httparse must agree the head ends there.
            Ok(_) => return Err(bad_request("malformed request head")),
            Err(e) => return Err(map_httparse_error(e)),
        }
        let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
        else {
            return Err(bad_request("malformed request line"));
        };
        let mut headers = [EMPTY_HEADER; HEADER_CAPACITY];
        let header_count = req.headers.len();
        for (slot, h) in headers.iter_mut().zip(req.headers.iter()) {
            *slot = Header {
                name: h.name,
                value: trim_ows(h.value),
            };
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let request = Request {
            method,
            path,
            query,
            minor_version,
            headers,
            header_count,
        };
        if request.header("transfer-encoding").is_some() {
            return Err(HttpError::new(
                Status::NotImplemented,
                "Transfer-Encoding is not supported",
            ));
        }
        Ok(request)
    }
}

/// Check a partial request line (ending at a space or at its `\n`) with httparse: anything but
/// "need more bytes" means it can never become a valid request line.
fn check_request_line(line: &[u8]) -> Result<(), HttpError> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse(line) {
        Ok(httparse::Status::Partial) => Ok(()),
        // A request line alone cannot complete a head; treat anything else as malformed.
        Ok(httparse::Status::Complete(_)) => Err(bad_request("malformed request line")),
        Err(e) => Err(map_httparse_error(e)),
    }
}

fn map_httparse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => {
            HttpError::new(Status::RequestHeaderFieldsTooLarge, "too many headers")
        }
        httparse::Error::HeaderName => bad_request("invalid header name"),
        httparse::Error::HeaderValue => bad_request("invalid header value"),
        httparse::Error::NewLine => bad_request("invalid line ending"),
        httparse::Error::Version => bad_request("unsupported HTTP version"),
        httparse::Error::Token => bad_request("invalid method"),
        _ => bad_request("malformed request"),
    }
}

/// Append `n` in decimal without allocating.
pub(crate) fn write_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append `HTTP/1.1 <code> <reason>\r\n`.
pub(crate) fn write_status_line(out: &mut Vec<u8>, status: Status) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, usize::from(status.code()));
    out.push(b' ');
    out.extend_from_slice(status.reason().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append `name: value\r\n` for each header. A header whose name or value contains CR or LF is
/// skipped (and trips a debug assertion): writing it would let it inject response lines.
pub(crate) fn write_headers(out: &mut Vec<u8>, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        let injects = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if injects(name) || injects(value) {
            debug_assert!(false, "header {name:?} contains CR/LF");
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Append a complete response to `out`.
///
/// Writes the status line, `headers`, `Content-Type` (when non-empty), `Content-Length`, and
/// `Connection: close` unless `headers` has its own `Connection`, then the body. For bodiless
/// statuses (101, 204) `content_type`, `Content-Length` and `body` are omitted, as HTTP requires.
/// Headers containing CR or LF are skipped.
pub fn write_response(
    out: &mut Vec<u8>,
    status: Status,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) {
    write_status_line(out, status);
    write_headers(out, headers);
    let bodiless = status.is_bodiless();
    if !bodiless {
        if !content_type.is_empty() {
            write_headers(out, &[("Content-Type", content_type)]);
        }
        out.extend_from_slice(b"Content-Length: ");
        write_decimal(out, body.len());
        out.extend_from_slice(b"\r\n");
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
}
