//! The `Origin` allow-list (`--allowed-origins`) for WebSocket upgrades and HTTP publish.
//!
//! Contract: an entry is `scheme://host[:port]`: the scheme (`http`/`https`) and host are
//! compared case-insensitively; a missing port means the scheme's default (80/443), so
//! `https://a.example` and `https://a.example:443` are the same origin; `:*` allows any port.
//! A host of `*.example.com` allows every subdomain at any depth (`a.example.com`,
//! `b.a.example.com`) but not `example.com` itself. `Origin: null` and anything unparsable
//! never match. Requests without `Origin` are not this module's business (the caller lets
//! them through). Matching is linear in the number of entries; no allocation.

/// One parsed origin: scheme, host, port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// Split `scheme://host[:port]` (host may be a bracketed IPv6 literal); `port` is `None` for
/// `:*`. No path, query or userinfo allowed.
fn split(s: &str) -> Option<(&str, &str, Option<Option<u16>>)> {
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        let host = &rest[..inner.len() + 2];
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some("*") => Some(None),
        Some(p) => Some(Some(p.parse().ok()?)),
    };
    Some((scheme, host, port))
}

fn parse_origin(origin: &[u8]) -> Option<Parts<'_>> {
    let s = std::str::from_utf8(origin).ok()?.trim();
    let (scheme, host, port) = split(s)?;
    let port = match port {
        None => default_port(scheme)?,
        Some(Some(p)) => p,
        Some(None) => return None, // `:*` is not an origin
    };
    Some(Parts { scheme, host, port })
}

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    scheme: String,
    /// Lowercase host; for a wildcard, the suffix including its dot (`.example.com`).
    host: String,
    wildcard: bool,
    /// `None`: any port.
    port: Option<u16>,
}

impl Entry {
    fn parse(s: &str) -> Result<Entry, String> {
        let bad = || format!("{s:?}: expected scheme://host[:port] (host may start with *.)");
        let (scheme, host, port) = split(s.trim()).ok_or_else(bad)?;
        let default =
            default_port(scheme).ok_or_else(|| format!("{s:?}: scheme must be http or https"))?;
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                (format!(".{suffix}"), true)
            }
            _ if host.contains('*') => return Err(bad()),
            _ => (host.to_owned(), false),
        };
        Ok(Entry {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            wildcard,
            port: match port {
                None => Some(default),
                Some(p) => p,
            },
        })
    }

    fn matches(&self, o: &Parts<'_>) -> bool {
        if !self.scheme.eq_ignore_ascii_case(o.scheme) || self.port.is_some_and(|p| p != o.port) {
            return false;
        }
        if self.wildcard {
            o.host.len() > self.host.len()
                && o.host.as_bytes()[o.host.len() - self.host.len()..]
                    .eq_ignore_ascii_case(self.host.as_bytes())
        } else {
            o.host.eq_ignore_ascii_case(&self.host)
        }
    }
}

/// The configured allow-list; empty means no Origin check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    entries: Vec<Entry>,
}

impl AllowedOrigins {
    /// Parse the configured entries (an error names the bad one).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedOrigins, String> {
        let entries = entries
            .iter()
            .map(|e| Entry::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AllowedOrigins { entries })
    }

    /// True when an allow-list is configured.
    pub fn is_on(&self) -> bool {
        !self.entries.is_empty()
    }

    /// May a request carrying `Origin: origin` proceed? Always true without an allow-list.
    pub fn allows(&self, origin: &[u8]) -> bool {
        if !self.is_on() {
            return true;
        }
        parse_origin(origin).is_some_and(|o| self.entries.iter().any(|e| e.matches(&o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::parse(entries).unwrap()
    }

    #[test]
    fn exact_with_default_ports_and_case() {
        let l = list(&["https://app.example.com", "http://localhost:3000"]);
        assert!(l.allows(b"https://app.example.com"));
        assert!(l.allows(b"https://app.example.com:443"));
        assert!(l.allows(b"HTTPS://App.Example.COM"));
        assert!(!l.allows(b"http://app.example.com"), "scheme matters");
        assert!(!l.allows(b"https://app.example.com:8443"), "port matters");
        assert!(!l.allows(b"https://evil-app.example.com"));
        assert!(!l.allows(b"https://app.example.com.evil.net"));
        assert!(l.allows(b"http://localhost:3000"));
        assert!(!l.allows(b"http://localhost"), "80 is not 3000");
        assert!(!l.allows(b"null"));
        assert!(!l.allows(b""));
        assert!(!l.allows(b"https://app.example.com/path"));
        assert!(!l.allows(&[0xff, 0xfe]));
    }

    #[test]
    fn wildcards_and_any_port() {
        let l = list(&[
            "https://*.example.com",
            "http://127.0.0.1:*",
            "http://[::1]:8080",
        ]);
        assert!(l.allows(b"https://a.example.com"));
        assert!(l.allows(b"https://b.a.example.com"));
        assert!(
            !l.allows(b"https://example.com"),
            "the apex is not a subdomain"
        );
        assert!(!l.allows(b"https://aexample.com"));
        assert!(!l.allows(b"https://a.example.com:8443"));
        assert!(l.allows(b"http://127.0.0.1:5173"));
        assert!(l.allows(b"http://127.0.0.1"));
        assert!(!l.allows(b"https://127.0.0.1:5173"));
        assert!(l.allows(b"http://[::1]:8080"));
        assert!(!l.allows(b"http://[::1]"));
    }

    #[test]
    fn empty_list_allows_everything_and_bad_entries_are_errors() {
        let l = AllowedOrigins::default();
        assert!(!l.is_on());
        assert!(l.allows(b"https://anything.example") && l.allows(b"null"));
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "https://a.*.com",
            "https://*.",
            "https://example.com/app",
            "https://example.com:http",
        ] {
            assert!(AllowedOrigins::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
