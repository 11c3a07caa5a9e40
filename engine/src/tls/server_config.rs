//! The data listener's [`rustls::ServerConfig`], built from checked [`Material`] and the options.
//!
//! Contract: [`build`] is pure (no I/O): the same material and options give an equivalent
//! configuration, so a reload is `material::load` + `build` + a swap. What it decides:
//! - versions: TLS 1.3, plus TLS 1.2 unless `tls_min_version = "1.3"`;
//! - ALPN: `http/1.1` only (a client that offers ALPN without it is refused with
//!   `no_application_protocol`; a client that offers none is served);
//! - client certificates: verified against `tls_client_ca` (required or optional), else none;
//! - resumption: stateless tickets from a ticketer the caller keeps across reloads (so tickets
//!   issued before a reload still resume after it), one per TLS 1.3 handshake; no server-side
//!   session cache at all (nothing per session in server memory, no lock shared by the shards);
//! - no early data, no key log, no secret extraction (kTLS would need it: docs/ENGINE.md).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ProducesTickets, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{RootCertStore, ServerConfig};

use super::material::{Material, SetupError};
use super::options::{ClientAuth, Tickets, TlsOptions, TlsVersion};

/// The only application protocol offered: WebSocket upgrades are HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The process's crypto provider: ring (docs/DEPENDENCIES.md has the measurement).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A ticketer for the life of the process (its keys rotate every 6 hours, tickets live 12).
pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, SetupError> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| SetupError::Config(e.to_string()))
}

/// Build the configuration.
pub fn build(
    material: &Material,
    options: &TlsOptions,
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, SetupError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match options.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| SetupError::Config(e.to_string()))?;
    let builder = match &material.client_cas {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(cas.iter().cloned());
            if added == 0 {
                return Err(SetupError::Config(format!(
                    "tls_client_ca: none of its {ignored} certificate(s) is a usable CA"
                )));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match options.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| SetupError::Config(format!("tls_client_ca: {e}")))?,
            )
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(material.certified.clone())));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    match options.tickets {
        Tickets::On => {
            config.ticketer = ticketer.clone();
            config.send_tls13_tickets = 1;
        }
        Tickets::Off => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}
