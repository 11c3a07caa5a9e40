//! `shardcast-bench`: a thread-per-core WebSocket load generator and the benchmark scenarios
//! for shardcast and its baselines. Each scenario prints JSON (stdout or `--json FILE`) and a
//! one-line human summary on stderr.

mod adminstats;
mod clock;
mod common;
mod compare;
mod connect;
mod dial;
mod echo;
mod fanout;
mod feed;
mod font;
mod hlog;
mod idle;
mod incident;
mod marketdata;
mod naive_server;
mod plot;
mod process;
mod recv;
mod report;
mod room;
mod scan;
#[cfg(test)]
mod selftest;
mod seqcheck;
mod slow;
mod stalled;
mod stream;
mod tickets;
mod tls;
mod workers;
#[cfg(test)]
mod wss_selftest;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One publisher to N subscribers: maximum rate (windowed) or fixed rate with latency.
    Fanout(fanout::FanoutArgs),
    /// A JSON market-data feed to N subscribers at a fixed rate, with or without permessage-deflate: wire bytes and server CPU per delivery.
    Feed(feed::FeedArgs),
    /// N clients in one room, each sends M messages, everyone receives everything.
    Room(room::RoomArgs),
    /// Connection storm: K upgrades, C at a time; handshakes/s and latency.
    Connect(connect::ConnectArgs),
    /// N connections on /echo, K messages in flight each: echoes/s and server CPU per echo.
    Echo(echo::EchoArgs),
    /// N idle subscribers; the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Per-shard latency side by side from --histogram-log files or a live admin URL; flags outlier shards.
    Compare(compare::CompareArgs),
    /// N subscribers, a fraction of which never read: back-pressure, eviction, server memory.
    Slow(slow::SlowArgs),
    /// The slow-client incident at this host's scale: starts shardcast per configuration.
    Incident(incident::IncidentArgs),
    /// SVG of latency distributions written by `--percentiles`.
    Plot(plot::PlotArgs),
    /// Baseline server: one thread, epoll, a plain send() per subscriber per message.
    NaiveServer(naive_server::NaiveArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = process::raise_nofile_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let result = match cli.scenario {
        Scenario::Fanout(a) => fanout::run(a),
        Scenario::Feed(a) => feed::run(a),
        Scenario::Room(a) => room::run(a),
        Scenario::Connect(a) => connect::run(a),
        Scenario::Idle(a) => idle::run(a),
        Scenario::Echo(a) => echo::run(a),
        Scenario::Slow(a) => slow::run(a),
        Scenario::Incident(a) => incident::run(a),
        Scenario::Plot(a) => plot::run(a),
        Scenario::NaiveServer(a) => naive_server::run(a),
        Scenario::Compare(a) => compare::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one scenario from its command line (plus `--json out`) and returns its JSON.
    pub(crate) fn run_cli(args: &[&str], out: &std::path::Path) -> serde_json::Value {
        let mut argv = vec!["shardcast-bench"];
        argv.extend_from_slice(args);
        let json = out.to_str().unwrap();
        argv.extend_from_slice(&["--json", json]);
        let cli = Cli::try_parse_from(argv).unwrap();
        match cli.scenario {
            Scenario::Fanout(a) => fanout::run(a),
            Scenario::Feed(a) => feed::run(a),
            Scenario::Room(a) => room::run(a),
            Scenario::Connect(a) => connect::run(a),
            Scenario::Idle(a) => idle::run(a),
            Scenario::Echo(a) => echo::run(a),
            Scenario::Slow(a) => slow::run(a),
            Scenario::NaiveServer(_)
            | Scenario::Incident(_)
            | Scenario::Plot(_)
            | Scenario::Compare(_) => unreachable!("not a scenario"),
        }
        .unwrap();
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
    }

    /// Every scenario end to end against the naive server in this process (so `--server-pid` is
    /// our own pid). Small counts and short durations keep it to a few seconds.
    #[test]
    fn scenarios_against_the_naive_server() {
        let mut server = naive_server::NaiveServer::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", server.local_addr().unwrap());
        // Detached: ends with the test process; 20k turns bound it if the process lingers.
        std::thread::spawn(move || server.serve(Some(20_000)));
        let pid = std::process::id().to_string();
        let dir = std::env::temp_dir().join(format!("shardcast-bench-test-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let common = ["--url", &url, "--cpus", "0", "--server-pid", &pid];

        let mut a = common.to_vec();
        a.extend(["--subscribers", "20", "--rate", "200", "--duration", "0.3"]);
        a.extend(["--settle-ms", "50", "--topic", "f1"]);
        let f = run_cli(&[&["fanout"], &a[..]].concat(), &dir.join("f.json"));
        assert!(f["messages_sent"].as_u64().unwrap() >= 10);
        assert_eq!(f["deliveries"], f["expected_deliveries"]);
        assert_eq!(
            (f["lost"].as_u64(), f["duplicated"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(f["latency"]["count"].as_u64().unwrap() > 0);
        assert!(f["server_cpu_us_per_delivery"].as_f64().is_some());

        let mut a = common.to_vec();
        a.extend(["--subscribers", "10", "--messages", "500", "--window", "8"]);
        a.extend(["--settle-ms", "50", "--topic", "f2", "--source-addrs", "3"]);
        let f = run_cli(&[&["fanout"], &a[..]].concat(), &dir.join("f2.json"));
        assert_eq!(f["messages_sent"].as_u64(), Some(500));
        assert_eq!(f["deliveries"].as_u64(), Some(5000));
        assert_eq!(f["lost"].as_u64(), Some(0));

        // `feed` without compression (the naive server offers none; the engine's tests cover
        // the compressed path): every message to every subscriber, the sample byte-exact.
        let mut a = common.to_vec();
        a.extend(["--subscribers", "12", "--rate", "100", "--duration", "0.3"]);
        a.extend([
            "--settle-ms",
            "50",
            "--topic",
            "feed",
            "--inflate-every",
            "4",
            "--deflate",
        ]);
        let f = run_cli(&[&["feed"], &a[..]].concat(), &dir.join("feed.json"));
        assert_eq!(f["messages_sent"].as_u64(), Some(30));
        assert_eq!(f["deliveries"].as_u64(), Some(360));
        assert_eq!(f["sampled_messages_checked"].as_u64(), Some(90));
        assert_eq!(f["sampled_mismatches"].as_u64(), Some(0));
        assert_eq!(f["negotiated"], serde_json::Value::Null);
        assert!(f["wire_vs_payload"].as_f64().unwrap() > 1.0);

        let mut a = common.to_vec();
        a.extend([
            "--clients",
            "10",
            "--messages",
            "5",
            "--settle-ms",
            "50",
            "--topic",
            "r",
        ]);
        let r = run_cli(&[&["room"], &a[..]].concat(), &dir.join("r.json"));
        assert_eq!(r["deliveries"].as_u64(), Some(500));
        assert_eq!(r["self_echo"], true);
        assert_eq!(r["lost"].as_u64(), Some(0));

        let mut a = common.to_vec();
        a.extend(["--connections", "50", "--concurrency", "8"]);
        let c = run_cli(&[&["connect"], &a[..]].concat(), &dir.join("c.json"));
        assert_eq!(c["succeeded"].as_u64(), Some(50));

        let mut a = common.to_vec();
        a.extend([
            "--connections",
            "10",
            "--in-flight",
            "2",
            "--duration",
            "0.3",
        ]);
        a.extend(["--settle-ms", "50"]);
        let e = run_cli(&[&["echo"], &a[..]].concat(), &dir.join("e.json"));
        assert_eq!(e["connected"].as_u64(), Some(10));
        assert!(e["echoed"].as_u64().unwrap() > 0, "{e}");
        assert!(e["server_cpu_us_per_echo"].as_f64().is_some());

        let mut a = common.to_vec();
        a.extend(["--connections", "50", "--hold-ms", "50", "--warmup", "10"]);
        let i = run_cli(&[&["idle"], &a[..]].concat(), &dir.join("i.json"));
        assert_eq!(i["connected"].as_u64(), Some(50));
        assert!(i["bytes_per_subscribed_connection"].as_f64().is_some());
        assert!(i["server_memory_after"]["rss"].as_u64().unwrap() > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `slow` end to end: the naive server drops nothing for the fast subscribers, the stalled
    /// ones are accounted for (all still open: the naive server never evicts), RSS is sampled.
    #[test]
    fn slow_against_the_naive_server() {
        let mut server = naive_server::NaiveServer::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", server.local_addr().unwrap());
        std::thread::spawn(move || server.serve(Some(20_000)));
        let pid = std::process::id().to_string();
        let out = std::env::temp_dir().join(format!("shardcast-bench-slow-{pid}.json"));
        let a = [
            "slow",
            "--url",
            &url,
            "--cpus",
            "0",
            "--server-pid",
            &pid,
            "--subscribers",
            "10",
            "--slow-fraction",
            "0.2",
            "--size",
            "1024",
            "--rate",
            "50",
            "--duration",
            "0.5",
            "--drain-s",
            "0.3",
            "--settle-ms",
            "50",
            "--sample-ms",
            "100",
        ];
        let r = run_cli(&a, &out);
        assert_eq!(r["slow_clients"].as_u64(), Some(2));
        assert_eq!(r["fast"]["subscribers"].as_u64(), Some(8));
        assert_eq!(r["fast"]["lost"].as_u64(), Some(0));
        assert!(r["fast"]["messages_sent"].as_u64().unwrap() >= 10);
        assert_eq!(r["slow"]["outcomes"]["open"].as_u64(), Some(2));
        // One sample when watching starts and one when it stops, whatever the machine's load
        // (more in between as time allows: counting those would test the scheduler).
        assert!(r["server_rss"]["samples"].as_array().unwrap().len() >= 2);
        assert!(r["server_rss"]["max"].as_u64().unwrap() > 0);
        let _ = std::fs::remove_file(&out);
    }
}
