//! permessage-deflate negotiation (RFC 7692 §5, §7.1) on the server side: parse every offer in
//! the client's `Sec-WebSocket-Extensions` header lines, pick the first one this server can
//! honour, and write the response.
//!
//! Contract:
//! - Input: the raw values of every `Sec-WebSocket-Extensions` line, in order (RFC 6455 §9.1:
//!   several lines are one comma-separated list). Extensions other than `permessage-deflate`
//!   are skipped; so is anything that does not parse (an unterminated quoted string, an empty
//!   name, a bad token): the offer it is part of is declined, the others still count.
//! - An offer is declined, never accepted half-way (§7.1): an unknown parameter, a parameter
//!   given twice, a value where none is allowed (`*_no_context_takeover`), a missing or invalid
//!   window size (`server_max_window_bits` needs one; both take a decimal 8..=15 without leading
//!   zeros, also as a quoted string).
//! - The server's choice, made so one compressed frame can serve every subscriber and no
//!   inflate window is kept between messages:
//!   - `server_no_context_takeover`, always (§7.1.1.1 lets the server add it): every message
//!     is compressed on its own, once, for every connection.
//!   - `client_no_context_takeover`, always (§7.1.1.2 lets the server add it): the client
//!     resets its compressor per message, so the server's inflater is reset too and a
//!     connection keeps no 32 KiB window between messages.
//!   - `server_max_window_bits=N` only when offered (then echoed, §7.1.2.1): our encoder uses
//!     a 32 KiB window, so a connection with N < 15 gets compressed frames only for messages of
//!     at most 2^N bytes (no back-reference can reach further than the message's own length),
//!     and plain frames for the rest, which RFC 7692 allows message by message.
//!   - `client_max_window_bits` is never sent back: our inflater uses the full 32 KiB window,
//!     which reads any window size the client picks.
//!
//! No allocation while parsing; the response is appended to a caller's buffer.

/// The extension name (RFC 7692 §6), compared case-insensitively as HTTP tokens are.
pub const EXTENSION: &str = "permessage-deflate";

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window the client asked our messages to fit (`server_max_window_bits`), 15 when it
    /// asked nothing. Compressed frames are sent only for messages of at most 2^bits bytes.
    pub server_max_window_bits: u8,
    /// Whether the accepted offer named `server_max_window_bits` (it is then echoed).
    pub echo_server_window: bool,
}

impl Agreed {
    /// Largest uncompressed message this connection may receive compressed.
    pub fn max_compressed_len(&self) -> usize {
        if self.server_max_window_bits >= 15 {
            usize::MAX
        } else {
            1 << self.server_max_window_bits
        }
    }

    /// The `Sec-WebSocket-Extensions` response value.
    pub fn response(&self) -> String {
        let mut s = String::with_capacity(112);
        s.push_str(EXTENSION);
        s.push_str("; server_no_context_takeover; client_no_context_takeover");
        if self.echo_server_window {
            s.push_str("; server_max_window_bits=");
            s.push_str(window_str(self.server_max_window_bits));
        }
        s
    }
}

fn window_str(bits: u8) -> &'static str {
    const S: [&str; 8] = ["8", "9", "10", "11", "12", "13", "14", "15"];
    S[usize::from(bits.clamp(8, 15) - 8)]
}

/// Pick the first acceptable `permessage-deflate` offer among `lines` (every
/// `Sec-WebSocket-Extensions` value, in order); `None` declines them all (no compression).
pub fn negotiate<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    lines
        .into_iter()
        .flat_map(Elements::new)
        .find_map(|offer| match offer {
            Ok(offer) if offer.name.eq_ignore_ascii_case(EXTENSION.as_bytes()) => accept(&offer),
            _ => None,
        })
}

/// One parsed extension offer: its name and raw parameter list.
#[derive(Debug, Clone, Copy)]
struct Offer<'a> {
    name: &'a [u8],
    params: &'a [u8],
}

/// Check one permessage-deflate offer's parameters (RFC 7692 §7.1); `None` declines it.
fn accept(offer: &Offer<'_>) -> Option<Agreed> {
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: 15,
        echo_server_window: false,
    };
    for param in Params(offer.params) {
        let (name, value) = param.ok()?;
        let slot = match () {
            _ if name.eq_ignore_ascii_case(b"server_no_context_takeover") => 0,
            _ if name.eq_ignore_ascii_case(b"client_no_context_takeover") => 1,
            _ if name.eq_ignore_ascii_case(b"server_max_window_bits") => 2,
            _ if name.eq_ignore_ascii_case(b"client_max_window_bits") => 3,
            _ => return None, // unknown parameter
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None; // given twice
        }
        match (slot, value) {
            (0 | 1, None) => {}
            (0 | 1, Some(_)) => return None,
            (2, Some(v)) => {
                agreed.server_max_window_bits = window_bits(v)?;
                agreed.echo_server_window = true;
            }
            (2, None) => return None,
            (3, Some(v)) => {
                window_bits(v)?;
            }
            // `client_max_window_bits` without a value: the client could take a limit from
            // us; we set none.
            _ => {}
        }
    }
    Some(agreed)
}

/// A window size: a decimal 8..=15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: Value<'_>) -> Option<u8> {
    let digits = match v {
        Value::Token(t) => t,
        Value::Quoted(q) => {
            // Only digits are acceptable, so a quoted value with escapes never is.
            if q.contains(&b'\\') {
                return None;
            }
            q
        }
    };
    match digits {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter value: a token, or a quoted string's content (escapes not yet resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Token(&'a [u8]),
    Quoted(&'a [u8]),
}

/// Whether `b` may appear in an HTTP token (RFC 9110 §5.6.2 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

fn token(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|&&b| is_tchar(b)).count();
    s.split_at(n)
}

/// Split at the end of a quoted string that `s` starts with (`s[0] == '"'`): the content and
/// the rest after the closing quote; `None` if it never closes.
fn quoted(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some((&s[1..i], &s[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Length of the list element at the front of `s`: up to the first comma outside a quoted
/// string (or the end; an unterminated quote runs to the end).
fn element_len(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b',' => return i,
            b'"' => match quoted(&s[i..]) {
                Some((q, _)) => i += q.len() + 2,
                None => return s.len(),
            },
            _ => i += 1,
        }
    }
    s.len()
}

/// The extensions of one header line: `Ok(offer)` per well-formed element, `Err(())` per
/// malformed one (empty elements are skipped, RFC 9110 §5.6.1).
struct Elements<'a>(&'a [u8]);

impl<'a> Elements<'a> {
    fn new(line: &'a [u8]) -> Self {
        Elements(line)
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Offer<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = skip_ows(self.0);
            if s.is_empty() {
                self.0 = s;
                return None;
            }
            let n = element_len(s);
            let (element, rest) = s.split_at(n);
            self.0 = rest.strip_prefix(b",").unwrap_or(rest);
            let element = trim_end_ows(element);
            if element.is_empty() {
                continue;
            }
            let (name, params) = token(element);
            if name.is_empty() {
                return Some(Err(()));
            }
            let params = skip_ows(params);
            if !params.is_empty() && params[0] != b';' {
                return Some(Err(()));
            }
            return Some(Ok(Offer { name, params }));
        }
    }
}

fn trim_end_ows(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &s[..s.len() - n]
}

/// `; name[=value]` parameters of one element: `Ok((name, value))` each, `Err(())` on the first
/// malformed one (then nothing more).
struct Params<'a>(&'a [u8]);

type Param<'a> = Result<(&'a [u8], Option<Value<'a>>), ()>;

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        let s = skip_ows(self.0);
        if s.is_empty() {
            return None;
        }
        let fail = |this: &mut Self| {
            this.0 = &[];
            Some(Err(()))
        };
        let Some(s) = s.strip_prefix(b";") else {
            return fail(self);
        };
        let (name, s) = token(skip_ows(s));
        if name.is_empty() {
            return fail(self);
        }
        let s = skip_ows(s);
        let (value, rest) = match s.strip_prefix(b"=") {
            None => (None, s),
            Some(v) => {
                let v = skip_ows(v);
                if v.first() == Some(&b'"') {
                    match quoted(v) {
                        Some((q, rest)) => (Some(Value::Quoted(q)), rest),
                        None => return fail(self),
                    }
                } else {
                    let (t, rest) = token(v);
                    if t.is_empty() {
                        return fail(self);
                    }
                    (Some(Value::Token(t)), rest)
                }
            }
        };
        let rest = skip_ows(rest);
        if !rest.is_empty() && rest[0] != b';' {
            return fail(self);
        }
        self.0 = rest;
        Some(Ok((name, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(lines: &[&str]) -> Option<Agreed> {
        negotiate(lines.iter().map(|l| l.as_bytes()))
    }

    const PLAIN: Agreed = Agreed {
        server_max_window_bits: 15,
        echo_server_window: false,
    };

    fn window(bits: u8) -> Agreed {
        Agreed {
            server_max_window_bits: bits,
            echo_server_window: true,
        }
    }

    #[test]
    fn browser_and_library_offers() {
        // Chromium, Firefox, Python websockets' default, Node ws' default.
        assert_eq!(
            neg(&["permessage-deflate; client_max_window_bits"]),
            Some(PLAIN)
        );
        assert_eq!(neg(&["permessage-deflate"]), Some(PLAIN));
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"]),
            Some(window(12))
        );
        assert_eq!(
            PLAIN.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            window(9).response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9"
        );
        assert_eq!(window(9).max_compressed_len(), 512);
        assert_eq!(PLAIN.max_compressed_len(), usize::MAX);
    }

    #[test]
    fn every_parameter_with_and_without_value() {
        let all = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                   server_max_window_bits=10; client_max_window_bits=8";
        assert_eq!(neg(&[all]), Some(window(10)));
        assert_eq!(
            neg(&["permessage-deflate;client_max_window_bits=15;server_max_window_bits=15"]),
            Some(window(15))
        );
        // Case-insensitive names, whitespace around separators, quoted values.
        assert_eq!(
            neg(&["PerMessage-Deflate ;\tSERVER_MAX_WINDOW_BITS = \"11\" ; client_max_window_bits=\"9\""]),
            Some(window(11))
        );
        for bad in [
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=\"1\\5\"",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mux",
            "permessage-deflate; ; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; =10",
            "permessage-deflate x",
        ] {
            assert_eq!(neg(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn first_acceptable_offer_wins_across_lines() {
        // A malformed or unacceptable offer is skipped, the next one taken.
        assert_eq!(
            neg(&["permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
            Some(window(9))
        );
        assert_eq!(
            neg(&[
                "x-webkit-deflate-frame, foo; bar=\"a, b; c\"",
                "permessage-deflate; bogus",
                " , permessage-deflate"
            ]),
            Some(PLAIN)
        );
        assert_eq!(neg(&["foo, bar; baz=1"]), None);
        assert_eq!(neg(&[]), None);
        assert_eq!(neg(&[""]), None);
        assert_eq!(neg(&[" , ,"]), None);
        // An unterminated quote swallows the rest of its line only.
        assert_eq!(
            neg(&[
                "foo; a=\"x, permessage-deflate",
                "permessage-deflate; server_max_window_bits=14"
            ]),
            Some(window(14))
        );
        // Autobahn 13.7-style list: the first offer (window 8, no context) is taken.
        assert_eq!(
            neg(&["permessage-deflate; server_no_context_takeover; server_max_window_bits=8, permessage-deflate; server_no_context_takeover, permessage-deflate"]),
            Some(window(8))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 1u64;
        let alphabet = b"permssage-dflt_;=,\" \t\\9815cx";
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                line.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = negotiate([&line[..]]);
        }
    }
}
