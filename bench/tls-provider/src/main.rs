//! ring vs aws-lc-rs as rustls's crypto provider, measured the way shardcast uses TLS:
//! - server-side cost of a full TLS 1.3 handshake (ECDSA P-256 and RSA-2048 leaf certificates,
//!   X25519 key exchange for both providers) and of a resumed one (stateless ticket);
//! - sealing one application-data record of 64 B .. 16 KiB with AES-128-GCM and
//!   ChaCha20-Poly1305 (the provider's AEAD through rustls's `MessageEncrypter`, exactly the call
//!   rustls makes per record).
//!
//! Only the server side of each handshake is timed (the in-memory client runs untimed in
//! between). Rounds of the two providers are interleaved and the median reported, because the
//! host is shared. Usage:
//!   cargo run --release --manifest-path bench/tls-provider/Cargo.toml -- [--rounds 5] [--ms 300]
//! `--quick` (one short round) is for callgrind:
//!   valgrind --tool=callgrind target/release/shardcast-tls-provider-bench --quick --only ring
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::cipher::{Iv, MessageEncrypter, OutboundChunks, OutboundPlainMessage};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedCipherSuite,
};

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    Ring,
    AwsLc,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Ring => "ring",
            Provider::AwsLc => "aws-lc-rs",
        }
    }

    /// The provider with X25519 as its only key exchange: aws-lc-rs would otherwise prefer the
    /// X25519MLKEM768 hybrid, which ring lacks, and the comparison would not be like for like.
    fn x25519_only(self) -> CryptoProvider {
        match self {
            Provider::Ring => {
                let mut p = rustls::crypto::ring::default_provider();
                p.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
                p
            }
            Provider::AwsLc => {
                let mut p = rustls::crypto::aws_lc_rs::default_provider();
                p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
                p
            }
        }
    }

    fn suite(self, chacha: bool) -> SupportedCipherSuite {
        use rustls::crypto::{aws_lc_rs::cipher_suite as a, ring::cipher_suite as r};
        match (self, chacha) {
            (Provider::Ring, false) => r::TLS13_AES_128_GCM_SHA256,
            (Provider::Ring, true) => r::TLS13_CHACHA20_POLY1305_SHA256,
            (Provider::AwsLc, false) => a::TLS13_AES_128_GCM_SHA256,
            (Provider::AwsLc, true) => a::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }

    fn ticketer(self) -> Arc<dyn rustls::server::ProducesTickets> {
        match self {
            Provider::Ring => rustls::crypto::ring::Ticketer::new().unwrap(),
            Provider::AwsLc => rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        }
    }
}

struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
}

/// A CA and a leaf for localhost; the leaf key is ECDSA P-256 (rcgen) or RSA-2048 (openssl).
fn pki(rsa: bool) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = if rsa {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl genpkey (Debian package openssl)");
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    } else {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    };
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca: ca.der().clone(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key_pem: leaf_key.serialize_pem(),
    }
}

fn configs(p: Provider, pki: &Pki, tickets: bool) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(p.x25519_only());
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .unwrap();
    server.send_tls13_tickets = if tickets { 1 } else { 0 };
    if tickets {
        server.ticketer = p.ticketer();
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// One in-memory handshake (plus one byte of application data each way, so the client has
/// processed the server's ticket); returns the time spent in server calls and whether it resumed.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (Duration, bool) {
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s_time = Duration::ZERO;
    let t = Instant::now();
    let mut s = server_new(server);
    s_time += t.elapsed();
    let mut buf = Vec::with_capacity(16 << 10);
    c.writer().write_all(b"x").unwrap();
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        let out = server_step(&mut s, &buf);
        s_time += t.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        let mut got = [0u8; 1];
        if c.reader().read(&mut got).is_ok() {
            let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            return (s_time, resumed);
        }
    }
    panic!("handshake did not complete");
}

/// The server's part of a handshake turn (its own function: `callgrind --toggle-collect`).
#[inline(never)]
fn server_new(config: &Arc<ServerConfig>) -> ServerConnection {
    ServerConnection::new(config.clone()).unwrap()
}

/// Take the client's bytes, answer; once open, echo one byte of application data.
#[inline(never)]
fn server_step(s: &mut ServerConnection, input: &[u8]) -> Vec<u8> {
    let mut rd = input;
    while !rd.is_empty() {
        s.read_tls(&mut rd).unwrap();
        s.process_new_packets().unwrap();
    }
    let mut out = Vec::new();
    if !s.is_handshaking() {
        let mut got = [0u8; 1];
        if s.reader().read(&mut got).is_ok() {
            s.writer().write_all(b"y").unwrap();
        }
    }
    while s.wants_write() {
        s.write_tls(&mut out).unwrap();
    }
    out
}

/// Median over rounds of server µs per handshake.
fn handshake_us(
    p: Provider,
    pki: &Pki,
    resumed: bool,
    budget: Duration,
    counted: Option<u32>,
) -> f64 {
    let (server, client) = configs(p, pki, resumed);
    if resumed {
        handshake(&server, &client); // the full one that stores the ticket
    }
    let (mut n, mut total) = (0u32, Duration::ZERO);
    let start = Instant::now();
    while counted.is_some() || start.elapsed() < budget || n < 3 {
        let (t, was_resumed) = handshake(&server, &client);
        if counted.is_some_and(|c| n + 1 >= c) {
            total += t;
            n += 1;
            break;
        }
        assert_eq!(was_resumed, resumed, "resumption as intended");
        total += t;
        n += 1;
    }
    total.as_secs_f64() * 1e6 / f64::from(n)
}

/// ns per sealed record of `len` plaintext bytes.
fn seal_ns(p: Provider, chacha: bool, len: usize, budget: Duration, counted: Option<u64>) -> f64 {
    let suite = p.suite(chacha);
    let SupportedCipherSuite::Tls13(s13) = suite else {
        unreachable!()
    };
    // A key of the suite's length, from the key schedule's own derivation (what rustls does at
    // the end of a handshake); `AeadKey` has no public constructor for 16-byte keys.
    let hkdf = s13.hkdf_provider;
    let expander = hkdf.expander_for_okm(&rustls::crypto::tls13::OkmBlock::new(&[3u8; 32]));
    let key = rustls::internal::derive_traffic_key(expander.as_ref(), s13.aead_alg);
    let mut enc: Box<dyn MessageEncrypter> = s13.aead_alg.encrypter(key, Iv::new([9u8; 12]));
    let payload = vec![0x5au8; len];
    let (mut n, mut seq) = (0u64, 0u64);
    let start = Instant::now();
    if let Some(count) = counted {
        for _ in 0..count {
            seal_one(enc.as_mut(), &payload, seq);
            seq += 1;
        }
        return start.elapsed().as_secs_f64() * 1e9 / count.max(1) as f64;
    }
    while start.elapsed() < budget || n < 10 {
        for _ in 0..64 {
            seal_one(enc.as_mut(), &payload, seq);
            seq += 1;
        }
        n += 64;
    }
    start.elapsed().as_secs_f64() * 1e9 / n as f64
}

/// One record sealed and encoded, as rustls does per record.
#[inline(never)]
fn seal_one(enc: &mut dyn MessageEncrypter, payload: &[u8], seq: u64) -> usize {
    let msg = OutboundPlainMessage {
        typ: rustls::ContentType::ApplicationData,
        version: rustls::ProtocolVersion::TLSv1_2,
        payload: OutboundChunks::Single(payload),
    };
    std::hint::black_box(enc.encrypt(msg, seq).unwrap().encode()).len()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = flag("--rounds").map_or(if quick { 1 } else { 5 }, |v| v.parse().unwrap());
    let ms: u64 = flag("--ms").map_or(if quick { 20 } else { 300 }, |v| v.parse().unwrap());
    let only = flag("--only");
    let budget = Duration::from_millis(ms);
    let providers: Vec<Provider> = [Provider::Ring, Provider::AwsLc]
        .into_iter()
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| o == p.name() || (o == "aws-lc" && *p == Provider::AwsLc))
        })
        .collect();
    if let Some(count) = flag("--count") {
        // One cell, a fixed number of operations, no output: for callgrind with
        // --toggle-collect=*server_new* --toggle-collect=*server_step* (handshakes) or
        // --toggle-collect=*seal_one* (records). See callgrind.sh.
        let p = providers[0];
        let case = flag("--case").expect("--case with --count");
        let rsa = case.ends_with("-rsa");
        if let Some(kind) = case.strip_prefix("seal-") {
            let (suite, len) = kind.split_once('-').unwrap();
            seal_ns(
                p,
                suite == "chacha",
                len.parse().unwrap(),
                budget,
                Some(count.parse().unwrap()),
            );
        } else {
            let pki = pki(rsa);
            handshake_us(
                p,
                &pki,
                case.starts_with("resumed"),
                budget,
                Some(count.parse().unwrap()),
            );
        }
        return;
    }
    let ecdsa = pki(false);
    let rsa = pki(true);
    println!("# {rounds} interleaved rounds of {ms} ms per cell; medians");
    println!(
        "| measurement | {} |",
        providers
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(providers.len()));
    let rows = flag("--rows");
    let row = |label: &str, unit: &str, f: &dyn Fn(Provider) -> f64| {
        if rows.as_deref().is_some_and(|r| !label.contains(r)) {
            return;
        }
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); providers.len()];
        for _ in 0..rounds {
            for (i, p) in providers.iter().enumerate() {
                per[i].push(f(*p));
            }
        }
        let cells: Vec<String> = per
            .into_iter()
            .map(|v| format!("{:.2} {unit}", median(v)))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    for (name, pki) in [("ECDSA P-256", &ecdsa), ("RSA-2048", &rsa)] {
        row(
            &format!("full handshake, {name} (server µs)"),
            "µs",
            &|p| handshake_us(p, pki, false, budget, None),
        );
        row(
            &format!("resumed handshake, {name} (server µs)"),
            "µs",
            &|p| handshake_us(p, pki, true, budget, None),
        );
    }
    for chacha in [false, true] {
        let suite = if chacha {
            "CHACHA20_POLY1305"
        } else {
            "AES_128_GCM"
        };
        for len in [64usize, 1024, 16384] {
            row(
                &format!("seal one {len} B record, {suite} (ns)"),
                "ns",
                &|p| seal_ns(p, chacha, len, budget, None),
            );
        }
    }
}
