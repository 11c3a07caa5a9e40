//! The generator's wss:// client end to end against the engine itself (started in this process
//! with a CA and leaf generated here, as `--tls-cert`/`--tls-key` would load them): idle,
//! connect (full, and resumed), fan-out, room (a split TLS session) and echo report what
//! happened, and a client that trusts another CA connects nowhere.

use crate::tests::run_cli;
use std::path::{Path, PathBuf};

/// A CA and a leaf for 127.0.0.1 it signed, as PEM files in `dir`: (ca, cert, key).
fn pki(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("bench test CA {tag}"));
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-cert.pem")),
        dir.join(format!("{tag}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The engine serving wss:// on an ephemeral loopback port, one shard.
fn engine(cert: &Path, key: &Path) -> shardcast::server::Server {
    use clap::Parser;
    let overrides = shardcast::config::Overrides::try_parse_from([
        "shardcast",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--shards",
        "1",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .unwrap();
    let config = overrides.resolve().unwrap();
    let options = config.tls_options().expect("TLS options");
    let tls = shardcast::tls::TlsContext::start(options).unwrap();
    shardcast::server::start_with_tls(config, Some(tls)).unwrap()
}

#[test]
fn scenarios_over_wss_against_the_engine() {
    let pid = std::process::id().to_string();
    let dir = std::env::temp_dir().join(format!("shardcast-bench-wss-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pki(&dir, "a");
    let (other_ca, _, _) = pki(&dir, "b");
    let server = engine(&cert, &key);
    let url = format!("wss://{}", server.local_addr());
    let ca = ca.to_str().unwrap();
    let common = [
        "--url",
        &url,
        "--ca",
        ca,
        "--cpus",
        "0",
        "--server-pid",
        &pid,
    ];
    let json = |name: &str| dir.join(name);

    let mut a = common.to_vec();
    a.extend(["--connections", "50", "--hold-ms", "50", "--warmup", "10"]);
    let i = run_cli(&[&["idle"], &a[..]].concat(), &json("idle.json"));
    assert_eq!(i["connected"].as_u64(), Some(50), "{i}");
    assert_eq!(i["failed"].as_u64(), Some(0), "{i}");

    // One handshake at a time: each one has read the server's tickets (sent before the 101)
    // when the next starts, so every handshake after the first resumes.
    let mut a = common.to_vec();
    a.extend(["--connections", "20", "--concurrency", "1", "--resume"]);
    let c = run_cli(&[&["connect"], &a[..]].concat(), &json("resumed.json"));
    assert_eq!(c["succeeded"].as_u64(), Some(20), "{c}");
    assert_eq!(c["tls_resumed"].as_u64(), Some(19), "{c}");
    let mut a = common.to_vec();
    a.extend(["--connections", "20", "--concurrency", "4"]);
    let c = run_cli(&[&["connect"], &a[..]].concat(), &json("full.json"));
    assert_eq!(c["succeeded"].as_u64(), Some(20), "{c}");
    assert_eq!(c["tls_resumed"].as_u64(), Some(0), "{c}");

    let mut a = common.to_vec();
    a.extend(["--subscribers", "20", "--rate", "200", "--duration", "0.3"]);
    a.extend(["--settle-ms", "50", "--topic", "f1"]);
    let f = run_cli(&[&["fanout"], &a[..]].concat(), &json("fanout.json"));
    assert!(f["messages_sent"].as_u64().unwrap() >= 10, "{f}");
    assert_eq!(f["deliveries"], f["expected_deliveries"], "{f}");
    assert_eq!(f["lost"].as_u64(), Some(0), "{f}");

    let mut a = common.to_vec();
    a.extend(["--clients", "10", "--messages", "5", "--settle-ms", "50"]);
    a.extend(["--topic", "r"]);
    let r = run_cli(&[&["room"], &a[..]].concat(), &json("room.json"));
    assert_eq!(r["deliveries"].as_u64(), Some(500), "{r}");
    assert_eq!(r["lost"].as_u64(), Some(0), "{r}");

    let mut a = common.to_vec();
    a.extend([
        "--connections",
        "4",
        "--in-flight",
        "2",
        "--duration",
        "0.3",
    ]);
    a.extend(["--settle-ms", "50"]);
    let e = run_cli(&[&["echo"], &a[..]].concat(), &json("echo.json"));
    assert_eq!(e["connected"].as_u64(), Some(4), "{e}");
    assert!(e["echoed"].as_u64().unwrap() > 0, "{e}");

    // Trusting another CA: the certificate is refused, nothing connects.
    let refused_json = json("refused.json");
    let argv = [
        "shardcast-bench",
        "connect",
        "--url",
        &url,
        "--ca",
        other_ca.to_str().unwrap(),
        "--cpus",
        "0",
        "--connections",
        "3",
        "--json",
        refused_json.to_str().unwrap(),
    ];
    let cli = <crate::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let crate::Scenario::Connect(args) = cli.scenario else {
        unreachable!("parsed as connect")
    };
    assert!(crate::connect::run(args).is_err());
    let refused: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refused_json).unwrap()).unwrap();
    assert_eq!(refused["failed"].as_u64(), Some(3), "{refused}");

    // wss:// without --ca is refused before connecting.
    let argv = [
        "shardcast-bench",
        "idle",
        "--url",
        &url,
        "--server-pid",
        &pid,
    ];
    let cli = <crate::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let crate::Scenario::Idle(args) = cli.scenario else {
        unreachable!("parsed as idle")
    };
    assert!(crate::idle::run(args).unwrap_err().contains("--ca"));
    server.shutdown_handle().trigger();
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
