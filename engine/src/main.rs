//! shardcast: the WebSocket broadcast server binary. Parsing, logging, limits and signals;
//! the server itself lives in the library.
use std::io::Write;

use clap::Parser;
use shardcast::config::Overrides;
use shardcast::ops::preflight;
use shardcast::runtime::{rlimit, signals};
use shardcast::{server, tls};

/// jemalloc instead of glibc malloc: an idle connection is a handful of small long-lived
/// allocations made between short-lived handshake ones, and glibc keeps ~1-2.5 KB per
/// connection of that churn resident (docs/ENGINE.md, "Idle connection memory").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let overrides = Overrides::parse();
    let print = overrides.print_config;
    let only_preflight = overrides.preflight;
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
    if only_preflight {
        // Same raise as a real start, so the report shows the limit the server would run with.
        let _ = rlimit::raise_nofile();
        let checks = preflight::run(&config, &shardcast::ops::host::HostFacts::gather());
        for c in &checks {
            println!("{c}");
        }
        std::process::exit(i32::from(preflight::has_failure(&checks)));
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .init();
    // Blocked before any thread starts so every thread inherits the mask and only the
    // sigwait thread ever sees SIGINT/SIGTERM/SIGHUP.
    if let Err(e) = signals::block(&signals::HANDLED) {
        tracing::error!(error = %e, "cannot block signals");
        std::process::exit(1);
    }
    // TLS key material is checked before anything binds: a bad file stops the start.
    let tls = match tls::TlsOptions::from_config(&config).map(tls::TlsContext::start) {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot start");
            std::process::exit(1);
        }
    };
    if config.listen_plain.is_some() {
        // A second (plain) listener per shard is not built yet: refuse rather than ignore it.
        tracing::error!(
            "cannot start: listen_plain is not served yet; run a second shardcast without \
             tls_cert/tls_key for plain internal traffic"
        );
        std::process::exit(1);
    }
    if let Err(e) = rlimit::raise_nofile() {
        tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
    }
    preflight::log(&preflight::run(
        &config,
        &shardcast::ops::host::HostFacts::gather(),
    ));
    let server = match server::start_with_tls(config, tls.clone()) {
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
            let reload = || match &tls {
                Some(tls) => tls.reload_logged(),
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            };
            if let Ok(sig) = signals::serve(reload) {
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
