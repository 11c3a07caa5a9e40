//! Server start-up and shutdown: resolve the driver, bind the per-shard listeners, build the
//! mesh, start the admin listener and the NATS bridge, and spawn one pinned thread per shard
//! that runs its core on its driver (`shard::run`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::bridge;
use crate::config::Config;
use crate::mesh::{mesh, MeshItem, MeshLink};
use crate::obs::admin;
use crate::obs::stats::ShardStats;
use crate::runtime::clock::monotonic_ms;
use crate::runtime::epoll::Epoll;
use crate::runtime::listener;
use crate::runtime::select::{self, Driver, DriverKind};
use crate::runtime::shutdown::Shutdown;
use crate::runtime::uring::{self, Uring};
use crate::shard::{run, Core};

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    plain_addr: Option<SocketAddr>,
    shutdown: Arc<Shutdown>,
    stats: Arc<[ShardStats]>,
    handles: Vec<JoinHandle<io::Result<()>>>,
    admin: Option<admin::Admin>,
    bridge: Option<Bridge>,
}

#[cfg(feature = "nats")]
use crate::bridge::Bridge;

/// Without the `nats` feature there is never a bridge to join.
#[cfg(not(feature = "nats"))]
enum Bridge {}

#[cfg(not(feature = "nats"))]
impl Bridge {
    fn stats(&self) -> Arc<crate::bridge::stats::BridgeStats> {
        match *self {}
    }
    fn join(self) {}
}

/// Which driver `choice` resolves to on this host: a real io_uring set-up is attempted (the
/// kernel, a seccomp profile or the environment may refuse it), so `uring` fails here, before any
/// thread starts, and `auto` falls back to epoll saying why.
pub fn resolve_driver(choice: Driver) -> io::Result<DriverKind> {
    let probe = match choice {
        Driver::Epoll => Ok(()),
        _ => uring::probe(),
    };
    let kind = select::resolve(choice, probe.as_ref().map(|_| ()))?;
    if let (Driver::Auto, Err(e)) = (choice, &probe) {
        tracing::warn!(error = %e, "io_uring unavailable: using epoll");
    }
    Ok(kind)
}

/// Bind, spawn every shard, and return once all of them are accepting.
pub fn start(config: Config) -> io::Result<Server> {
    start_with_tls(config, None)
}

/// [`start`], serving wss:// on the data listener when `tls` is given (its key material was
/// checked already; each shard takes new handshakes' configuration from it, reloads included).
pub fn start_with_tls(config: Config, tls: Option<crate::tls::TlsContext>) -> io::Result<Server> {
    let kind = resolve_driver(config.driver)?;
    let shards = config.shards;
    let sharing = if config.reuse_port_handover {
        tracing::info!(addr = %config.listen, "--reuse-port-handover: joining the listeners already on the port, if any");
        listener::Sharing::Handover
    } else {
        listener::Sharing::Exclusive
    };
    let listeners = listener::bind_all(
        config.listen,
        config.listen_backlog,
        shards,
        sharing,
        config.send_buffer_bytes,
    )?;
    let local_addr = listeners[0].local_addr()?;
    // Plain ws:// beside wss:// (`listen_plain`, internal traffic): one more listener per shard.
    let mut plains: Vec<Option<std::net::TcpListener>> = match config.listen_plain {
        Some(addr) => listener::bind_all(
            addr,
            config.listen_backlog,
            shards,
            sharing,
            config.send_buffer_bytes,
        )?
        .into_iter()
        .map(Some)
        .collect(),
        None => (0..shards).map(|_| None).collect(),
    };
    let plain_addr = match plains.first() {
        Some(Some(l)) => Some(l.local_addr()?),
        _ => None,
    };
    // With --nats-url the bridge is one more mesh participant, the last one.
    let nats = config
        .nats_url
        .as_deref()
        .map(bridge::servers)
        .transpose()?;
    let participants = shards + usize::from(nats.is_some());
    let mut links = mesh(participants, config.ring_capacity);
    let bridge_link = nats.is_some().then(|| links.pop().expect("bridge link"));
    let stats: Arc<[ShardStats]> = (0..shards).map(|_| ShardStats::default()).collect();
    // Stamped before the shards run, so /health does not see a never-ticked shard as stalled.
    for s in stats.iter() {
        s.tick(monotonic_ms());
    }
    // Bound before the shards start so a taken admin port fails start-up cleanly.
    let admin_listener = match config.admin_listen.addr() {
        Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the admin listener {addr}: {e}"),
            )
        })?),
        None => None,
    };
    let admin_settings = admin::Settings {
        stall_ms: config.health_stall_ms,
        tls: tls.clone(),
    };
    let shutdown = Arc::new(Shutdown::new(participants));
    let global = Arc::new(AtomicUsize::new(0));
    let access = Arc::new(crate::access::Access::new(&config).map_err(io::Error::other)?);
    let config = Arc::new(config);
    #[cfg(feature = "nats")]
    let bridge = match (nats, bridge_link) {
        (Some(servers), Some(link)) => Some(bridge::spawn(
            servers,
            link,
            config.clone(),
            stats.clone(),
            shutdown.clone(),
        )?),
        _ => None,
    };
    #[cfg(not(feature = "nats"))]
    let bridge: Option<Bridge> = {
        let _ = (nats, bridge_link);
        None
    };
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(shards);
    for (i, (listener, link)) in listeners.into_iter().zip(links).enumerate() {
        let parts = ShardParts {
            id: i,
            kind,
            listener,
            plain: plains[i].take(),
            link,
            config: config.clone(),
            stats: stats.clone(),
            global: global.clone(),
            shutdown: shutdown.clone(),
            access: access.clone(),
            tls: tls.as_ref().map(crate::tls::TlsContext::shard_config),
        };
        let ready = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        handles.push(
            std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(shard = i, core = core.id, "could not pin shard thread");
                        }
                    }
                    shard_thread(parts, ready)
                })?,
        );
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.trigger();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("a shard exited during start-up")),
        }
    }
    let admin = match admin_listener {
        Some(l) => match admin::spawn(
            l,
            stats.clone(),
            bridge.as_ref().map(Bridge::stats),
            shutdown.clone(),
            admin_settings,
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                shutdown.trigger();
                return Err(e);
            }
        },
        None => None,
    };
    Ok(Server {
        local_addr,
        plain_addr,
        shutdown,
        stats,
        handles,
        admin,
        bridge,
    })
}

/// What one shard thread starts from.
struct ShardParts {
    id: usize,
    kind: DriverKind,
    listener: std::net::TcpListener,
    /// The plain listener beside a TLS one (`listen_plain`).
    plain: Option<std::net::TcpListener>,
    link: MeshLink<MeshItem>,
    config: Arc<Config>,
    stats: Arc<[ShardStats]>,
    global: Arc<AtomicUsize>,
    shutdown: Arc<Shutdown>,
    /// Access policy and per-address limits, one for the process.
    access: Arc<crate::access::Access>,
    /// wss://: the published TLS configuration.
    tls: Option<crate::tls::ShardConfig>,
}

/// Set up the shard's driver on its own thread, report readiness, run until shutdown.
fn shard_thread(p: ShardParts, ready: mpsc::Sender<io::Result<()>>) -> io::Result<()> {
    let mut core = Core::new(
        p.id,
        p.config.clone(),
        p.stats.clone(),
        p.link,
        p.global,
        Instant::now(),
    )
    .with_access(p.access.clone());
    if let Some(tls) = p.tls {
        core.set_tls(crate::tls::ShardTls::new(tls));
    }
    let report = |kind: DriverKind| {
        p.stats[p.id].set_driver(kind);
        tracing::info!(shard = p.id, driver = kind.name(), "shard starting");
    };
    // What this shard may hold, for the driver's socket table (reserved address space, not a
    // limit: admission enforces those). Under the global count alone one shard may hold all.
    let expected = p
        .config
        .max_connections_per_shard
        .unwrap_or(p.config.max_connections);
    match p.kind {
        DriverKind::Uring => {
            let driver = match Uring::new(p.listener, p.plain, expected) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(());
                }
            };
            report(DriverKind::Uring);
            let _ = ready.send(Ok(()));
            run::run(driver, core, &p.shutdown)
        }
        _ => {
            let driver = match Epoll::new(p.listener, p.plain, expected) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(());
                }
            };
            report(DriverKind::Epoll);
            let _ = ready.send(Ok(()));
            run::run(driver, core, &p.shutdown)
        }
    }
}

impl Server {
    /// The address the data listener is bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the plain listener beside a TLS one is bound to (`listen_plain`), if any.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// The address the admin listener is bound to, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The shutdown trigger (for signal handlers and tests).
    pub fn shutdown_handle(&self) -> Arc<Shutdown> {
        self.shutdown.clone()
    }

    /// Per-shard counters.
    pub fn stats(&self) -> Arc<[ShardStats]> {
        self.stats.clone()
    }

    /// Wait for every shard to finish (after shutdown).
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for h in self.handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a shard panicked")),
            }
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        if let Some(bridge) = self.bridge {
            bridge.join();
        }
        result
    }
}
