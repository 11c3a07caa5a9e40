//! The shipped example configuration (`deploy/shardcast.toml`, installed as
//! /etc/shardcast/shardcast.toml) cannot drift from the binary: it lists every option exactly
//! once, each with a comment, each commented out at its real default (checked against
//! `--print-config`), and it reads back both as shipped and with every line uncommented.
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use common::*;

/// Options without a fixed default (host-derived, or none): the example shows a sample value,
/// marked "(example)" in its comment.
const EXAMPLES: &[&str] = &[
    "shards",
    "max_connections",
    "max_connections_per_shard",
    "publish_token",
    "memory_limit",
    "histogram_log",
    "nats_url",
    "topic_policy",
    "max_subscriptions",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "listen_plain",
    "jwt_secret",
    "jwt_secret_file",
    "jwt_issuer",
    "jwt_audience",
];

/// Examples that stay commented out when the test uncomments every other line: they exclude
/// another example (`jwt_secret_file` or `jwt_secret`) and name a file that must exist.
const NOT_TOGETHER: &[&str] = &["jwt_secret_file"];

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/shardcast.toml");
    std::fs::read_to_string(path).expect("deploy/shardcast.toml")
}

/// Every configuration option, by its TOML key.
fn options() -> BTreeSet<String> {
    shardcast::config::Overrides::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| {
            !matches!(
                *l,
                "config" | "print-config" | "preflight" | "help" | "version"
            )
        })
        .map(|l| l.replace('-', "_"))
        .collect()
}

/// A commented-out setting: `#key = value` (prose comments are `# ...`).
fn setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    if rest.starts_with("[[") {
        return Some(rest.trim_start_matches("[[").trim_end_matches("]]"));
    }
    let (key, _) = rest.split_once(" = ")?;
    key.chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')
        .then_some(key)
}

fn print_config(extra: &[&str]) -> toml::Table {
    let mut args = vec!["--print-config"];
    args.extend_from_slice(extra);
    let out = run_to_exit(&args, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.parse().expect("--print-config prints TOML")
}

#[test]
fn every_option_once_with_a_comment_and_its_default() {
    let text = example();
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = BTreeSet::new();
    let mut examples = BTreeSet::new();
    let mut in_tables = false;
    for (i, line) in lines.iter().enumerate() {
        let Some(key) = setting(line) else { continue };
        if line.starts_with("#[[") {
            in_tables = true;
        } else if in_tables {
            continue; // keys of an example table
        }
        // Its comment: the prose lines right above it.
        let comment: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("# ") || l.starts_with("#["))
            .filter(|l| l.starts_with("# "))
            .copied()
            .collect();
        if !(line.starts_with("#[[") && keys.contains(key)) {
            assert!(!comment.is_empty(), "{key} has no comment");
            assert!(keys.insert(key.to_owned()), "{key} listed twice");
        }
        if comment.iter().any(|l| l.contains("(example)")) {
            examples.insert(key.to_owned());
        }
    }
    assert_eq!(keys, options(), "the example and the options differ");
    let want: BTreeSet<String> = EXAMPLES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        examples, want,
        "which options show an example instead of a default"
    );

    let dir = std::env::temp_dir().join(format!("shardcast-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // As shipped, everything is commented out: the defaults.
    let shipped = dir.join("shipped.toml");
    std::fs::write(&shipped, &text).unwrap();
    let defaults = print_config(&[]);
    assert_eq!(
        print_config(&["--config", shipped.to_str().unwrap()]),
        defaults
    );
    // Uncommented, every fixed default equals the binary's, and every example value is valid.
    let uncommented: String = lines
        .iter()
        .map(|l| match setting(l) {
            Some(key) if NOT_TOGETHER.contains(&key) => l,
            Some(_) => &l[1..],
            None => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all = dir.join("uncommented.toml");
    std::fs::write(&all, uncommented).unwrap();
    let set = print_config(&["--config", all.to_str().unwrap()]);
    for key in options() {
        if NOT_TOGETHER.contains(&key.as_str()) {
            continue;
        }
        if EXAMPLES.contains(&key.as_str()) {
            assert!(set.contains_key(&key), "{key} not applied");
        } else {
            assert_eq!(
                set.get(&key),
                defaults.get(&key),
                "{key}: example != default"
            );
        }
    }
    assert_eq!(set["topic_policy"].as_array().map(Vec::len), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
