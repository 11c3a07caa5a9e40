//! The implicit-trust rule: which requests may act without any credential.
//!
//! Contract: a request is *trusted* only if the trust mode allows it (`--trust-loopback`),
//! its peer address is loopback, and it carries no sign of coming from a browser or through
//! a proxy: no `Origin` header (browsers always send one on WebSocket upgrades and on every
//! POST, `fetch` in `no-cors` mode included), no `Sec-Fetch-*` header, and no forwarding
//! header ([`FORWARDING_HEADERS`], or any `X-Forwarded-*`). A trusted request gets every
//! grant. Modes: `auto` trusts only while no publish credential (publish token or JWT key) is
//! configured — the zero-configuration development default; `on` always; `off` never.
//! What this cannot see: a same-host proxy that adds no forwarding header, or another local
//! process relaying for someone else; on shared hosts configure credentials or `off`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Headers that a proxy (or a client pretending to be behind one) adds: their presence means
/// the TCP peer is not the client.
pub const FORWARDING_HEADERS: [&str; 11] = [
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "forwarded-for",
];

/// `--trust-loopback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustLoopback {
    /// Trust loopback requests (as above) while no publish credential is configured.
    Auto,
    /// Always trust loopback requests (as above), credentials or not.
    On,
    /// Trust nobody: every publish needs a credential.
    Off,
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// True if a header of this (lowercase or not) name shows a browser or a proxy.
pub fn is_untrusting_header(name: &str) -> bool {
    let lower = |prefix: &str| {
        name.len() >= prefix.len()
            && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    name.eq_ignore_ascii_case("origin")
        || lower("sec-fetch-")
        || lower("x-forwarded-")
        || FORWARDING_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// Is a request from `peer` whose header names are `headers` trusted under `mode`?
/// `credentials_configured`: a publish token or a JWT key is set.
pub fn is_trusted<'a>(
    mode: TrustLoopback,
    credentials_configured: bool,
    peer: IpAddr,
    mut headers: impl Iterator<Item = &'a str>,
) -> bool {
    let on = match mode {
        TrustLoopback::Auto => !credentials_configured,
        TrustLoopback::On => true,
        TrustLoopback::Off => false,
    };
    on && is_loopback(peer) && !headers.any(is_untrusting_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(mode: TrustLoopback, creds: bool, peer: &str, headers: &[&str]) -> bool {
        is_trusted(mode, creds, peer.parse().unwrap(), headers.iter().copied())
    }

    #[test]
    fn loopback_without_browser_or_proxy_headers() {
        use TrustLoopback::*;
        let plain = ["host", "content-type", "content-length", "user-agent"];
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(trusted(Auto, false, peer, &plain), "{peer}");
        }
        for peer in ["10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(!trusted(Auto, false, peer, &plain), "{peer}");
            assert!(!trusted(On, false, peer, &plain), "{peer}");
        }
        for h in [
            "Origin",
            "Sec-Fetch-Mode",
            "sec-fetch-site",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "X-Forwarded-Host",
            "Forwarded",
            "X-Real-IP",
            "Via",
            "CF-Connecting-IP",
            "True-Client-IP",
        ] {
            assert!(!trusted(Auto, false, "127.0.0.1", &["host", h]), "{h}");
        }
    }

    #[test]
    fn modes() {
        use TrustLoopback::*;
        assert!(
            !trusted(Auto, true, "127.0.0.1", &[]),
            "credentials configured"
        );
        assert!(trusted(On, true, "127.0.0.1", &[]));
        assert!(!trusted(Off, false, "127.0.0.1", &[]));
        assert!(!trusted(On, false, "127.0.0.1", &["origin"]));
    }
}
