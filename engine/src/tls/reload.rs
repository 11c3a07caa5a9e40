//! The live TLS configuration, shared by the shards and swapped on reload (SIGHUP).
//!
//! Contract:
//! - [`TlsContext::start`] loads and checks the files once; start-up fails on its error.
//! - Each shard keeps a [`ShardConfig`] and calls [`ShardConfig::current`] when it accepts a
//!   connection: one atomic load (the generation) when nothing changed; only after a reload does
//!   it take the lock once to pick up the new `Arc<ServerConfig>`. Sessions already running keep
//!   the configuration they started with (rustls holds its own `Arc`), so a reload never touches
//!   a live connection.
//! - [`TlsContext::reload`] (from the signal thread) re-reads the files, builds a new
//!   configuration and publishes it; on any error the old one stays and the error is returned
//!   (and logged by [`TlsContext::reload_logged`]). Both outcomes are counted ([`ReloadStats`]).
//! - The ticketer lives as long as the context, so tickets issued before a reload still resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::ServerConfig;

use super::material::{self, SetupError};
use super::options::TlsOptions;
use super::server_config;

/// Reload outcomes (process-wide: one reload serves every shard).
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that published a new configuration.
    pub reloads: AtomicU64,
    /// Reloads that failed and kept the previous configuration.
    pub failures: AtomicU64,
}

/// A point-in-time copy of [`ReloadStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSnapshot {
    /// Reloads that published a new configuration.
    pub reloads: u64,
    /// Reloads that failed (the previous configuration stayed).
    pub reload_failures: u64,
}

impl ReloadStats {
    /// Copy the counters.
    pub fn snapshot(&self) -> ReloadSnapshot {
        ReloadSnapshot {
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// The published configuration and its generation (bumped under the lock on every swap).
#[derive(Debug)]
struct Cell {
    generation: AtomicU64,
    current: Mutex<Arc<ServerConfig>>,
}

impl Cell {
    fn read(&self) -> (u64, Arc<ServerConfig>) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: the writer bumps it under the same lock, so the pair agrees.
        (self.generation.load(Ordering::Relaxed), current.clone())
    }
}

/// Everything TLS needs for the life of the process: options, provider, ticketer, the published
/// configuration and the reload counters. Cheap to share (`Arc` inside).
#[derive(Clone, Debug)]
pub struct TlsContext {
    inner: Arc<Inner>,
}

struct Inner {
    options: TlsOptions,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    cell: Arc<Cell>,
    stats: ReloadStats,
    // Serializes reloads (two SIGHUPs in a row must not interleave load and publish).
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("options", &self.options)
            .field("generation", &self.cell.generation)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Load the files and build the first configuration.
    pub fn start(options: TlsOptions) -> Result<TlsContext, SetupError> {
        let provider = server_config::provider();
        let ticketer = server_config::ticketer()?;
        let material = material::load(&options, &provider)?;
        let config = server_config::build(&material, &options, &provider, &ticketer)?;
        Ok(TlsContext {
            inner: Arc::new(Inner {
                options,
                provider,
                ticketer,
                cell: Arc::new(Cell {
                    generation: AtomicU64::new(0),
                    current: Mutex::new(config),
                }),
                stats: ReloadStats::default(),
                reloading: Mutex::new(()),
            }),
        })
    }

    /// A handle for one shard (cache the configuration, re-read it only after a reload).
    pub fn shard_config(&self) -> ShardConfig {
        let (seen, cached) = self.inner.cell.read();
        ShardConfig {
            cell: self.inner.cell.clone(),
            seen,
            cached,
        }
    }

    /// The options the context was started with.
    pub fn options(&self) -> &TlsOptions {
        &self.inner.options
    }

    /// Re-read the files and publish a new configuration; on error keep the current one.
    pub fn reload(&self) -> Result<(), SetupError> {
        let _one = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = &self.inner;
        let built = material::load(&inner.options, &inner.provider).and_then(|m| {
            server_config::build(&m, &inner.options, &inner.provider, &inner.ticketer)
        });
        match built {
            Ok(config) => {
                let mut current = inner
                    .cell
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *current = config;
                // Release: a shard that sees the new generation and then locks sees the config.
                inner.cell.generation.fetch_add(1, Ordering::Release);
                inner.stats.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                inner.stats.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// [`reload`](Self::reload), logging the outcome (what the SIGHUP handler calls).
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.inner.options.cert.display(),
                generation = self.inner.cell.generation.load(Ordering::Relaxed),
                "TLS certificate and key reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate")
            }
        }
    }

    /// Reload counters.
    pub fn reload_stats(&self) -> ReloadSnapshot {
        self.inner.stats.snapshot()
    }
}

/// One shard's view of the published configuration.
#[derive(Debug)]
pub struct ShardConfig {
    cell: Arc<Cell>,
    seen: u64,
    cached: Arc<ServerConfig>,
}

impl ShardConfig {
    /// The configuration a new connection starts with: one atomic load unless a reload happened
    /// since the last call.
    pub fn current(&mut self) -> &Arc<ServerConfig> {
        if self.cell.generation.load(Ordering::Acquire) != self.seen {
            (self.seen, self.cached) = self.cell.read();
        }
        &self.cached
    }
}
