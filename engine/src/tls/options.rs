//! TLS options: the value types of the `tls_*` configuration keys and `listen_plain`, the
//! per-listener view [`TlsOptions`] the loader takes, and their validation.
//!
//! Contract: `config.rs` owns the option names (CLI flag, env variable, TOML key) and calls
//! [`validate`] once the layers are merged; everything TLS-specific about the values lives here.
//! Validation is syntactic (paths present together, addresses consistent); reading and checking
//! the files is [`super::material`]'s job at start-up, so `--print-config` works without them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Lowest TLS version accepted; TLS 1.3 is always enabled and preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default: older trading clients and JVMs still speak 1.2).
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

/// What a client certificate means when `tls_client_ca` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every client must present a certificate the CA file vouches for.
    Required,
    /// A client may present none; one it presents must verify.
    Optional,
}

/// Stateless session tickets (resumption without server memory), on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tickets {
    /// Issue one ticket per TLS 1.3 handshake (and RFC 5077 tickets to TLS 1.2 clients that ask).
    On,
    /// Every handshake is a full one.
    Off,
}

/// Everything the loader needs to build the data listener's TLS configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Lowest version accepted.
    pub min_version: TlsVersion,
    /// PEM CA certificate(s) client certificates are verified against; `None`: no client auth.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (only with `client_ca`).
    pub client_auth: ClientAuth,
    /// Session tickets.
    pub tickets: Tickets,
}

impl TlsOptions {
    /// The data listener's TLS options, or `None` when it serves plain `ws://`.
    pub fn from_config(c: &Config) -> Option<TlsOptions> {
        Some(TlsOptions {
            cert: c.tls_cert.clone()?,
            key: c.tls_key.clone()?,
            min_version: c.tls_min_version,
            client_ca: c.tls_client_ca.clone(),
            client_auth: c.tls_client_auth,
            tickets: c.tls_session_tickets,
        })
    }
}

/// Two listeners would take the same connections: the same non-zero port on addresses that
/// overlap (equal, or either unspecified). With SO_REUSEPORT the kernel would not refuse the
/// second bind; it would silently spread plain and TLS clients over both.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Check the TLS keys of a merged configuration.
pub fn validate(c: &Config) -> Result<(), &'static str> {
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        return Err("tls_cert and tls_key go together");
    }
    let tls = c.tls_cert.is_some();
    if c.tls_client_ca.is_some() && !tls {
        return Err("tls_client_ca needs tls_cert and tls_key");
    }
    if let Some(plain) = c.listen_plain {
        if !tls {
            return Err(
                "listen_plain needs tls_cert and tls_key (without TLS, listen is already plain)",
            );
        }
        if overlap(plain, c.listen) {
            return Err("listen_plain must not share listen's port on an overlapping address");
        }
        if c.admin_listen.addr().is_some_and(|a| overlap(plain, a)) {
            return Err(
                "listen_plain must not share admin_listen's port on an overlapping address",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_listeners() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(overlap(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(!overlap(a("10.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(
            !overlap(a("127.0.0.1:0"), a("127.0.0.1:0")),
            "both ephemeral"
        );
        assert!(!overlap(a("0.0.0.0:8080"), a("0.0.0.0:8081")));
    }
}
