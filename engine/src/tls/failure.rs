//! Why a TLS handshake (or session) failed, in the few classes an operator acts on.
//!
//! Contract: [`Failure::of`] maps every `rustls::Error` to one class; the connection core adds
//! the two it detects itself ([`Failure::Timeout`], [`Failure::ClosedEarly`]). The names are the
//! `reason` labels of `shardcast_tls_handshake_failures_total` and the keys under
//! `tls.failures` in /stats, so they are stable.

use rustls::{Error, PeerIncompatible};

/// A failure class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Malformed, oversized, undecryptable or out-of-order records or handshake messages: garbage,
    /// a plain HTTP request on the TLS port, a broken or hostile client. Answered with a fatal
    /// alert.
    BadRecord,
    /// The client sent a fatal alert: typically it does not trust our certificate.
    PeerAlert,
    /// No protocol version in common (e.g. a TLS 1.0/1.1-only client, or 1.2 with
    /// `tls_min_version = "1.3"`).
    UnsupportedVersion,
    /// No cipher suite, key-exchange group or signature scheme in common.
    NoSharedCipher,
    /// The client offered ALPN protocols but not `http/1.1`.
    NoSharedAlpn,
    /// The client certificate was missing (required mode) or did not verify against the CA.
    ClientCertRefused,
    /// The handshake did not finish within `handshake_timeout_ms` (detected by the core).
    Timeout,
    /// The peer closed the connection before the handshake finished (detected by the core).
    ClosedEarly,
    /// Anything else (internal errors, exhausted keys).
    Other,
}

impl Failure {
    /// Every class, in counter order.
    pub const ALL: [Failure; 9] = [
        Failure::BadRecord,
        Failure::PeerAlert,
        Failure::UnsupportedVersion,
        Failure::NoSharedCipher,
        Failure::NoSharedAlpn,
        Failure::ClientCertRefused,
        Failure::Timeout,
        Failure::ClosedEarly,
        Failure::Other,
    ];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            Failure::BadRecord => "bad_record",
            Failure::PeerAlert => "peer_alert",
            Failure::UnsupportedVersion => "unsupported_version",
            Failure::NoSharedCipher => "no_shared_cipher",
            Failure::NoSharedAlpn => "no_shared_alpn",
            Failure::ClientCertRefused => "client_cert_refused",
            Failure::Timeout => "timeout",
            Failure::ClosedEarly => "closed_early",
            Failure::Other => "other",
        }
    }

    /// The class of a rustls error.
    pub fn of(e: &Error) -> Failure {
        match e {
            Error::InvalidMessage(_)
            | Error::DecryptError
            | Error::PeerSentOversizedRecord
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::PeerMisbehaved(_)
            | Error::UnsupportedNameType => Failure::BadRecord,
            Error::AlertReceived(_) => Failure::PeerAlert,
            Error::PeerIncompatible(p) => match p {
                PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => {
                    Failure::UnsupportedVersion
                }
                _ => Failure::NoSharedCipher,
            },
            Error::NoApplicationProtocol => Failure::NoSharedAlpn,
            Error::NoCertificatesPresented | Error::InvalidCertificate(_) => {
                Failure::ClientCertRefused
            }
            _ => Failure::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_indexed_and_named_once() {
        let names: std::collections::HashSet<_> = Failure::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Failure::ALL.len());
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        assert_eq!(
            Failure::of(&Error::AlertReceived(rustls::AlertDescription::UnknownCA)),
            Failure::PeerAlert
        );
        assert_eq!(
            Failure::of(&Error::NoApplicationProtocol),
            Failure::NoSharedAlpn
        );
        assert_eq!(
            Failure::of(&Error::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
            )),
            Failure::NoSharedCipher
        );
    }
}
