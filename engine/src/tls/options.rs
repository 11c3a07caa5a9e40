//! TLS options: the value types of the `tls_*` configuration keys and the per-listener view
//! [`TlsOptions`] the loader takes.
//!
//! Contract: `config.rs` owns the option names (CLI flag, env variable, TOML key), checks the
//! keys against each other once the layers are merged (paths present together, listeners that
//! do not overlap) and builds [`TlsOptions`] (`Config::tls_options`); the value types live here,
//! so this module depends on nothing else. Reading and checking the files is
//! [`super::material`]'s job at start-up, so `--print-config` works without them.

use std::path::PathBuf;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

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
