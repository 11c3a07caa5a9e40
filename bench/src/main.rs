//! `shardcast-bench`: a thread-per-core WebSocket load generator and the benchmark scenarios
//! for shardcast and its baselines. Each scenario prints JSON (stdout or `--json FILE`) and a
//! one-line human summary on stderr.

mod clock;
mod common;
mod dial;
mod fanout;
mod process;
mod report;
mod scan;
mod seqcheck;
mod workers;

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
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = process::raise_nofile_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let result = match cli.scenario {
        Scenario::Fanout(a) => fanout::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
