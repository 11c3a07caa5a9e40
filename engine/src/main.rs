//! shardcast: the WebSocket broadcast server binary. Parsing, logging, limits and signals;
//! the server itself lives in the library.
use std::io::Write;

use clap::Parser;
use shardcast::{config::Overrides, rlimit, server, signals};

fn main() {
    let overrides = Overrides::parse();
    let print = overrides.print_config;
    let config = match overrides.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardcast: {e}");
            std::process::exit(2);
        }
    };
    if print {
        print!("{}", config.to_toml());
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .init();
    // Blocked before any thread starts so every thread inherits the mask and only the
    // sigwait thread ever sees SIGINT/SIGTERM.
    if let Err(e) = signals::block(&signals::TERMINATION) {
        tracing::error!(error = %e, "cannot block termination signals");
        std::process::exit(1);
    }
    if let Err(e) = rlimit::raise_nofile() {
        tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
    let server = match server::start(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            std::process::exit(1);
        }
    };
    let shutdown = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals::wait(&signals::TERMINATION) {
                tracing::info!(signal = sig, "shutting down");
            }
            shutdown.trigger();
        })
        .expect("spawn signal thread");
    let mut out = std::io::stdout().lock();
    // Tests and scripts parse this line: the data address right after the prefix.
    let _ = match server.admin_addr() {
        Some(admin) => writeln!(
            out,
            "shardcast listening on {} (admin {admin})",
            server.local_addr()
        ),
        None => writeln!(out, "shardcast listening on {}", server.local_addr()),
    };
    let _ = out.flush();
    drop(out);
    if let Err(e) = server.join() {
        tracing::error!(error = %e, "shard failed");
        std::process::exit(1);
    }
}
