//! `shardcast --preflight`: one report line per check, exit status 1 only when a hard
//! requirement fails.

use std::process::{Command, Output};

fn preflight(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.arg("--preflight").args(args);
    cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run shardcast")
}

/// `--preflight` for one shard with `max_connections` on `driver`, plus `extra` flags.
fn one_shard(max_connections: &str, driver: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "--shards",
        "1",
        "--max-connections",
        max_connections,
        "--driver",
        driver,
    ];
    args.extend_from_slice(extra);
    preflight(&args, env)
}

/// (level, name, rest) of every report line, asserting the line format.
fn lines(out: &Output) -> Vec<(String, String, String)> {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    text.lines()
        .map(|l| {
            let (level, rest) = l.split_once(' ').unwrap();
            assert!(matches!(level, "OK" | "WARN" | "FAIL"), "bad level: {l}");
            let rest = rest.trim_start();
            let (name, rest) = rest.split_once(' ').unwrap();
            let rest = rest.trim_start();
            assert!(rest.starts_with("value="), "{l}");
            assert!(rest.contains("; required="), "{l}");
            assert!(rest.contains("; fix="), "{l}");
            (level.to_owned(), name.to_owned(), rest.to_owned())
        })
        .collect()
}

fn find<'a>(report: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    report.iter().find(|l| l.1 == name).expect(name)
}

#[test]
fn small_config_on_epoll_passes() {
    let out = one_shard("100", "epoll", &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = lines(&out);
    let names: Vec<_> = report.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        names,
        ["nofile", "somaxconn", "memlock", "driver", "memory"]
    );
    for name in ["nofile", "memlock", "driver", "memory"] {
        let (level, _, rest) = find(&report, name);
        assert_eq!(level, "OK", "{name}: {rest}");
        assert!(rest.ends_with("; fix=-"), "{rest}");
    }
    assert!(find(&report, "driver")
        .2
        .starts_with("value=epoll (configured)"));
}

#[test]
fn shortfalls_warn_with_their_fix() {
    // More descriptors than any test host allows, and a backlog above any somaxconn.
    let out = one_shard(
        "4000000000",
        "epoll",
        &["--listen-backlog", "4000000000"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "warnings alone do not fail");
    let report = lines(&out);
    let (level, _, rest) = find(&report, "nofile");
    assert_eq!(level, "WARN");
    assert!(rest.contains("LimitNOFILE=4000000072"), "{rest}");
    let (level, _, rest) = find(&report, "somaxconn");
    assert_eq!(level, "WARN");
    assert!(
        rest.contains("fix=sudo scripts/tune apply --profile c1m"),
        "{rest}"
    );
    let (level, _, rest) = find(&report, "memory");
    assert_eq!(level, "WARN");
    assert!(rest.contains("lower --max-connections to "), "{rest}");
}

#[test]
fn forced_uring_without_io_uring_fails() {
    let out = one_shard("100", "uring", &[], &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = lines(&out);
    let (level, _, rest) = find(&report, "driver");
    assert_eq!(level, "FAIL");
    assert!(rest.contains("MONOIO_FORCE_LEGACY_DRIVER"), "{rest}");
    assert!(rest.contains("--driver epoll"), "{rest}");
}
