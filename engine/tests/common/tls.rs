//! TLS test harness: key material generated at test time (never committed), clients nobody here
//! wrote — tungstenite with rustls, Python `websockets` with an `ssl` context, `openssl s_client`,
//! headless Chromium — and a tiny blocking driver of shardcast's TLS [`Session`] with a WebSocket
//! echo server on top of it (tungstenite's server role), so every tool is proven against our record
//! layer before the engine serves wss:// itself.
//!
//! Peers outside cargo come from `scripts/tls-peers.sh` (Python venv under target/tls-peers,
//! openssl); [`python`] runs it on first use, so `cargo test` alone works too.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::PublicKeyData;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use shardcast::tls::options::{ClientAuth, Tickets, TlsVersion};
use shardcast::tls::session::FULL_RECORD;
use shardcast::tls::{Failure, Session, TlsOptions};

use super::TIMEOUT;

/// The leaf key's algorithm and file encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKey {
    /// ECDSA P-256, PKCS#8 (`PRIVATE KEY`).
    EcdsaP256,
    /// ECDSA P-256, SEC1 (`EC PRIVATE KEY`).
    EcdsaP256Sec1,
    /// RSA-2048, PKCS#8.
    Rsa2048,
    /// RSA-2048, PKCS#1 (`RSA PRIVATE KEY`).
    Rsa2048Pkcs1,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardcast-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PKCS#8 PEM of a new key: ECDSA P-256 from rcgen, RSA-2048 from openssl (ring cannot generate
/// RSA keys).
fn new_key_pem(rsa: bool) -> String {
    if !rsa {
        return rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
    }
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl (scripts/tls-peers.sh installs it)");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).unwrap()
}

/// `pem` (PKCS#8) re-encoded as PKCS#1 or SEC1 by openssl.
fn traditional(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["pkey", "-traditional"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A CA and a server certificate for `localhost` and `127.0.0.1`, written to a temp dir as
/// `ca.pem`, `cert.pem` (leaf then CA) and `key.pem`.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub leaf_der: CertificateDer<'static>,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    leaf_spki: Vec<u8>,
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (params, key, cert)
}

impl Pki {
    /// ECDSA P-256 leaf, PKCS#8 key.
    pub fn new() -> Pki {
        Pki::with_key(LeafKey::EcdsaP256)
    }

    pub fn with_key(kind: LeafKey) -> Pki {
        let dir = TempDir::new("tls");
        let (ca_params, ca_key, ca_cert) = ca("shardcast test CA");
        let pki = Pki {
            ca: dir.0.join("ca.pem"),
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
            dir,
            ca_der: ca_cert.der().clone(),
            leaf_der: CertificateDer::from(Vec::new()),
            ca_params,
            ca_key,
            leaf_spki: Vec::new(),
        };
        std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
        pki.reissue(kind)
    }

    /// A new leaf (and key) from the same CA, written over `cert.pem` and `key.pem`.
    pub fn reissue(mut self, kind: LeafKey) -> Pki {
        let rsa = matches!(kind, LeafKey::Rsa2048 | LeafKey::Rsa2048Pkcs1);
        let pem = new_key_pem(rsa);
        let alg = if rsa {
            &rcgen::PKCS_RSA_SHA256
        } else {
            &rcgen::PKCS_ECDSA_P256_SHA256
        };
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, alg).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let ca_pem = std::fs::read_to_string(&self.ca).unwrap();
        std::fs::write(&self.cert, leaf.pem() + &ca_pem).unwrap();
        let key_file = match kind {
            LeafKey::EcdsaP256 | LeafKey::Rsa2048 => pem,
            LeafKey::EcdsaP256Sec1 | LeafKey::Rsa2048Pkcs1 => traditional(&pem),
        };
        std::fs::write(&self.key, key_file).unwrap();
        self.leaf_der = leaf.der().clone();
        self.leaf_spki = key.subject_public_key_info();
        self
    }

    /// TLS options for these files (TLS 1.2 minimum, tickets on, no client auth).
    pub fn options(&self) -> TlsOptions {
        TlsOptions {
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version: TlsVersion::Tls12,
            client_ca: None,
            client_auth: ClientAuth::Required,
            tickets: Tickets::On,
        }
    }

    /// The server's command-line flags for these files.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
    }

    /// A client certificate chain and key signed by this CA (ECDSA P-256, clientAuth).
    pub fn client_identity(
        &self,
        name: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        identity(&self.ca_params, &self.ca_key, name)
    }

    /// A client config trusting this CA, offering ALPN http/1.1, on `versions` (all when empty).
    pub fn client_config(&self, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
        self.client_config_with(versions, None)
    }

    pub fn client_config_with(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let versions = if versions.is_empty() {
            rustls::ALL_VERSIONS
        } else {
            versions
        };
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    /// base64(SHA-256(leaf SPKI)): what Chromium's `--ignore-certificate-errors-spki-list` takes.
    pub fn spki_sha256_base64(&self) -> String {
        use base64::Engine;
        let hash = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .unwrap()
            .common
            .hash_provider
            .hash(&self.leaf_spki);
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    }
}

/// A client certificate from another CA (for refusal tests).
pub fn foreign_identity() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (params, key, _) = ca("some other CA");
    identity(&params, &key, "stranger")
}

fn identity(
    ca_params: &rcgen::CertificateParams,
    ca_key: &rcgen::KeyPair,
    name: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::from_params(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (vec![cert.der().clone()], key)
}

/// A server configuration for `pki` built the way the engine builds it.
pub fn server_config(options: &TlsOptions) -> Arc<ServerConfig> {
    shardcast::tls::TlsContext::start(options.clone())
        .unwrap()
        .shard_config()
        .current()
        .clone()
}

/// Counters of what a [`SessionStream`] sealed, to check record batching.
#[derive(Debug, Default)]
pub struct SealCounts {
    pub records: AtomicUsize,
    pub plaintext: AtomicUsize,
    pub flushes: AtomicUsize,
}

/// A blocking driver of one [`Session`] over a `TcpStream`: `Read` yields plaintext, `Write`
/// queues frames and `flush` seals everything queued (as the engine's flush will).
pub struct SessionStream {
    pub tcp: TcpStream,
    pub session: Session,
    plain_in: Vec<u8>,
    queued: Vec<Vec<u8>>,
    out: Vec<u8>,
    scratch: Vec<u8>,
    pub counts: Arc<SealCounts>,
}

impl SessionStream {
    /// Accept a TLS session on `tcp` and run its handshake to completion.
    pub fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<SessionStream> {
        tcp.set_read_timeout(Some(TIMEOUT))?;
        let session = Session::new(config).map_err(failure)?;
        let mut s = SessionStream {
            tcp,
            session,
            plain_in: Vec::new(),
            queued: Vec::new(),
            out: vec![0; 4 * FULL_RECORD],
            scratch: Vec::new(),
            counts: Arc::default(),
        };
        while !s.session.is_open() {
            if s.read_tls()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in handshake",
                ));
            }
        }
        Ok(s)
    }

    fn transmit(&mut self) -> io::Result<()> {
        while self.session.wants_transmit() {
            let n = self.session.poll_transmit(&mut self.out);
            self.tcp.write_all(&self.out[..n])?;
        }
        Ok(())
    }

    /// One read from the socket through the session; returns the ciphertext bytes read.
    fn read_tls(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 4096];
        let n = self.tcp.read(&mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        let plain = &mut self.plain_in;
        let result = self
            .session
            .handle_ciphertext(&mut buf[..n], |p| plain.extend_from_slice(p));
        // The alert of a failure goes out before the error is reported.
        self.transmit()?;
        result.map_err(failure)?;
        Ok(n)
    }

    /// Queue `close_notify` and send it.
    pub fn close(&mut self) -> io::Result<()> {
        self.session.close();
        self.transmit()
    }
}

fn failure(f: Failure) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("tls: {}", f.name()))
}

impl Read for SessionStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.plain_in.is_empty() {
            if self.session.peer_closed() || self.read_tls()? == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain_in.len());
        buf[..n].copy_from_slice(&self.plain_in[..n]);
        self.plain_in.drain(..n);
        Ok(n)
    }
}

impl Write for SessionStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queued.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.counts.flushes.fetch_add(1, Ordering::Relaxed);
        // Advance the queue by the plaintext each seal consumed, as the engine's queue will.
        let mut head = 0;
        while !self.queued.is_empty() {
            let frames = std::iter::once(&self.queued[0][head..])
                .chain(self.queued[1..].iter().map(|f| &f[..]));
            let sealed = self
                .session
                .seal(frames, &mut self.out, &mut self.scratch)
                .map_err(failure)?;
            self.tcp.write_all(&self.out[..sealed.written])?;
            self.counts
                .records
                .fetch_add(sealed.records, Ordering::Relaxed);
            self.counts
                .plaintext
                .fetch_add(sealed.plaintext, Ordering::Relaxed);
            let mut left = sealed.plaintext;
            while left > 0 {
                let rest = self.queued[0].len() - head;
                if left >= rest {
                    left -= rest;
                    head = 0;
                    self.queued.remove(0);
                } else {
                    head += left;
                    left = 0;
                }
            }
            if sealed.written == 0 {
                return Err(io::Error::other("seal made no progress"));
            }
        }
        self.tcp.flush()
    }
}

/// A wss:// echo server on 127.0.0.1 built on [`SessionStream`] and tungstenite's server role:
/// every text or binary message comes back as is. Connections run on their own threads; the
/// server stops accepting when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Failures of sessions that did not complete, by reason name.
    pub failures: Arc<Mutex<Vec<String>>>,
    pub counts: Arc<SealCounts>,
}

impl EchoServer {
    pub fn start(config: Arc<ServerConfig>) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(SealCounts::default());
        {
            let (stop, failures, counts) = (stop.clone(), failures.clone(), counts.clone());
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(tcp) = tcp else { continue };
                    let (config, failures, counts) =
                        (config.clone(), failures.clone(), counts.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = echo(tcp, config, counts) {
                            failures.lock().unwrap().push(e.to_string());
                        }
                    });
                }
            });
        }
        EchoServer {
            addr,
            stop,
            failures,
            counts,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("wss://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn echo(tcp: TcpStream, config: Arc<ServerConfig>, counts: Arc<SealCounts>) -> io::Result<()> {
    let mut stream = SessionStream::accept(tcp, config)?;
    stream.counts = counts;
    let mut ws = tungstenite::accept(stream).map_err(|e| io::Error::other(e.to_string()))?;
    let other = |e: tungstenite::Error| io::Error::other(e.to_string());
    loop {
        match ws.read() {
            // `burst N SIZE`: N binary messages of SIZE bytes queued, then one flush (one seal).
            Ok(tungstenite::Message::Text(t)) if t.starts_with("burst ") => {
                let mut words = t.split(' ').skip(1).map(|w| w.parse::<usize>().unwrap());
                let (n, size) = (words.next().unwrap(), words.next().unwrap());
                for i in 0..n {
                    let body = vec![(i % 251) as u8; size];
                    ws.write(tungstenite::Message::binary(body))
                        .map_err(other)?;
                }
                ws.flush().map_err(other)?;
            }
            Ok(m) if m.is_text() || m.is_binary() => ws.send(m).map_err(other)?,
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                let _ = ws.get_mut().close();
                return Ok(());
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// A wss:// tungstenite client (rustls) trusting `client`'s roots.
pub fn tungstenite_wss(
    url: &str,
    addr: SocketAddr,
    client: ClientConfig,
) -> Result<
    tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    tungstenite::Error,
> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let connector = tungstenite::Connector::Rustls(Arc::new(client));
    match tungstenite::client_tls_with_config(url, tcp, None, Some(connector)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("interrupted"),
    }
}

/// The Python interpreter of the test venv (created by scripts/tls-peers.sh on first use).
pub fn python() -> PathBuf {
    static SETUP: std::sync::Once = std::sync::Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    SETUP.call_once(|| {
        let status = Command::new("bash")
            .arg(root.join("scripts/tls-peers.sh"))
            .status()
            .expect("run scripts/tls-peers.sh");
        assert!(status.success(), "scripts/tls-peers.sh failed");
    });
    root.join("target/tls-peers/venv/bin/python")
}

/// Output of a peer process, killed after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    let end = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Python `websockets`: connect to `url` with an `ssl` context trusting `ca`, send `message`,
/// print `tls=<version>` and `echo=<reply>`. Returns stdout, or stdout+stderr on failure.
pub fn python_websockets(url: &str, ca: &Path, message: &str) -> Result<String, String> {
    const SCRIPT: &str = r#"
import asyncio, ssl, sys
from websockets.asyncio.client import connect

async def main(url, ca, message):
    ctx = ssl.create_default_context(cafile=ca)
    async with connect(url, ssl=ctx, open_timeout=10, close_timeout=5) as ws:
        print("tls=" + ws.transport.get_extra_info("ssl_object").version())
        await ws.send(message)
        print("echo=" + await asyncio.wait_for(ws.recv(), 10))

asyncio.run(main(*sys.argv[1:4]))
"#;
    let mut cmd = Command::new(python());
    cmd.args(["-c", SCRIPT, url])
        .arg(ca)
        .arg(message)
        .stdin(Stdio::null());
    let out = run_bounded(cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stdout + &String::from_utf8_lossy(&out.stderr))
    }
}

/// `openssl s_client` against `addr` verifying with `ca` (SNI localhost, ALPN http/1.1, plus
/// `extra` such as `-tls1_2`): sends a WebSocket upgrade for `path` and returns everything it
/// printed once the server answered (or after 20 s).
pub fn openssl_s_client(addr: SocketAddr, ca: &Path, path: &str, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-alpn", "http/1.1"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/tls-peers.sh installs it)");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(request.as_bytes());
    let text = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (text, mut stdout) = (text.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end
        && !text.lock().unwrap().contains("\r\n\r\n")
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let stdout = text.lock().unwrap().clone();
    stdout + &String::from_utf8_lossy(&out.stderr)
}

/// `openssl s_client` upgrades `/echo` on TLS 1.3 and on TLS 1.2 (certificate verified, ALPN
/// `http/1.1`) and gets no upgrade on TLS 1.1.
pub fn openssl_upgrades_on_tls13_and_tls12_only(addr: SocketAddr, ca: &Path) {
    for (flag, protocol) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let out = openssl_s_client(addr, ca, "/echo", &[flag]);
        assert!(out.contains("Verify return code: 0 (ok)"), "{flag}: {out}");
        assert!(out.contains(protocol), "{flag}: {out}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{flag}: {out}");
        assert!(
            out.contains("HTTP/1.1 101 Switching Protocols"),
            "{flag}: {out}"
        );
    }
    let out = openssl_s_client(addr, ca, "/echo", &["-tls1_1"]);
    assert!(!out.contains("101 Switching Protocols"), "{out}");
}

/// Headless Chromium loads a page from a local http:// server that opens `url` (wss://), trusting
/// only `pki`'s leaf (by its SPKI hash), sends `message` and POSTs what happened back to the page
/// server: `echo:<reply>`, `error`, or `closed:<code>`; `pending` if nothing came within 30 s.
pub fn chromium_wss(bin: &Path, pki: &Pki, url: &str, message: &str) -> String {
    let page = format!(
        "<html><body><script>\
         const report = r => fetch('/result', {{method: 'POST', body: r}});\
         let done = false;\
         const ws = new WebSocket({url:?});\
         ws.onopen = () => ws.send({message:?});\
         ws.onmessage = e => {{ done = true; report('echo:' + e.data); ws.close(1000); }};\
         ws.onerror = () => {{ if (!done) {{ done = true; report('error'); }} }};\
         ws.onclose = e => {{ if (!done) {{ done = true; report('closed:' + e.code); }} }};\
         </script></body></html>"
    );
    let pages = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_url = format!("http://{}/", pages.local_addr().unwrap());
    let result = Arc::new(Mutex::new(None::<String>));
    {
        let result = result.clone();
        std::thread::spawn(move || serve_page(pages, &page, &result));
    }
    let profile = TempDir::new("chromium");
    let mut child = super::headless_chromium(bin, &profile.0)
        .arg(format!(
            "--ignore-certificate-errors-spki-list={}",
            pki.spki_sha256_base64()
        ))
        .arg(&page_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let end = Instant::now() + Duration::from_secs(30);
    while result.lock().unwrap().is_none()
        && Instant::now() < end
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let got = result.lock().unwrap().clone();
    got.unwrap_or_else(|| "pending".to_owned())
}

/// A minimal HTTP/1.1 server for [`chromium_wss`]: `GET /` gets `page`, `POST /result` stores its
/// body in `result`. Runs until the result arrives (or 60 s pass).
fn serve_page(listener: TcpListener, page: &str, result: &Mutex<Option<String>>) {
    let end = Instant::now() + Duration::from_secs(60);
    listener.set_nonblocking(true).unwrap();
    while result.lock().unwrap().is_none() && Instant::now() < end {
        let mut tcp = match listener.accept() {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let reply = if head.starts_with("GET / ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            )
        } else if head.starts_with("POST /result ") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = tcp.read_exact(&mut body);
            *result.lock().unwrap() = Some(String::from_utf8_lossy(&body).into_owned());
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = tcp.write_all(reply.as_bytes());
    }
}

/// Server name for rustls clients.
pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}
