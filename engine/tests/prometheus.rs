//! /metrics as Prometheus and Grafana consume it: `promtool check metrics` (Prometheus's own
//! linter) finds nothing, and every PromQL query of the shipped Grafana dashboard
//! (`deploy/grafana/shardcast.json`) names only series, and labels, a running server exports.
//! promtool comes from Debian's `prometheus` package (scripts/fetch-promtool.sh, run by
//! scripts/test.sh); without it the lint test fails, it never skips.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn promtool() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .into_iter()
        .chain([target.join("tools/promtool")])
        .chain(on_path.into_iter().map(|d| d.join("promtool")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (PROMTOOL, target/tools/promtool or PATH): run \
                 scripts/fetch-promtool.sh (scripts/test.sh does)"
            )
        })
}

/// A server with every family present: two shards, the NATS bridge on (pointed at a closed
/// port, so its series exist while it retries), and some traffic of every kind: deliveries
/// across shards, a refusal, an HTTP publish.
fn busy_server() -> (Server, String) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nats = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start(&["--nats-url", &nats, "--nats-reconnect-max-ms", "1000"]);
    let adm = server.admin.unwrap();
    let mut clients = fan_out(&server, 4, 5, 1);
    assert_eq!(status(&server.http(b"GET /nowhere HTTP/1.1\r\n\r\n")), 404);
    assert_eq!(server.post("t", "text/plain", b"x", ""), 204);
    for c in &mut clients.0 {
        assert_eq!(next_text(c), "x");
    }
    // Histograms and depth samples are published by the shards' ticks; wait for them.
    stats_until(adm, |s| {
        s["totals"]["queue_depth_connections"].as_u64() > Some(0)
            && latency_count(s, "broadcast") == 24
    });
    let (code, text) = admin(adm, "GET", "/metrics");
    assert_eq!(code, 200);
    (server, text)
}

#[test]
fn promtool_check_metrics_finds_nothing() {
    let (_server, text) = busy_server();
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool: {said}");
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
        "shardcast_bridge_connect_failures_total",
    ] {
        assert!(text.contains(&format!("\n{family} ")), "{family} missing");
    }
}

/// Series names in the exposition text, each with the label names it carries.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let head = line.rsplit_once(' ').unwrap().0;
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let entry = series.entry(name.to_owned()).or_default();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            entry.insert(pair.split_once('=').unwrap().0.to_owned());
        }
    }
    series
}

/// A metric a PromQL expression selects, with the label names its matcher uses.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other words that are never metric names.
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "Inf", "NaN", "inf", "nan",
];

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The selectors of a PromQL expression and the label names in its `by`/`without`/`on`/
/// `ignoring` lists. A small lexer, enough for dashboards: strings, `$variables`, `[ranges]`,
/// numbers, functions and aggregations (an identifier followed by `(`) and keywords are not
/// metric names; `{...}` after a metric is its matcher.
fn parse_promql(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let (mut selectors, mut grouping) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'$' {
            i += 1;
            if i < b.len() && b[i] == b'{' {
                while i < b.len() && b[i] != b'}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit())
        {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            // A duration's units (5m, 1h30m) belong to the number.
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word) && next < b.len() && b[next] == b'(' {
                let close = next + expr[next..].find(')').expect("closed label list");
                grouping.extend(
                    expr[next + 1..close]
                        .split(',')
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty()),
                );
                i = close + 1;
            } else if KEYWORDS.contains(&word)
                || LABEL_LISTS.contains(&word)
                || (next < b.len() && b[next] == b'(')
                || (AGGREGATIONS.contains(&word)
                    && (expr[next..].starts_with("by") || expr[next..].starts_with("without")))
            {
                // A keyword, or a function / aggregation call.
            } else {
                let mut labels = Vec::new();
                if next < b.len() && b[next] == b'{' {
                    // name op "value", ...: names are what precedes each operator.
                    i = next + 1;
                    loop {
                        i = skip_ws(i);
                        if i >= b.len() || b[i] == b'}' {
                            break;
                        }
                        let start = i;
                        while i < b.len() && ident(b[i]) {
                            i += 1;
                        }
                        labels.push(expr[start..i].to_owned());
                        while i < b.len() && b[i] != b'"' && b[i] != b'\'' && b[i] != b'`' {
                            i += 1;
                        }
                        i = skip_string(b, i);
                        i = skip_ws(i);
                        if i < b.len() && b[i] == b',' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                selectors.push(Selector {
                    metric: word.to_owned(),
                    labels,
                });
            }
        } else {
            i += 1;
        }
    }
    (selectors, grouping)
}

/// The index after the string literal starting at `i` (its quote), escapes included.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    let Some(&quote) = b.get(i) else {
        return i;
    };
    i += 1;
    while i < b.len() && b[i] != quote {
        i += if b[i] == b'\\' && quote != b'`' { 2 } else { 1 };
    }
    i + 1
}

#[test]
fn the_lexer_finds_metrics_not_functions_labels_or_variables() {
    let (sel, by) = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, shard) (rate(a_bucket{instance=~"$instance",x!="}"}[$__rate_interval]))) + on(instance) b / 1e-3 offset 5m and bool c_total"#,
    );
    let names: Vec<_> = sel.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "c_total"]);
    assert_eq!(sel[0].labels, ["instance", "x"]);
    assert_eq!(by, ["le", "shard", "instance"]);
}

/// Every `expr` in the dashboard JSON, and the metrics its `label_values(...)` variables use.
fn dashboard_queries(
    v: &serde_json::Value,
    exprs: &mut Vec<String>,
    label_values: &mut Vec<String>,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => exprs.push(e.clone()),
                    ("definition", serde_json::Value::String(q)) => {
                        let inner = q
                            .strip_prefix("label_values(")
                            .and_then(|r| r.strip_suffix(')'))
                            .unwrap_or_else(|| panic!("unexpected variable query {q}"));
                        let (metric, _) =
                            inner.split_once(',').expect("label_values(metric, label)");
                        label_values.push(metric.trim().to_owned());
                    }
                    _ => dashboard_queries(x, exprs, label_values),
                }
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                dashboard_queries(x, exprs, label_values);
            }
        }
        _ => {}
    }
}

#[test]
fn every_grafana_query_names_an_exported_series() {
    let path = workspace().join("deploy/grafana/shardcast.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard is JSON");
    let (mut exprs, mut label_values) = (Vec::new(), Vec::new());
    dashboard_queries(&dashboard, &mut exprs, &mut label_values);
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    let (_server, text) = busy_server();
    let series = exported(&text);
    // Labels Prometheus adds to every series it scrapes.
    let target_labels = ["instance", "job"];
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let (selectors, grouping) = parse_promql(expr);
        assert!(!selectors.is_empty(), "no metric in {expr}");
        for s in &selectors {
            let labels = series
                .get(&s.metric)
                .unwrap_or_else(|| panic!("{} (in {expr}) is not exported", s.metric));
            for l in &s.labels {
                assert!(
                    labels.contains(l) || target_labels.contains(&l.as_str()),
                    "{}{{{l}}} (in {expr}): no such label",
                    s.metric
                );
            }
            used.insert(s.metric.clone());
        }
        for l in &grouping {
            let known = target_labels.contains(&l.as_str())
                || selectors.iter().any(|s| series[&s.metric].contains(l));
            assert!(
                known,
                "grouping label {l} (in {expr}) is on none of its series"
            );
        }
    }
    for m in &label_values {
        assert!(series.contains_key(m), "variable over {m}: not exported");
    }
    // The dashboard covers every histogram family and the process metrics.
    for family in [
        "shardcast_broadcast_latency_seconds_bucket",
        "shardcast_handshake_latency_seconds_bucket",
        "shardcast_ring_transit_latency_seconds_bucket",
        "shardcast_eviction_stall_seconds_bucket",
        "shardcast_queue_depth_messages_bucket",
        "shardcast_queue_depth_bytes_bucket",
        "shardcast_buffer_fill_ratio",
        "shardcast_slow_clients",
        "shardcast_connections_closed_total",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
}
