//! Server start-up and shutdown: bind the per-shard listeners, build the mesh, spawn the
//! shards, and run each shard's accept loop and mesh drain task.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use shardcast_proto::{encode_close, CloseCode};

use crate::config::Config;
use crate::hub::Hub;
use crate::latency::LatencyKind;
use crate::mesh::{mesh, MeshItem, MeshLink};
use crate::stats::{monotonic_ms, ShardStats};
use crate::{admin, conn, listener, shard, tick};

/// Cross-thread shutdown trigger: a flag plus one waker per shard.
pub struct Shutdown {
    flag: AtomicBool,
    wakers: Vec<AtomicWaker>,
}

impl Shutdown {
    fn new(shards: usize) -> Self {
        Shutdown {
            flag: AtomicBool::new(false),
            wakers: (0..shards).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// Begin graceful shutdown on every shard.
    pub fn trigger(&self) {
        self.flag.store(true, SeqCst);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(SeqCst)
    }

    /// Resolves once shutdown was triggered.
    async fn wait(&self, shard: usize) {
        poll_fn(|cx| {
            self.wakers[shard].register(cx.waker());
            if self.flag.load(SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: Arc<Shutdown>,
    stats: Arc<[ShardStats]>,
    handles: Vec<JoinHandle<io::Result<()>>>,
    admin: Option<admin::Admin>,
}

type ShardParts = (std::net::TcpListener, MeshLink<MeshItem>);

/// Bind, spawn every shard, and return once all of them are accepting.
pub fn start(config: Config) -> io::Result<Server> {
    let kind = shard::resolve_driver(config.driver)?;
    let shards = config.shards;
    let listeners = listener::bind_all(config.listen, config.listen_backlog, shards)?;
    let local_addr = listeners[0].local_addr()?;
    let parts: Vec<Option<ShardParts>> = listeners
        .into_iter()
        .zip(mesh(shards, config.ring_capacity))
        .map(Some)
        .collect();
    let parts = Arc::new(Mutex::new(parts));
    let stats: Arc<[ShardStats]> = (0..shards).map(|_| ShardStats::default()).collect();
    // Stamped before the shards run, so /health does not see a never-ticked shard as stalled.
    for s in stats.iter() {
        s.tick(monotonic_ms());
    }
    // Bound before the shards start so a taken admin port fails start-up cleanly.
    let admin_listener = match config.admin_listen.addr() {
        Some(addr) => Some(std::net::TcpListener::bind(addr)?),
        None => None,
    };
    let admin_settings = admin::Settings {
        stall_ms: config.health_stall_ms,
    };
    let shutdown = Arc::new(Shutdown::new(shards));
    let global = Arc::new(AtomicUsize::new(0));
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let ready_tx = Arc::new(Mutex::new(ready_tx));
    let handles = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        shard::spawn(shards, kind, move |i| {
            let (listener, link) = parts.lock().unwrap()[i]
                .take()
                .expect("shard parts taken once");
            let ready = ready_tx.lock().unwrap().clone();
            let ctx = ShardCtx {
                hub: Rc::new(Hub::new(
                    i,
                    config.clone(),
                    stats.clone(),
                    link,
                    global.clone(),
                )),
                shutdown: shutdown.clone(),
            };
            ctx.hub.stats().set_driver(kind);
            tracing::info!(shard = i, driver = kind.name(), "shard starting");
            run_shard(ctx, listener, ready)
        })?
    };
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
        Some(l) => match admin::spawn(l, stats.clone(), shutdown.clone(), admin_settings) {
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
        shutdown,
        stats,
        handles,
        admin,
    })
}

impl Server {
    /// The address the data listener is bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        result
    }
}

struct ShardCtx {
    hub: Rc<Hub>,
    shutdown: Arc<Shutdown>,
}

async fn run_shard(
    ctx: ShardCtx,
    listener: std::net::TcpListener,
    ready: mpsc::Sender<io::Result<()>>,
) {
    let ShardCtx { hub, shutdown } = ctx;
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    monoio::spawn(drain_mesh(hub.clone()));
    monoio::spawn(tick::tick_task(hub.clone()));
    monoio::spawn(crate::heartbeat::run(hub.clone()));
    loop {
        monoio::select! {
            _ = shutdown.wait(hub.id) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => conn::admit(&hub, stream, peer),
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(shard = hub.id, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    hub.shutting_down.set(true);
    hub.close_all(&encode_close(CloseCode::GOING_AWAY, ""));
    let deadline = Instant::now() + Duration::from_millis(hub.config.shutdown_grace_ms);
    while hub.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(shard = hub.id, left = hub.active.get(), "shard stopped");
}

/// Deliver envelopes from other shards to local subscribers; park when idle, but while
/// envelopes for other shards wait in overflow, or publishers wait for the mesh backlog to
/// drain, retry the flush on a short timer instead (only a flush sees consumers' progress).
/// A parked drain task is woken by `Hub::flush_mesh` when such a backlog appears.
async fn drain_mesh(hub: Rc<Hub>) {
    let mut batch: Vec<MeshItem> = Vec::new();
    loop {
        hub.flush_mesh();
        if hub.mesh_needs_retry() {
            if hub.link().borrow_mut().try_drain(|e| batch.push(e)) == 0 {
                monoio::time::sleep(Duration::from_micros(200)).await;
            }
        } else {
            poll_fn(|cx| {
                // Woken by `flush_mesh` for a backlog: back to the loop top to retry it.
                if hub.mesh_needs_retry() {
                    return Poll::Ready(0);
                }
                hub.park_drain(cx.waker());
                hub.link().borrow_mut().poll_drain(cx, |e| batch.push(e))
            })
            .await;
        }
        // One clock read per batch: transit is measured to the moment the batch was drained.
        let drained_at = Instant::now();
        for item in batch.drain(..) {
            if let MeshItem::Publish(env) = &item {
                hub.latency.record(
                    LatencyKind::RingTransit,
                    drained_at.saturating_duration_since(env.published_at),
                );
            }
            hub.receive(item);
        }
    }
}
