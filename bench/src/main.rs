//! `shardcast-bench`: a thread-per-core WebSocket load generator and the benchmark scenarios
//! for shardcast and its baselines. Each scenario prints JSON (stdout or `--json FILE`) and a
//! one-line human summary on stderr.

mod clock;
mod common;
mod connect;
mod dial;
mod fanout;
mod idle;
mod naive_server;
mod process;
mod report;
mod room;
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
    /// N clients in one room, each sends M messages, everyone receives everything.
    Room(room::RoomArgs),
    /// Connection storm: K upgrades, C at a time; handshakes/s and latency.
    Connect(connect::ConnectArgs),
    /// N idle subscribers; the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Baseline server: one thread, poll(2), a plain send() per subscriber per message.
    NaiveServer(naive_server::NaiveArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = process::raise_nofile_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let result = match cli.scenario {
        Scenario::Fanout(a) => fanout::run(a),
        Scenario::Room(a) => room::run(a),
        Scenario::Connect(a) => connect::run(a),
        Scenario::Idle(a) => idle::run(a),
        Scenario::NaiveServer(a) => naive_server::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
