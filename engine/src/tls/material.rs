//! Key material from disk: the PEM certificate chain and private key of the data listener, and
//! the CA certificates client certificates are verified against.
//!
//! Contract: [`load`] reads and checks everything a [`rustls::ServerConfig`] will be built from,
//! and fails with a [`SetupError`] that names the file and what is wrong with it (unreadable, no
//! PEM of the right kind, a key rustls cannot use, a key that does not belong to the leaf
//! certificate). It runs at start-up and again on every reload; it never logs (the caller decides
//! whether a failure stops the process or keeps the old configuration).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::options::TlsOptions;

/// Why TLS could not be set up from the configured files.
#[derive(Debug)]
pub enum SetupError {
    /// A file could not be read or holds no usable PEM section.
    File {
        /// Which option named it (`tls_cert`, `tls_key`, `tls_client_ca`).
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The key does not belong to the leaf certificate (or rustls cannot sign with it).
    Key {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        why: String,
    },
    /// rustls refused the resulting configuration (e.g. no CA certificate it can use).
    Config(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { option, path, why } => {
                write!(f, "{option} {}: {why}", path.display())
            }
            Self::Key { key, cert, why } => write!(
                f,
                "tls_key {} does not fit tls_cert {}: {why}",
                key.display(),
                cert.display()
            ),
            Self::Config(why) => write!(f, "TLS configuration refused: {why}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Checked key material, ready for a `ServerConfig`.
#[derive(Debug)]
pub struct Material {
    /// The leaf's chain and signing key (the key checked against the leaf's public key).
    pub certified: Arc<CertifiedKey>,
    /// CA certificates for client certificates, when client authentication is on.
    pub client_cas: Option<Vec<CertificateDer<'static>>>,
}

fn file_error(option: &'static str, path: &Path, why: impl fmt::Display) -> SetupError {
    SetupError::File {
        option,
        path: path.to_owned(),
        why: why.to_string(),
    }
}

fn pem_why(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => "no PEM section of the expected kind".to_owned(),
        e => format!("invalid PEM: {e:?}"),
    }
}

/// Every `CERTIFICATE` section of a PEM file, at least one.
fn certificates(
    option: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    // Read first so a missing file says so instead of "no certificate".
    let text =
        std::fs::read(path).map_err(|e| file_error(option, path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(option, path, pem_why(e)))?;
    if certs.is_empty() {
        return Err(file_error(option, path, "no CERTIFICATE section"));
    }
    Ok(certs)
}

/// Read and check the files `options` names.
pub fn load(options: &TlsOptions, provider: &CryptoProvider) -> Result<Material, SetupError> {
    let chain = certificates("tls_cert", &options.cert)?;
    let text = std::fs::read(&options.key)
        .map_err(|e| file_error("tls_key", &options.key, format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        file_error(
            "tls_key",
            &options.key,
            match e {
                pem::Error::NoItemsFound => {
                    "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section".to_owned()
                }
                e => pem_why(e),
            },
        )
    })?;
    // from_der loads the key with the provider and checks it against the leaf's public key.
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| SetupError::Key {
        key: options.key.clone(),
        cert: options.cert.clone(),
        why: match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the private key does not match the leaf certificate's public key".to_owned()
            }
            e => e.to_string(),
        },
    })?;
    let client_cas = match &options.client_ca {
        Some(path) => Some(certificates("tls_client_ca", path)?),
        None => None,
    };
    Ok(Material {
        certified: Arc::new(certified),
        client_cas,
    })
}
