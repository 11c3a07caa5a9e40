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

/// One header line, borrowed from the request buffer: `name` as sent (compare
/// case-insensitively) and `value` with surrounding whitespace removed (may be non-UTF-8).
///
/// This is `httparse`'s type, re-exported so headers are parsed straight into the [`Request`]
/// without a copy.
pub use httparse::Header;

/// Result of one [`RequestParser::parse`] call.
// `Complete` carries the inline header array; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
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
        query_param(self.query, name)
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

/// The value of the first `name=value` pair of `query` (the part after `?`) whose name equals
/// `name` exactly: pairs split on `&`, a pair without `=` has the empty value, nothing is
/// percent-decoded. [`Request::query_param`] is this over the request's query.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
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
        let mut headers = [httparse::EMPTY_HEADER; HEADER_CAPACITY];
        let mut req = httparse::Request::new(&mut headers[..max_headers]);
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
        // httparse already trims whitespace around header values.
        let header_count = req.headers.len();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GET: &[u8] = b"GET /chat/room?x=1&name=bob&flag HTTP/1.1\r\n\
Host: example.com\r\n\
X-Multi: a\r\n\
x-multi: b\r\n\
\r\n";

    fn parse_once(buf: &[u8]) -> Result<Parse<'_>, HttpError> {
        RequestParser::default().parse(buf)
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_once(buf) {
            Ok(Parse::Complete { request, head_len }) => (request, head_len),
            other => panic!("expected complete, got {other:?}"),
        }
    }

    fn status_of(buf: &[u8]) -> Status {
        match parse_once(buf) {
            Err(e) => e.status,
            other => panic!("expected error, got {other:?}"),
        }
    }

    /// Comparable summary of a parse outcome.
    type Outcome = Result<Option<(String, usize)>, HttpError>;

    fn summarize(r: Result<Parse<'_>, HttpError>) -> Outcome {
        r.map(|p| match p {
            Parse::Partial => None,
            Parse::Complete {
                request: r,
                head_len,
            } => Some((
                format!(
                    "{} {} {:?} {} {:?}",
                    r.method(),
                    r.path(),
                    r.query(),
                    r.minor_version(),
                    r.headers()
                ),
                head_len,
            )),
        })
    }

    /// Feed `buf` growing up to each cut (then whole), stopping at the first non-partial result.
    fn feed_in_cuts(buf: &[u8], cuts: &[usize], limits: RequestLimits) -> Outcome {
        let mut parser = RequestParser::new(limits);
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(buf.len())).collect();
        ends.sort_unstable();
        ends.push(buf.len());
        for end in ends {
            let out = summarize(parser.parse(&buf[..end]));
            if !matches!(out, Ok(None)) {
                return out;
            }
        }
        Ok(None)
    }

    fn byte_by_byte(buf: &[u8], limits: RequestLimits) -> Outcome {
        let cuts: Vec<usize> = (0..buf.len()).collect();
        feed_in_cuts(buf, &cuts, limits)
    }

    fn request_with(headers: usize, pad: usize) -> Vec<u8> {
        let mut v = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..headers {
            v.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        if pad > 0 {
            v.extend_from_slice(b"P: ");
            v.resize(v.len() + pad, b'x');
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn parses_request_line_and_headers() {
        let (r, head_len) = complete(GET);
        assert_eq!(head_len, GET.len());
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/chat/room");
        assert_eq!(r.query(), Some("x=1&name=bob&flag"));
        assert_eq!(r.minor_version(), 1);
        assert_eq!(r.headers().len(), 3);
        assert_eq!(r.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(r.header("x-multi"), Some(&b"a"[..]));
        assert_eq!(r.headers_named("X-MULTI").collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(r.header("missing"), None);
        assert!(!r.is_websocket_upgrade());
    }

    #[test]
    fn query_params_are_split_not_decoded() {
        let (r, _) = complete(b"GET /p?a=1&b=x%20y&c&a=2&=e HTTP/1.1\r\n\r\n");
        assert_eq!(r.query_param("a"), Some("1"));
        assert_eq!(r.query_param("b"), Some("x%20y"));
        assert_eq!(r.query_param("c"), Some(""));
        assert_eq!(r.query_param(""), Some("e"));
        assert_eq!(r.query_param("A"), None);
        let (r, _) = complete(b"GET /p? HTTP/1.1\r\n\r\n");
        assert_eq!((r.path(), r.query()), ("/p", Some("")));
        let (r, _) = complete(b"GET /p HTTP/1.1\r\n\r\n");
        assert_eq!((r.query(), r.query_param("a")), (None, None));
    }

    #[test]
    fn partial_heads_are_partial() {
        for end in 0..GET.len() {
            let mut p = RequestParser::default();
            assert!(
                matches!(p.parse(&GET[..end]), Ok(Parse::Partial)),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn byte_by_byte_matches_one_shot() {
        let limits = RequestLimits::default();
        let whole = summarize(parse_once(GET));
        assert!(matches!(whole, Ok(Some(_))));
        assert_eq!(byte_by_byte(GET, limits), whole);
    }

    #[test]
    fn partial_feeds_resume_the_scan() {
        // Each call only looks at new bytes: the cursor sits at the last undecided position.
        let mut p = RequestParser::default();
        assert!(matches!(p.parse(&GET[..40]), Ok(Parse::Partial)));
        assert_eq!(p.scanned, 40);
        let first_lf = GET.iter().position(|&b| b == b'\n').unwrap();
        assert!(matches!(p.parse(&GET[..first_lf + 1]), Ok(Parse::Partial)));
        assert_eq!(p.scanned, first_lf, "a line end waits for the next byte");
        assert!(p.line_done);
        assert!(matches!(p.parse(&GET[..GET.len() - 1]), Ok(Parse::Partial)));
        assert_eq!(p.scanned, GET.len() - 3);
    }

    #[test]
    fn complete_result_is_stable_on_repeat_calls() {
        let mut p = RequestParser::default();
        let mut buf = GET.to_vec();
        assert!(matches!(p.parse(&buf), Ok(Parse::Complete { .. })));
        buf.extend_from_slice(b"pipelined");
        match p.parse(&buf) {
            Ok(Parse::Complete { head_len, .. }) => assert_eq!(head_len, GET.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shrinking_buffer_restarts_instead_of_panicking() {
        let mut p = RequestParser::default();
        assert!(matches!(p.parse(&GET[..30]), Ok(Parse::Partial)));
        assert!(matches!(p.parse(&GET[..5]), Ok(Parse::Partial)));
        assert!(matches!(p.parse(GET), Ok(Parse::Complete { .. })));
        assert!(matches!(p.parse(&GET[..5]), Ok(Parse::Partial)));
        p.reset();
        assert!(matches!(p.parse(GET), Ok(Parse::Complete { .. })));
    }

    #[test]
    fn post_with_content_length_and_body() {
        let buf = b"POST /publish HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let (r, head_len) = complete(buf);
        assert_eq!(r.method(), "POST");
        assert_eq!(r.content_length(), Ok(Some(5)));
        assert_eq!(&buf[head_len..], b"hello");
    }

    #[test]
    fn content_length_rules() {
        let cl = |v: &str| {
            let buf = format!("POST / HTTP/1.1\r\n{v}\r\n");
            let mut p = RequestParser::default();
            match p.parse(buf.as_bytes()) {
                Ok(Parse::Complete { request, .. }) => request.content_length(),
                other => panic!("{other:?}"),
            }
        };
        let bad = Err(bad_request("invalid Content-Length"));
        assert_eq!(cl(""), Ok(None));
        assert_eq!(cl("Content-Length: 0\r\n"), Ok(Some(0)));
        assert_eq!(cl("content-length:  42 \r\n"), Ok(Some(42)));
        assert_eq!(
            cl("Content-Length: 18446744073709551615\r\n"),
            Ok(Some(u64::MAX))
        );
        assert_eq!(cl("Content-Length: 18446744073709551616\r\n"), bad);
        assert_eq!(
            cl("Content-Length: 7\r\nContent-Length: 7\r\n"),
            Ok(Some(7))
        );
        assert_eq!(
            cl("Content-Length: 7\r\nContent-Length: 8\r\n").map_err(|e| e.status),
            Err(Status::BadRequest)
        );
        for v in ["abc", "+5", "-1", "5 5", "5,5", "0x10", ""] {
            assert_eq!(cl(&format!("Content-Length: {v}\r\n")), bad, "{v:?}");
        }
    }

    #[test]
    fn transfer_encoding_is_not_implemented() {
        let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(buf), Status::NotImplemented);
        let buf = b"POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n";
        assert_eq!(status_of(buf), Status::NotImplemented);
    }

    #[test]
    fn token_lists() {
        let (r, _) = complete(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\nupgrade:\t WebSocket ,x\r\nX: ,,\r\n\r\n",
        );
        assert!(r.has_token("connection", "upgrade"));
        assert!(r.has_token("CONNECTION", "keep-alive"));
        assert!(!r.has_token("connection", "close"));
        assert!(!r.has_token("connection", "keep"));
        assert!(r.has_token("upgrade", "websocket"));
        assert!(r.has_token("upgrade", "h2c"));
        assert!(r.has_token("x", ""));
        assert!(r.is_websocket_upgrade());
        let (r, _) = complete(b"GET / HTTP/1.1\r\nUpgrade: websockets\r\n\r\n");
        assert!(!r.is_websocket_upgrade());
    }

    #[test]
    fn head_byte_limit_edges() {
        let limits = RequestLimits {
            max_head_bytes: 100,
            max_headers: 32,
        };
        let base = request_with(0, 1).len();
        let at_limit = request_with(0, 1 + 100 - base);
        assert_eq!(at_limit.len(), 100);
        let mut p = RequestParser::new(limits);
        assert!(matches!(
            p.parse(&at_limit),
            Ok(Parse::Complete { head_len: 100, .. })
        ));
        assert!(matches!(
            byte_by_byte(&at_limit, limits),
            Ok(Some((_, 100)))
        ));

        let over = request_with(0, 2 + 100 - base);
        assert_eq!(over.len(), 101);
        let mut p = RequestParser::new(limits);
        let err = p.parse(&over).unwrap_err();
        assert_eq!(err.status, Status::RequestHeaderFieldsTooLarge);
        // Fed byte by byte it fails as soon as 100 bytes arrived without the end of the head.
        let mut p = RequestParser::new(limits);
        assert!(matches!(p.parse(&over[..99]), Ok(Parse::Partial)));
        assert_eq!(
            p.parse(&over[..100]).unwrap_err().status,
            Status::RequestHeaderFieldsTooLarge
        );
        // Body bytes after a head within the limit do not count.
        let mut with_body = at_limit.clone();
        with_body.extend_from_slice(&[b'b'; 500]);
        let mut p = RequestParser::new(limits);
        assert!(matches!(
            p.parse(&with_body),
            Ok(Parse::Complete { head_len: 100, .. })
        ));
    }

    #[test]
    fn default_head_limit_is_8k() {
        let base = request_with(0, 1).len();
        let at = request_with(0, 1 + 8192 - base);
        assert!(matches!(
            parse_once(&at),
            Ok(Parse::Complete { head_len: 8192, .. })
        ));
        let over = request_with(0, 2 + 8192 - base);
        assert_eq!(status_of(&over), Status::RequestHeaderFieldsTooLarge);
    }

    #[test]
    fn header_count_limit_edges() {
        let at = request_with(32, 0);
        let (r, _) = complete(&at);
        assert_eq!(r.headers().len(), 32);
        assert_eq!(
            status_of(&request_with(33, 0)),
            Status::RequestHeaderFieldsTooLarge
        );
        let limits = RequestLimits {
            max_head_bytes: 1 << 16,
            max_headers: 1000,
        };
        let ok = request_with(HEADER_CAPACITY, 0);
        assert!(matches!(
            RequestParser::new(limits).parse(&ok),
            Ok(Parse::Complete { .. })
        ));
        let over = request_with(HEADER_CAPACITY + 1, 0);
        assert_eq!(
            RequestParser::new(limits).parse(&over).unwrap_err().status,
            Status::RequestHeaderFieldsTooLarge
        );
    }

    #[test]
    fn bare_lf_and_leading_empty_lines() {
        let (r, n) = complete(b"GET /a HTTP/1.1\nHost: h\n\nbody");
        assert_eq!((r.path(), r.header("host"), n), ("/a", Some(&b"h"[..]), 25));
        let (_, n) = complete(b"GET / HTTP/1.1\r\nHost: h\n\r\n");
        assert_eq!(n, 26);
        let (r, n) = complete(b"\r\n\nGET /x HTTP/1.1\r\n\r\n");
        assert_eq!((r.path(), n), ("/x", 22));
        // Only empty lines so far: still waiting for the request line.
        assert!(matches!(parse_once(b"\n\n\r\n"), Ok(Parse::Partial)));
        for buf in [
            &b"GET /a HTTP/1.1\nHost: h\n\n"[..],
            b"\r\n\nGET /x HTTP/1.1\r\n\r\n",
        ] {
            let whole = summarize(parse_once(buf));
            assert_eq!(byte_by_byte(buf, RequestLimits::default()), whole);
        }
    }

    #[test]
    fn garbage_fails_before_head_completes() {
        let early = |buf: &[u8]| {
            let mut p = RequestParser::default();
            p.parse(buf).map(|_| ()).map_err(|e| e.status)
        };
        // A TLS ClientHello starts with 0x16: rejected on the first byte.
        assert_eq!(early(b"\x16"), Err(Status::BadRequest));
        assert_eq!(early(b"G{T "), Err(Status::BadRequest));
        assert_eq!(early(b"GET / HTTP/2.0\r\n"), Err(Status::BadRequest));
        assert_eq!(early(b"GET / HTTP/1.1 x"), Err(Status::BadRequest));
        assert_eq!(early(b"GET  /"), Err(Status::BadRequest));
        assert_eq!(
            early(b"GET / HTTP/1.1\r\nHost: a\n\rX"),
            Err(Status::BadRequest)
        );
        // Plausible prefixes stay partial.
        assert_eq!(early(b"GET / HTTP/1.1\r\nHost"), Ok(()));
    }

    #[test]
    fn malformed_heads_are_400() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: v\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\r\n\r\n",
            b"GET HTTP/1.1\r\n\r\n",
            b"\r\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\n\rX\n\n",
        ];
        for buf in cases {
            assert_eq!(
                status_of(buf),
                Status::BadRequest,
                "{:?}",
                buf.escape_ascii().to_string()
            );
            let whole = summarize(parse_once(buf));
            assert_eq!(byte_by_byte(buf, RequestLimits::default()), whole);
        }
    }

    #[test]
    fn status_codes_and_reasons() {
        let all = [
            (Status::SwitchingProtocols, 101),
            (Status::Ok, 200),
            (Status::NoContent, 204),
            (Status::BadRequest, 400),
            (Status::Unauthorized, 401),
            (Status::Forbidden, 403),
            (Status::NotFound, 404),
            (Status::MethodNotAllowed, 405),
            (Status::RequestTimeout, 408),
            (Status::PayloadTooLarge, 413),
            (Status::UpgradeRequired, 426),
            (Status::TooManyRequests, 429),
            (Status::RequestHeaderFieldsTooLarge, 431),
            (Status::InternalServerError, 500),
            (Status::NotImplemented, 501),
            (Status::ServiceUnavailable, 503),
        ];
        for (s, code) in all {
            assert_eq!(s.code(), code);
            assert!(!s.reason().is_empty());
        }
        assert_eq!(
            Status::RequestHeaderFieldsTooLarge.reason(),
            "Request Header Fields Too Large"
        );
        let e = HttpError::new(Status::NotFound, "no such room");
        assert_eq!(e.to_string(), "404 Not Found: no such room");
    }

    #[test]
    fn decimal_writing() {
        for n in [0usize, 7, 10, 12345, usize::MAX] {
            let mut out = Vec::new();
            write_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn response_writing() {
        let mut out = Vec::new();
        write_response(&mut out, Status::Ok, &[("X-A", "1")], "text/plain", b"hi");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        out.clear();
        write_response(
            &mut out,
            Status::NotFound,
            &[("connection", "keep-alive")],
            "",
            b"",
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nconnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        );
        out.clear();
        write_response(&mut out, Status::NoContent, &[], "text/plain", b"ignored");
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn injected_headers_are_dropped() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            Status::Ok,
            &[("X", "a\r\nSet-Cookie: x")],
            "",
            b"",
        );
        assert!(!out.windows(10).any(|w| w == b"Set-Cookie"));
    }

    #[test]
    #[should_panic(expected = "contains CR/LF")]
    #[cfg(debug_assertions)]
    fn injected_headers_trip_debug_assert() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            Status::Ok,
            &[("X", "a\r\nSet-Cookie: x")],
            "",
            b"",
        );
    }

    fn limits_small() -> RequestLimits {
        RequestLimits {
            max_head_bytes: 512,
            max_headers: 8,
        }
    }

    prop_compose! {
        fn valid_request()(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
            path in "/[a-zA-Z0-9/._~-]{0,30}",
            query in prop::option::of("[a-z0-9=&%]{0,20}"),
            minor in 0u8..2,
            headers in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..12),
            lf_only in any::<bool>(),
            body in prop::collection::vec(any::<u8>(), 0..20),
        ) -> Vec<u8> {
            let eol = if lf_only { "\n" } else { "\r\n" };
            let mut s = format!("{method} {path}");
            if let Some(q) = query {
                s.push('?');
                s.push_str(&q);
            }
            s.push_str(&format!(" HTTP/1.{minor}{eol}"));
            for (n, v) in headers {
                if n.eq_ignore_ascii_case("transfer-encoding") { continue; }
                s.push_str(&format!("{n}: {v}{eol}"));
            }
            s.push_str(eol);
            let mut v = s.into_bytes();
            v.extend_from_slice(&body);
            v
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic_and_splits_agree(
            buf in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..8),
        ) {
            let whole = summarize(RequestParser::new(limits_small()).parse(&buf));
            prop_assert_eq!(feed_in_cuts(&buf, &cuts, limits_small()), whole);
        }

        #[test]
        fn random_text_with_newlines_splits_agree(
            buf in "[GET /HTP1.\r\n:a-z ]{0,200}",
            cuts in prop::collection::vec(0usize..200, 0..8),
        ) {
            let buf = buf.as_bytes();
            let whole = summarize(RequestParser::new(limits_small()).parse(buf));
            prop_assert_eq!(feed_in_cuts(buf, &cuts, limits_small()), whole.clone());
            prop_assert_eq!(byte_by_byte(buf, limits_small()), whole);
        }

        #[test]
        fn valid_requests_parse_identically_in_any_split(
            buf in valid_request(),
            cuts in prop::collection::vec(0usize..800, 0..10),
        ) {
            let limits = RequestLimits { max_head_bytes: 4096, max_headers: 32 };
            let whole = summarize(RequestParser::new(limits).parse(&buf));
            prop_assert!(matches!(whole, Ok(Some(_))), "{:?}", whole);
            prop_assert_eq!(feed_in_cuts(&buf, &cuts, limits), whole.clone());
            prop_assert_eq!(byte_by_byte(&buf, limits), whole);
        }
    }
}
