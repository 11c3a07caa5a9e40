//! shardcast: the WebSocket broadcast server binary. Parsing, logging, limits and signals;
//! the server itself lives in the library.
use std::io::Write;

use clap::Parser;
use shardcast::config::Overrides;
use shardcast::obs::logging;
use shardcast::ops::preflight;
use shardcast::runtime::{rlimit, signals};
use shardcast::{server, tls};

/// jemalloc instead of glibc malloc: an idle connection is a handful of small long-lived
/// allocations made between short-lived handshake ones, and glibc keeps ~1-2.5 KB per
/// connection of that churn resident (docs/ENGINE.md, "Idle connection memory").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (docs/ENGINE.md, "Memory returns"): freed
/// pages go back to the system within about a second (dirty then muzzy decay of 1 s each,
/// instead of 10 s), and one jemalloc background thread does the purging on that clock, so an
/// idle shard returns memory as well: without it decay only advances when the arena that
/// holds the pages allocates again, and after an attack's clients leave nothing may
/// (measured: RSS still 2x the pre-attack value 5 s later; with it, back within 20% in 1.4 s).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:1000"
        .as_ptr(),
);

/// A C string pointer jemalloc reads at start-up.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to an immutable, NUL-terminated static byte string; nothing writes
// through it.
unsafe impl Sync for MallocConf {}

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
    if let Err(e) = config.check_limits() {
        eprintln!("shardcast: {e}");
        std::process::exit(2);
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
    logging::init(config.log_format, &config.log);
    // Blocked before any thread starts so every thread inherits the mask and only the
    // sigwait thread ever sees SIGINT/SIGTERM/SIGHUP.
    if let Err(e) = signals::block(&signals::HANDLED) {
        tracing::error!(error = %e, "cannot block signals");
        std::process::exit(1);
    }
    // TLS key material is checked before anything binds: a bad file stops the start.
    let tls = match config.tls_options().map(tls::TlsContext::start) {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot start");
            std::process::exit(1);
        }
    };
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
            // A second SIGINT/SIGTERM does not wait for the graceful shutdown: exit now, with
            // the shell's status for death by that signal (130 SIGINT, 143 SIGTERM).
            if let Ok(sig) = signals::wait(&signals::TERMINATION) {
                tracing::warn!(signal = sig, "second signal: exiting without waiting");
                std::process::exit(128 + sig);
            }
        })
        .expect("spawn signal thread");
    let mut out = std::io::stdout().lock();
    // Tests and scripts parse this line: the data address right after the prefix, then
    // ` (admin ADDR)` and ` (plain ws:// ADDR)` when those listeners are on.
    let mut line = format!("shardcast listening on {}", server.local_addr());
    if let Some(admin) = server.admin_addr() {
        line.push_str(&format!(" (admin {admin})"));
    }
    if let Some(plain) = server.plain_addr() {
        line.push_str(&format!(" (plain ws:// {plain})"));
    }
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    if let Err(e) = server.join() {
        tracing::error!(error = %e, "shard failed");
        std::process::exit(1);
    }
}
