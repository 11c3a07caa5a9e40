//! `incident`: the slow-client incident replayed at this host's scale. Starts the shardcast
//! server itself once per configuration, runs `slow` against it, and compares: (a) memory
//! ceiling + evict, (b) conflate, (c) high-water marks and ceiling effectively off, and a control
//! run without slow clients for the fast subscribers' p99, and the server's defaults with the
//! slow clients (what any build does, with or without the back-pressure flags).

use crate::common::CommonArgs;
use crate::report;
use crate::slow::{self, SlowArgs};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `incident` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct IncidentArgs {
    /// The shardcast binary.
    #[arg(long, default_value = "target/release/shardcast")]
    server: PathBuf,
    /// CPUs for the server (`taskset -c`); default: inherit the generator's affinity.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Extra server argument for every run (repeat for several), e.g. `--server-arg=--shards=1`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// CPUs for the generator threads.
    #[arg(long)]
    cpus: Option<String>,
    /// Subscribers in all.
    #[arg(long, default_value_t = 2000)]
    subscribers: usize,
    /// Share of subscribers that never read.
    #[arg(long, default_value_t = 0.01)]
    slow_fraction: f64,
    /// Message size, bytes.
    #[arg(long, default_value_t = 65536)]
    size: usize,
    /// Publish rate, messages/s (the issue: about half the host's maximum fan-out bandwidth).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Publishing time per run, seconds (default 60, or 15 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Short runs (15 s).
    #[arg(long)]
    quick: bool,
    /// `--memory-limit` for run (a); 5% of it is the queue ceiling.
    #[arg(long, default_value_t = 256 << 20)]
    memory_limit: u64,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write each run's fast-subscriber latency CSV into this directory (`incident-<run>.csv`).
    #[arg(long)]
    percentiles_dir: Option<PathBuf>,
}

/// One server configuration of the comparison.
struct Config {
    name: &'static str,
    what: &'static str,
    slow: bool,
    args: Vec<String>,
}

fn configs(memory_limit: u64) -> Vec<Config> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let huge = (1u64 << 50).to_string();
    vec![
        Config {
            name: "control",
            what: "no slow clients",
            slow: false,
            args: vec![],
        },
        Config {
            name: "default",
            what: "this build's defaults",
            slow: true,
            args: vec![],
        },
        Config {
            name: "a",
            what: "ceiling + evict",
            slow: true,
            args: s(&[
                "--default-policy",
                "evict",
                "--memory-limit",
                &memory_limit.to_string(),
                "--queue-ceiling-pct",
                "5",
            ]),
        },
        Config {
            name: "b",
            what: "conflate",
            slow: true,
            args: s(&["--default-policy", "conflate"]),
        },
        Config {
            name: "c",
            what: "high-water and ceiling off",
            slow: true,
            args: s(&[
                "--high-water-bytes",
                &huge,
                "--memory-limit",
                &huge,
                "--queue-ceiling-pct",
                "100",
            ]),
        },
    ]
}

/// The `--flag` names among `args`.
fn flags(args: &[String]) -> Vec<&str> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect()
}

/// Flags of `args` the server's `--help` does not mention.
fn unsupported<'a>(help: &str, args: &'a [String]) -> Vec<&'a str> {
    flags(args)
        .into_iter()
        .filter(|f| {
            !help
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == *f)
        })
        .collect()
}

/// A running server and the addresses from its ready line.
struct Server {
    child: Child,
    url: String,
    admin: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `... listening on ADDR` and an optional `(admin ADDR2)`.
fn parse_ready(line: &str) -> Option<(String, Option<String>)> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr = rest.split_whitespace().next()?.to_string();
    let admin = rest
        .find("(admin ")
        .map(|i| rest[i + 7..].trim_end().trim_end_matches(')').to_string());
    Some((addr, admin))
}

fn start(a: &IncidentArgs, extra: &[String]) -> Result<Server, String> {
    let mut cmd = match &a.server_cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c]).arg(&a.server);
            t
        }
        None => Command::new(&a.server),
    };
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(&a.server_args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", a.server.display()))?;
    let out = child.stdout.take().ok_or("no server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the ready line, then keeps draining stdout so the server never blocks on it.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent {
                if let Some(r) = parse_ready(&line) {
                    let _ = tx.send(r);
                    sent = true;
                }
            }
        }
    });
    let mut server = Server {
        child,
        url: String::new(),
        admin: None,
    };
    let (addr, admin) = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "server printed no ready line within 10 s".to_string())?;
    server.url = format!("ws://{addr}");
    server.admin = admin.map(|a| format!("http://{a}"));
    Ok(server)
}

/// Runs the comparison and prints its result.
pub fn run(a: IncidentArgs) -> Result<(), String> {
    let duration = a.duration.unwrap_or(if a.quick { 15.0 } else { 60.0 });
    let help = Command::new(&a.server)
        .arg("--help")
        .output()
        .map_err(|e| format!("{} --help: {e}", a.server.display()))?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut runs = Vec::new();
    for c in configs(a.memory_limit) {
        let wanted = [
            a.server_args.clone(),
            c.args.clone(),
            vec!["--admin-listen".into()],
        ]
        .concat();
        let missing: Vec<String> = unsupported(&help, &wanted)
            .into_iter()
            .map(String::from)
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "incident {} ({}): not supported by this server build (no {})",
                c.name,
                c.what,
                missing.join(", ")
            );
            runs.push(json!({"run": c.name, "what": c.what, "server_args": c.args,
                "supported": false, "missing_flags": missing}));
            continue;
        }
        eprintln!("== incident {} ({}): {}", c.name, c.what, c.args.join(" "));
        let server = start(&a, &c.args)?;
        let args = SlowArgs {
            common: CommonArgs {
                url: server.url.clone(),
                ca: None,
                resume: false,
                cpus: a.cpus.clone(),
                source_addrs: 1,
                server_pid: Some(server.child.id()),
                json: None,
                connect_concurrency: 128,
                topic: "incident".into(),
                timeout: duration + 120.0,
            },
            subscribers: a.subscribers,
            slow_fraction: if c.slow { a.slow_fraction } else { 0.0 },
            size: a.size,
            rate: a.rate,
            duration,
            slow_rcvbuf: 4096,
            admin: server.admin.clone(),
            sample_ms: 200,
            drain_s: 5.0,
            settle_ms: 500,
            percentiles: a
                .percentiles_dir
                .as_ref()
                .map(|d| d.join(format!("incident-{}.csv", c.name))),
        };
        let r = slow::measure(&args);
        drop(server);
        match r {
            Ok((mut v, err)) => {
                v["run"] = c.name.into();
                v["what"] = c.what.into();
                v["server_args"] = json!(c.args);
                v["supported"] = true.into();
                v["error"] = json!(err);
                runs.push(v);
            }
            Err(e) => runs.push(json!({"run": c.name, "what": c.what, "server_args": c.args,
                "supported": true, "error": e})),
        }
    }
    let table = table(&runs);
    eprintln!("{table}");
    let result = json!({
        "scenario": "incident",
        "server": a.server,
        "subscribers": a.subscribers,
        "slow_fraction": a.slow_fraction,
        "message_size": a.size,
        "rate": a.rate,
        "duration_s": duration,
        "memory_limit": a.memory_limit,
        "runs": runs,
        "table_markdown": table,
    });
    report::emit(&result, a.json.as_deref()).map_err(|e| e.to_string())
}

/// The comparison as a markdown table (also stored in the JSON for the docs).
fn table(runs: &[Value]) -> String {
    let control_p99 = runs
        .iter()
        .find(|r| r["run"] == "control")
        .and_then(|r| r["fast"]["latency"]["p99_us"].as_f64());
    let mib = |v: &Value| {
        v.as_f64()
            .map_or("?".into(), |b| format!("{:.1}", b / 1048576.0))
    };
    let mut t = String::from(
        "| run | server flags | RSS max / final MiB | server send queues max MiB: all / to slow clients (at end) | kernel TCP max MiB (host, +over base) | RSS + kernel max MiB | fast p99 ms (vs control) | fast lost | slow: 1013 / all outcomes | time to eviction p50 / max ms | evicted → gone p50 / max ms | server: evictions; stall before eviction p50 / max ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let flags = r["server_args"].as_array().map_or(String::new(), |a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        });
        let head = format!(
            "{} ({})",
            r["run"].as_str().unwrap_or("?"),
            r["what"].as_str().unwrap_or("")
        );
        if r["supported"] == false {
            let missing = r["missing_flags"].as_array().map_or(String::new(), |m| {
                m.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            t += &format!("| {head} | `{flags}` | not supported by this server build (no {missing}) | | | | | | | | | |\n");
            continue;
        }
        if r.get("fast").is_none() {
            t += &format!(
                "| {head} | `{flags}` | failed: {} | | | | | | | | | |\n",
                r["error"]
            );
            continue;
        }
        let p99 = r["fast"]["latency"]["p99_us"].as_f64();
        let vs = match (p99, control_p99) {
            (Some(p), Some(c)) if r["run"] != "control" && c > 0.0 => {
                let x = p / c;
                format!(" ({x:.2}x{})", if x <= 2.0 { "" } else { " ⚠ over 2x" })
            }
            _ => String::new(),
        };
        let outcomes = r["slow"]["outcomes"]
            .as_object()
            .map_or(String::new(), |o| {
                o.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        let ms_pair = |v: &Value| {
            if v.is_null() {
                "—".to_string()
            } else {
                format!(
                    "{:.0} / {:.0}",
                    v["p50_ms"].as_f64().unwrap_or(0.0),
                    v["max_ms"].as_f64().unwrap_or(0.0)
                )
            }
        };
        let tte = ms_pair(&r["slow"]["time_to_eviction"]);
        let gone = ms_pair(&r["slow"]["evicted_to_gone"]);
        let k = &r["kernel_tcp"];
        let over_base = match (k["max"].as_f64(), k["base"].as_f64()) {
            (Some(m), Some(b)) => format!("{:+.1}", (m - b) / 1048576.0),
            _ => "?".into(),
        };
        let server = server_evictions(&r["stats_samples"]);
        t += &format!(
            "| {head} | `{flags}` | {} / {} | {} / {} ({}) | {} ({over_base}) | {} | {}{vs} | {} | {} / {} | {tte} | {gone} | {server} |\n",
            mib(&r["server_rss"]["max"]),
            mib(&r["server_rss"]["final"]),
            mib(&r["server_send_queues"]["max"]),
            mib(&r["server_send_queues"]["slow_max"]),
            mib(&r["server_send_queues"]["slow_final"]),
            mib(&k["max"]),
            mib(&r["rss_plus_kernel_max"]),
            p99.map_or("?".into(), |p| format!("{:.1}", p / 1000.0)),
            r["fast"]["lost"],
            r["slow"]["closed_1013"],
            if outcomes.is_empty() {
                "none".into()
            } else {
                outcomes
            },
        );
    }
    t
}

/// The server's own view of its evictions, from the last /stats sample: how many, and how long
/// each evicted connection had made no write progress (the generator cannot time an eviction
/// whose close frame sits behind unread data; the server can).
fn server_evictions(samples: &Value) -> String {
    let Some(last) = samples.as_array().and_then(|a| a.last()) else {
        return "—".into();
    };
    let n: u64 = ["high_water", "ceiling", "slow_clients"]
        .iter()
        .filter_map(|r| last[format!("totals.evictions.{r}")].as_u64())
        .sum();
    match (
        last["totals.eviction_stall_p50_ms"].as_f64(),
        last["totals.eviction_stall_max_ms"].as_f64(),
    ) {
        (Some(p50), Some(max)) if n > 0 => format!("{n}; {p50:.0} / {max:.0}"),
        _ => format!("{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        assert_eq!(
            parse_ready("shardcast listening on 127.0.0.1:80 (admin 127.0.0.1:90)"),
            Some(("127.0.0.1:80".into(), Some("127.0.0.1:90".into())))
        );
        assert_eq!(
            parse_ready("x listening on 1.2.3.4:5"),
            Some(("1.2.3.4:5".into(), None))
        );
        assert_eq!(parse_ready("starting"), None);
    }

    #[test]
    fn flag_support_from_help() {
        let help = "Options:\n      --listen <LISTEN>\n      --memory-limit <BYTES>\n";
        let args: Vec<String> = [
            "--memory-limit",
            "5",
            "--default-policy",
            "evict",
            "--listen=x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(unsupported(help, &args), vec!["--default-policy"]);
        // A flag that is a prefix of a supported one is not supported.
        let a = vec!["--memory".to_string()];
        assert_eq!(unsupported(help, &a), vec!["--memory"]);
    }

    #[test]
    fn table_marks_unsupported_and_p99_ratio() {
        let runs = vec![
            json!({"run": "control", "what": "no slow", "server_args": [], "supported": true,
                "fast": {"latency": {"p99_us": 1000.0}, "lost": 0},
                "slow": {"outcomes": {}, "closed_1013": 0, "time_to_eviction": null},
                "server_rss": {"max": 1048576, "final": 1048576}}),
            json!({"run": "a", "what": "evict", "server_args": ["--x"], "supported": true,
                "fast": {"latency": {"p99_us": 3000.0}, "lost": 0},
                "slow": {"outcomes": {"1013": 2}, "closed_1013": 2,
                    "time_to_eviction": {"p50_ms": 10.0, "max_ms": 20.0},
                    "evicted_to_gone": {"p50_ms": 300.0, "max_ms": 700.0}},
                "kernel_tcp": {"base": 1048576, "max": 3145728},
                "server_send_queues": {"max": 524288, "slow_max": 262144, "slow_final": 0},
                "rss_plus_kernel_max": 4194304,
                "stats_samples": [{"totals.evictions.high_water": 1},
                    {"totals.evictions.high_water": 2, "totals.evictions.ceiling": 1,
                     "totals.eviction_stall_p50_ms": 40.0, "totals.eviction_stall_max_ms": 95.0}],
                "server_rss": {"max": 2097152, "final": 1048576}}),
            json!({"run": "b", "what": "conflate", "server_args": ["--y"], "supported": false,
                "missing_flags": ["--y"]}),
        ];
        let t = table(&runs);
        assert!(t.contains("3.0 (3.00x ⚠ over 2x)"), "{t}");
        assert!(
            t.contains("| 2.0 / 1.0 | 0.5 / 0.2 (0.0) | 3.0 (+2.0) | 4.0 |"),
            "{t}"
        );
        assert!(t.contains("| 10 / 20 | 300 / 700 |"), "{t}");
        assert!(t.contains("2 / 1013: 2"), "{t}");
        assert!(
            t.contains("| 3; 40 / 95 |"),
            "last sample, all reasons: {t}"
        );
        assert!(t.contains("| — | — | — |"), "control has no samples: {t}");
        assert!(
            t.contains("| 1.0 / 1.0 | ? / ? (?) | ? (?) | ? |"),
            "no kernel samples: {t}"
        );
        assert!(
            t.contains("not supported by this server build (no --y)"),
            "{t}"
        );
    }
}
