//! What sealing queued WebSocket frames costs the TLS session layer (`tls::Session::seal`), per
//! frame: one record per frame (what a writer that seals each frame as it is queued pays) against
//! frames gathered into full records (what the engine's flush does with everything queued for a
//! connection). The session is a real one, after an in-memory handshake with a rustls client.
//!
//! ```text
//! cargo run --release -p shardcast --example tls_seal -- MODE FRAMES [SIZE] [SUITE] [BATCH]
//!   MODE   per-frame | batched | none (handshake and frames only: the callgrind baseline)
//!   SIZE   frame bytes (default 64); SUITE aes128 | aes256 | chacha (default aes128, TLS 1.3)
//!   BATCH  frames queued per flush in batched mode (default 100)
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/tls_seal batched 100000     # minus `none 100000`, divided by 100000
//! ```
//! Prints ns per frame (wall clock: provisional on a shared host) and the records sealed.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use shardcast::tls::session::FULL_RECORD;
use shardcast::tls::Session;

fn pair(suite: rustls::SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let mut only = rustls::crypto::ring::default_provider();
    only.cipher_suites = vec![suite];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(only))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Session {
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = Session::new(server).unwrap();
    let mut out = vec![0u8; FULL_RECORD];
    while !s.is_open() || c.is_handshaking() {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        s.handle_ciphertext(&mut wire, |_| {}).unwrap();
        let mut wire = Vec::new();
        while s.wants_transmit() {
            let n = s.poll_transmit(&mut out);
            wire.extend_from_slice(&out[..n]);
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        let _ = c.reader().read_to_end(&mut Vec::new());
        let _ = c.writer().flush();
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let mode = arg(0, "batched");
    let frames: usize = arg(1, "100000").parse().unwrap();
    let size: usize = arg(2, "64").parse().unwrap();
    let batch: usize = arg(4, "100").parse().unwrap();
    use rustls::crypto::ring::cipher_suite as cs;
    let suite = match arg(3, "aes128").as_str() {
        "aes128" => cs::TLS13_AES_128_GCM_SHA256,
        "aes256" => cs::TLS13_AES_256_GCM_SHA384,
        "chacha" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        s => panic!("unknown suite {s}"),
    };
    let (server, client) = pair(suite);
    let mut session = handshake(server, client);
    // One broadcast frame shared by every "delivery", as the engine shares one `Bytes`.
    let frame = bytes::Bytes::from(vec![0x81u8; size]);
    let queue: Vec<bytes::Bytes> = vec![frame; batch];
    let mut out = vec![0u8; 4 * FULL_RECORD];
    let mut scratch = Vec::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    let start = Instant::now();
    match mode.as_str() {
        "per-frame" => {
            for _ in 0..frames {
                let s = session
                    .seal([&queue[0][..]], &mut out, &mut scratch)
                    .unwrap();
                records += s.records;
                bytes += s.written;
            }
        }
        "batched" => {
            let mut left = frames;
            while left > 0 {
                let n = left.min(batch);
                // A flush: everything queued, advanced by the plaintext each call consumed.
                let mut done = 0;
                while done < n * size {
                    let (skip, head) = (done / size, done % size);
                    let queued = std::iter::once(&queue[skip][head..])
                        .chain(queue[skip + 1..n].iter().map(|f| &f[..]));
                    let s = session.seal(queued, &mut out, &mut scratch).unwrap();
                    records += s.records;
                    bytes += s.written;
                    done += s.plaintext;
                }
                left -= n;
            }
        }
        "none" => {}
        m => panic!("unknown mode {m}"),
    }
    let ns = start.elapsed().as_nanos() as f64 / frames.max(1) as f64;
    println!(
        "{mode}: {frames} frames of {size} B, {records} records, {bytes} B on the wire, {ns:.1} ns/frame"
    );
}
