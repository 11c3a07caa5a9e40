//! shardcast's TLS session layer (engine/src/tls) against a real rustls client over in-memory
//! pipes: handshakes on TLS 1.2 and 1.3, data both ways, input in any fragmentation, sealing of
//! queued frames into few records, client certificates, alerts for garbage, failure classes,
//! close_notify, resumption, reload and start-up errors.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::tls::{foreign_identity, localhost, server_config, LeafKey, Pki};
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use shardcast::tls::options::{ClientAuth, Tickets, TlsVersion};
use shardcast::tls::session::{FULL_RECORD, MAX_RECORD_PLAINTEXT};
use shardcast::tls::{Failure, Received, Session, SetupError, TlsContext, TlsStats};

const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;

/// A rustls client and our server session joined by in-memory pipes.
struct Pair {
    client: ClientConnection,
    server: Session,
    /// Plaintext the server received.
    plain: Vec<u8>,
    /// Plaintext the client received.
    client_got: Vec<u8>,
    /// The client's error during the handshake (e.g. the server's alert).
    client_error: Option<rustls::Error>,
    /// Ciphertext goes to the server in pieces of this size.
    chunk: usize,
    opened: usize,
    peer_closed: usize,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

impl Pair {
    fn new(server: Arc<ServerConfig>, client: ClientConfig) -> Pair {
        Pair::shared(server, Arc::new(client))
    }

    /// With a client config shared between connections (its session store: resumption).
    fn shared(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Pair {
        Pair {
            client: ClientConnection::new(client, localhost()).unwrap(),
            server: Session::new(server).unwrap(),
            plain: Vec::new(),
            client_got: Vec::new(),
            client_error: None,
            chunk: usize::MAX,
            opened: 0,
            peer_closed: 0,
            out: vec![0; 4 * FULL_RECORD],
            scratch: Vec::new(),
        }
    }

    /// Everything the client wants to send, into the server session.
    fn client_to_server(&mut self) -> Result<(), Failure> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        self.feed(&mut wire)
    }

    fn feed(&mut self, wire: &mut [u8]) -> Result<(), Failure> {
        for piece in wire.chunks_mut(self.chunk.min(wire.len().max(1))) {
            let plain = &mut self.plain;
            let r: Received = self
                .server
                .handle_ciphertext(piece, |p| plain.extend_from_slice(p))?;
            self.opened += usize::from(r.opened);
            self.peer_closed += usize::from(r.peer_closed);
        }
        Ok(())
    }

    /// The server's pending TLS output, into the client.
    fn server_to_client(&mut self) -> Result<(), rustls::Error> {
        let mut wire = Vec::new();
        while self.server.wants_transmit() {
            let n = self.server.poll_transmit(&mut self.out);
            wire.extend_from_slice(&self.out[..n]);
        }
        self.client_reads(&wire)
    }

    fn client_reads(&mut self, mut wire: &[u8]) -> Result<(), rustls::Error> {
        while !wire.is_empty() {
            self.client.read_tls(&mut wire).unwrap();
            self.client.process_new_packets()?;
            // Drain as we go: rustls caps what a client buffers.
            let _ = self.client.reader().read_to_end(&mut self.client_got);
        }
        Ok(())
    }

    /// Run the handshake; `Err` with the server's failure class (or the client's error).
    fn handshake(&mut self) -> Result<(), String> {
        for _ in 0..10 {
            let server = self.client_to_server();
            let client = self.server_to_client();
            if let Err(e) = &client {
                self.client_error = Some(e.clone());
            }
            server.map_err(|f| f.name().to_owned())?;
            client.map_err(|e| format!("client: {e}"))?;
            if self.server.is_open() && !self.client.is_handshaking() {
                return Ok(());
            }
        }
        Err("handshake did not finish".to_owned())
    }

    /// Seal `frames` (all of them, over as many calls as it takes) and hand them to the client;
    /// returns the records sealed and the record sizes seen on the wire.
    fn seal_all(&mut self, frames: &[Vec<u8>], out_len: usize) -> (usize, Vec<usize>) {
        let mut wire = Vec::new();
        let (mut index, mut head, mut records) = (0, 0, 0);
        while index < frames.len() {
            let queue = std::iter::once(&frames[index][head..])
                .chain(frames[index + 1..].iter().map(|f| &f[..]));
            let sealed = self
                .server
                .seal(queue, &mut self.out[..out_len], &mut self.scratch)
                .unwrap();
            assert!(sealed.plaintext > 0, "progress with a {out_len} B buffer");
            wire.extend_from_slice(&self.out[..sealed.written]);
            records += sealed.records;
            // Advance by plaintext bytes, as the engine's queue does.
            let mut left = sealed.plaintext;
            while left > 0 {
                let rest = frames[index].len() - head;
                if left >= rest {
                    (left, index, head) = (left - rest, index + 1, 0);
                } else {
                    (head, left) = (head + left, 0);
                }
            }
        }
        let sizes = record_sizes(&wire);
        self.client_reads(&wire).unwrap();
        (records, sizes)
    }

    /// Plaintext the client received since the last call.
    fn client_plaintext(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.client_got)
    }
}

/// Plaintext lengths of the TLS records in `wire` (ciphertext length minus the record overhead
/// is not known per version, so this returns ciphertext lengths).
fn record_sizes(mut wire: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while wire.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        sizes.push(len);
        wire = &wire[5 + len..];
    }
    assert!(wire.is_empty(), "whole records only");
    sizes
}

fn config_for(pki: &Pki, edit: impl FnOnce(&mut shardcast::tls::TlsOptions)) -> Arc<ServerConfig> {
    let mut options = pki.options();
    edit(&mut options);
    server_config(&options)
}

#[test]
fn handshake_and_data_both_ways_on_tls13_and_tls12_in_any_fragmentation() {
    let pki = Pki::new();
    let server = server_config(&pki.options());
    for version in [TLS13, TLS12] {
        for chunk in [usize::MAX, 1, 7, 1000] {
            let mut p = Pair::new(server.clone(), pki.client_config(&[version]));
            p.chunk = chunk;
            p.handshake().unwrap();
            assert_eq!(p.opened, 1, "opened reported once");
            assert_eq!(p.server.alpn(), Some(&b"http/1.1"[..]));
            assert_eq!(p.server.protocol_version(), Some(version.version));
            assert!(!p.server.resumed());
            let request = b"GET /ws/btc HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(50);
            p.client.writer().write_all(&request).unwrap();
            p.client_to_server().unwrap();
            assert_eq!(p.plain, request, "{version:?} chunk {chunk}");
            let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
            p.seal_all(&frames, FULL_RECORD);
            assert_eq!(p.client_plaintext(), frames.concat());
            // Idle: the session holds no buffer of its own.
            p.server_to_client().unwrap();
            assert_eq!(p.server.buffered_bytes(), 0, "{version:?} chunk {chunk}");
        }
    }
}

#[test]
fn queued_frames_are_sealed_into_few_full_records() {
    let pki = Pki::new();
    let server = server_config(&pki.options());
    for version in [TLS13, TLS12] {
        let mut p = Pair::new(server.clone(), pki.client_config(&[version]));
        p.handshake().unwrap();
        // 1,000 frames of 64 B: 4 records (3 full + the rest), not 1,000.
        let frames: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| {
                let mut f = i.to_be_bytes().to_vec();
                f.resize(64, b'x');
                f
            })
            .collect();
        let (records, sizes) = p.seal_all(&frames, 4 * FULL_RECORD);
        assert_eq!(records, 4, "{version:?}: {sizes:?}");
        assert_eq!(sizes.len(), 4);
        assert!(
            sizes[..3]
                .iter()
                .all(|&s| s > MAX_RECORD_PLAINTEXT && s <= FULL_RECORD),
            "{sizes:?}"
        );
        assert_eq!(p.client_plaintext(), frames.concat());
        // A small burst is one record.
        let burst: Vec<Vec<u8>> = (0..10).map(|_| vec![7u8; 64]).collect();
        let (records, _) = p.seal_all(&burst, 4 * FULL_RECORD);
        assert_eq!(records, 1);
        assert_eq!(p.client_plaintext(), burst.concat());
        // A frame larger than a record: full records, in order.
        let big = vec![(0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>()];
        let (records, _) = p.seal_all(&big, 4 * FULL_RECORD);
        assert_eq!(records, 3);
        assert_eq!(p.client_plaintext(), big.concat());
        // An output buffer smaller than a record: smaller records, several calls, same bytes.
        let (records, sizes) = p.seal_all(&frames[..100], 1000);
        assert!(records >= 7, "{records}");
        assert!(sizes.iter().all(|&s| s <= 1000), "{sizes:?}");
        assert_eq!(p.client_plaintext(), frames[..100].concat());
    }
}

#[test]
fn nothing_is_sealed_before_the_handshake_completes() {
    let pki = Pki::new();
    let mut p = Pair::new(server_config(&pki.options()), pki.client_config(&[]));
    p.client_to_server().unwrap();
    let sealed = p
        .server
        .seal([&b"early"[..]], &mut p.out, &mut p.scratch)
        .unwrap();
    assert_eq!(sealed.plaintext, 0);
    assert!(sealed.written > 0, "the server's flight goes out instead");
    let wire = p.out[..sealed.written].to_vec();
    p.client_reads(&wire).unwrap();
    p.handshake().unwrap();
}

#[test]
fn client_certificates_required_and_optional() {
    let pki = Pki::new();
    let ca = pki.ca.clone();
    for version in [TLS13, TLS12] {
        let required = config_for(&pki, |o| o.client_ca = Some(ca.clone()));
        let optional = config_for(&pki, |o| {
            o.client_ca = Some(ca.clone());
            o.client_auth = ClientAuth::Optional;
        });
        let trusted = || Some(pki.client_identity("alice"));
        let cases = [
            (&required, trusted(), Ok(())),
            (&required, None, Err("client_cert_refused".to_owned())),
            (
                &required,
                Some(foreign_identity()),
                Err("client_cert_refused".to_owned()),
            ),
            (&optional, trusted(), Ok(())),
            (&optional, None, Ok(())),
            (
                &optional,
                Some(foreign_identity()),
                Err("client_cert_refused".to_owned()),
            ),
        ];
        for (i, (server, identity, want)) in cases.into_iter().enumerate() {
            let presented = identity.is_some();
            let mut p = Pair::new(server.clone(), pki.client_config_with(&[version], identity));
            // Odd cases in small pieces: the client's certificate flight spans many calls.
            p.chunk = if i % 2 == 1 { 5 } else { usize::MAX };
            let got = p.handshake();
            // On refusal the server's failure is what counts (the client may still be waiting).
            let got = match (got, p.server.failure()) {
                (_, Some(f)) => Err(f.name().to_owned()),
                (r, None) => r,
            };
            assert_eq!(got, want, "{version:?} case {i}");
            if want.is_ok() {
                assert_eq!(p.server.peer_certificates().is_some(), presented);
            } else {
                assert!(
                    matches!(p.client_error, Some(rustls::Error::AlertReceived(_))),
                    "{version:?} case {i}: the client got an alert: {:?}",
                    p.client_error
                );
            }
        }
    }
}

#[test]
fn garbage_gets_a_fatal_alert_then_nothing() {
    let pki = Pki::new();
    let server = server_config(&pki.options());
    // A plain HTTP request on the TLS port.
    let mut s = Session::new(server.clone()).unwrap();
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(
        s.handle_ciphertext(&mut input, |_| {}),
        Err(Failure::BadRecord)
    );
    let mut out = vec![0u8; 64];
    let n = s.poll_transmit(&mut out);
    // An unencrypted fatal alert record: type 21, length 2, level fatal (2).
    assert!(n >= 7, "{:?}", &out[..n]);
    assert_eq!(
        (out[0], out[3], out[4], out[5]),
        (21, 0, 2, 2),
        "{:?}",
        &out[..n]
    );
    assert_eq!(s.failure(), Some(Failure::BadRecord));
    assert_eq!(
        s.handle_ciphertext(&mut [1, 2, 3], |_| {}),
        Err(Failure::BadRecord)
    );
    assert!(!s.wants_transmit(), "one alert only");
    // A tampered record after the handshake: bad_record_mac, encrypted, to a client that
    // reports it.
    for version in [TLS13, TLS12] {
        let mut p = Pair::new(server.clone(), pki.client_config(&[version]));
        p.handshake().unwrap();
        p.client.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        let last = wire.len() - 1;
        wire[last] ^= 0x55;
        assert_eq!(p.feed(&mut wire), Err(Failure::BadRecord));
        let err = p.server_to_client().unwrap_err();
        assert_eq!(
            err,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
            "{version:?}"
        );
    }
}

#[test]
fn refusals_are_classified() {
    let pki = Pki::new();
    let strict = config_for(&pki, |o| o.min_version = TlsVersion::Tls13);
    let mut p = Pair::new(strict, pki.client_config(&[TLS12]));
    assert_eq!(p.handshake(), Err("unsupported_version".to_owned()));
    let server = server_config(&pki.options());
    let mut h2_only = pki.client_config(&[]);
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let mut p = Pair::new(server.clone(), h2_only);
    assert_eq!(p.handshake(), Err("no_shared_alpn".to_owned()));
    let mut no_alpn = pki.client_config(&[]);
    no_alpn.alpn_protocols.clear();
    let mut p = Pair::new(server.clone(), no_alpn);
    p.handshake().unwrap();
    assert_eq!(p.server.alpn(), None, "a client without ALPN is served");
    // A TLS 1.2 client offering only RSA suites, to an ECDSA certificate.
    let mut rsa_only = rustls::crypto::ring::default_provider();
    rsa_only.cipher_suites =
        vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
    let client = ClientConfig::builder_with_provider(Arc::new(rsa_only))
        .with_protocol_versions(&[TLS12])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            roots
        })
        .with_no_client_auth();
    let mut p = Pair::new(server.clone(), client);
    assert_eq!(p.handshake(), Err("no_shared_cipher".to_owned()));
    // A client that does not trust our CA refuses us with an alert.
    let stranger = Pki::new();
    let mut p = Pair::new(server, stranger.client_config(&[]));
    assert!(p.handshake().is_err());
    let _ = p.client_to_server();
    assert_eq!(p.server.failure(), Some(Failure::PeerAlert));
}

#[test]
fn close_notify_both_ways() {
    let pki = Pki::new();
    let mut p = Pair::new(server_config(&pki.options()), pki.client_config(&[]));
    p.handshake().unwrap();
    p.client.send_close_notify();
    p.client_to_server().unwrap();
    assert_eq!(p.peer_closed, 1);
    assert!(p.server.peer_closed());
    // Half-closed: the server may still send, then closes.
    p.seal_all(&[b"bye".to_vec()], FULL_RECORD);
    assert_eq!(p.client_plaintext(), b"bye");
    p.server.close();
    assert!(p.server.wants_transmit());
    p.server_to_client().unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        p.client.reader().read_to_end(&mut rest).unwrap(),
        0,
        "clean EOF"
    );
    // Nothing is sealed after close.
    let sealed = p
        .server
        .seal([&b"late"[..]], &mut p.out, &mut p.scratch)
        .unwrap();
    assert_eq!(sealed.plaintext, 0);
}

#[test]
fn session_tickets_resume_on_tls13_and_tls12() {
    let pki = Pki::new();
    let on = server_config(&pki.options());
    let off = config_for(&pki, |o| o.tickets = Tickets::Off);
    for version in [TLS13, TLS12] {
        for (server, resumes) in [(&on, true), (&off, false)] {
            let client = Arc::new(pki.client_config(&[version]));
            let mut first = Pair::shared(server.clone(), client.clone());
            first.handshake().unwrap();
            assert!(!first.server.resumed());
            let mut second = Pair::shared(server.clone(), client);
            second.handshake().unwrap();
            assert_eq!(second.server.resumed(), resumes, "{version:?}");
            // What the core counts when a handshake completes.
            let stats = TlsStats::default();
            stats.opened(&first.server);
            stats.opened(&second.server);
            let snap = stats.snapshot();
            assert_eq!(snap.handshakes, 2);
            assert_eq!(snap.resumed, u64::from(resumes));
            assert_eq!(snap.tls12, if version == TLS12 { 2 } else { 0 });
        }
    }
}

#[test]
fn reload_swaps_the_config_and_live_sessions_keep_working() {
    let pki = Pki::new();
    let context = TlsContext::start(pki.options()).unwrap();
    let mut shard = context.shard_config();
    let first = shard.current().clone();
    assert!(
        Arc::ptr_eq(&first, shard.current()),
        "unchanged without a reload"
    );
    let mut live = Pair::new(first.clone(), pki.client_config(&[]));
    live.handshake().unwrap();
    let old_leaf = pki.leaf_der.clone();
    // New certificate and key on disk, then the reload.
    let pki = pki.reissue(LeafKey::EcdsaP256);
    context.reload().unwrap();
    let second = shard.current().clone();
    assert!(
        !Arc::ptr_eq(&first, &second),
        "the shard picks up the new config"
    );
    let mut fresh = Pair::new(second.clone(), pki.client_config(&[]));
    fresh.handshake().unwrap();
    assert_eq!(fresh.client.peer_certificates().unwrap()[0], pki.leaf_der);
    assert_ne!(pki.leaf_der, old_leaf);
    // The session started before the reload still works both ways.
    live.client.writer().write_all(b"still here").unwrap();
    live.client_to_server().unwrap();
    assert_eq!(live.plain, b"still here");
    live.seal_all(&[b"and so am I".to_vec()], FULL_RECORD);
    assert_eq!(live.client_plaintext(), b"and so am I");
    assert_eq!(live.client.peer_certificates().unwrap()[0], old_leaf);
    // A bad key keeps the current config, and says why.
    std::fs::write(&pki.key, "not a key").unwrap();
    let err = context.reload().unwrap_err().to_string();
    assert!(
        err.contains("tls_key") && err.contains("PRIVATE KEY"),
        "{err}"
    );
    // A key of another certificate too.
    let other = Pki::new();
    std::fs::copy(&other.key, &pki.key).unwrap();
    let err = context.reload().unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(
        Arc::ptr_eq(&second, shard.current()),
        "failed reloads change nothing"
    );
    let stats = context.reload_stats();
    assert_eq!((stats.reloads, stats.reload_failures), (1, 2));
    // The old session is unaffected by failed reloads as well.
    live.seal_all(&[b"!".to_vec()], FULL_RECORD);
    assert_eq!(live.client_plaintext(), b"!");
}

#[test]
fn start_fails_clearly_on_unreadable_or_mismatched_material() {
    let pki = Pki::new();
    let err = |options| match TlsContext::start(options) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started"),
    };
    let mut o = pki.options();
    o.cert = pki.dir.0.join("missing.pem");
    let e = err(o);
    assert!(
        e.contains("tls_cert") && e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    let mut o = pki.options();
    o.key = pki.cert.clone();
    let e = err(o);
    assert!(e.contains("tls_key") && e.contains("no PRIVATE KEY"), "{e}");
    let mut o = pki.options();
    o.cert = pki.key.clone();
    let e = err(o);
    assert!(
        e.contains("no CERTIFICATE") || e.contains("no PEM section"),
        "{e}"
    );
    let other = Pki::new();
    let mut o = pki.options();
    o.key = other.key.clone();
    let e = err(o);
    assert!(
        e.contains("does not match the leaf certificate's public key"),
        "{e}"
    );
    assert!(matches!(
        TlsContext::start({
            let mut o = pki.options();
            o.client_ca = Some(pki.key.clone());
            o
        }),
        Err(SetupError::File {
            option: "tls_client_ca",
            ..
        })
    ));
}

#[test]
fn rsa_and_ec_keys_in_every_encoding_load_and_serve() {
    for kind in [
        LeafKey::EcdsaP256,
        LeafKey::EcdsaP256Sec1,
        LeafKey::Rsa2048,
        LeafKey::Rsa2048Pkcs1,
    ] {
        let pki = Pki::with_key(kind);
        let server = server_config(&pki.options());
        for version in [TLS13, TLS12] {
            let mut p = Pair::new(server.clone(), pki.client_config(&[version]));
            p.handshake()
                .unwrap_or_else(|e| panic!("{kind:?} {version:?}: {e}"));
        }
    }
}

/// xorshift64*: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mutated and truncated client flights, in random pieces, before and after the handshake and
/// with client certificates: the session fails or waits, never panics, and every call after a
/// failure stays safe (`poll_transmit`, `seal`, `close`, more input).
#[test]
fn hostile_input_never_panics() {
    let pki = Pki::new();
    let ca = pki.ca.clone();
    let plain = server_config(&pki.options());
    let mtls = config_for(&pki, |o| o.client_ca = Some(ca.clone()));
    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let mut failures = std::collections::HashSet::new();
    for round in 0..600 {
        let (server, identity) = if round % 3 == 0 {
            (mtls.clone(), Some(pki.client_identity("alice")))
        } else {
            (plain.clone(), None)
        };
        let version = if round % 2 == 0 { TLS13 } else { TLS12 };
        let mut p = Pair::new(server, pki.client_config_with(&[version], identity));
        // A genuine flight to mutate: the ClientHello, or (every other round) the client's
        // second flight, or application data after the handshake.
        let stage = round % 4;
        if stage >= 1 {
            p.client_to_server().unwrap();
            p.server_to_client().unwrap();
        }
        if stage == 3 {
            let _ = p.handshake();
            p.client
                .writer()
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap();
        }
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        if wire.is_empty() {
            wire = b"\x16\x03\x01\x00\x05hello".to_vec();
        }
        for _ in 0..1 + noise.below(4) {
            let at = noise.below(wire.len());
            wire[at] ^= 1 << noise.below(8);
        }
        if noise.below(4) == 0 {
            let keep = noise.below(wire.len());
            wire.truncate(keep.max(1));
        }
        let mut rest = &mut wire[..];
        while !rest.is_empty() {
            let n = 1 + noise.below(rest.len().min(300));
            let (piece, tail) = rest.split_at_mut(n);
            if let Err(f) = p.server.handle_ciphertext(piece, |_| {}) {
                failures.insert(f.name());
            }
            rest = tail;
        }
        let mut out = vec![0u8; FULL_RECORD];
        let mut scratch = Vec::new();
        let _ = p.server.poll_transmit(&mut out);
        let _ = p.server.seal([&b"frame"[..]], &mut out, &mut scratch);
        p.server.close();
        let _ = p.server.poll_transmit(&mut out);
        let _ = p
            .server
            .handle_ciphertext(&mut [0x17, 3, 3, 0, 1, 0], |_| {});
    }
    assert!(failures.contains("bad_record"), "{failures:?}");
}
