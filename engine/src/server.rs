//! Server start-up and shutdown: bind the per-shard listeners, build the mesh, spawn the
//! shards, and run each shard's accept loop and mesh drain task.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use shardcast_proto::{encode_close, CloseCode, OpCode};

use crate::config::Config;
use crate::hub::Hub;
use crate::latency::LatencyKind;
use crate::mesh::{mesh, MeshItem, MeshLink};
use crate::stats::{monotonic_ms, ShardStats};
use crate::{admin, bridge, conn, listener, shard, tick};

/// Cross-thread shutdown trigger: a flag plus one waker per mesh participant (the shards, and
/// the NATS bridge when it is on).
pub struct Shutdown {
    flag: AtomicBool,
    wakers: Vec<AtomicWaker>,
}

impl Shutdown {
    fn new(participants: usize) -> Self {
        Shutdown {
            flag: AtomicBool::new(false),
            wakers: (0..participants).map(|_| AtomicWaker::new()).collect(),
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

    /// Resolves once shutdown was triggered (`shard`: the participant's mesh index).
    pub(crate) async fn wait(&self, shard: usize) {
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
    bridge: Option<bridge::Bridge>,
}

type ShardParts = (std::net::TcpListener, MeshLink<MeshItem>);

/// Bind, spawn every shard, and return once all of them are accepting.
pub fn start(config: Config) -> io::Result<Server> {
    let kind = shard::resolve_driver(config.driver)?;
    let shards = config.shards;
    let listeners = listener::bind_all(config.listen, config.listen_backlog, shards)?;
    let local_addr = listeners[0].local_addr()?;
    // With --nats-url the bridge is one more mesh participant, the last one (Hub::new).
    let nats = config
        .nats_url
        .as_deref()
        .map(bridge::servers)
        .transpose()?;
    let participants = shards + usize::from(nats.is_some());
    let mut links = mesh(participants, config.ring_capacity);
    let bridge_link = nats.is_some().then(|| links.pop().expect("bridge link"));
    let parts: Vec<Option<ShardParts>> = listeners.into_iter().zip(links).map(Some).collect();
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
    let shutdown = Arc::new(Shutdown::new(participants));
    let global = Arc::new(AtomicUsize::new(0));
    let access = Arc::new(crate::access::Access::new(&config).map_err(io::Error::other)?);
    let config = Arc::new(config);
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
                hub: Rc::new(Hub::with_access(
                    i,
                    config.clone(),
                    stats.clone(),
                    link,
                    global.clone(),
                    access.clone(),
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
        Some(l) => match admin::spawn(
            l,
            stats.clone(),
            bridge.as_ref().map(bridge::Bridge::stats),
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
        shutdown,
        stats,
        handles,
        admin,
        bridge,
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
        if let Some(bridge) = self.bridge {
            bridge.join();
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
    // Binance's contract: a `serverShutdown` event, then (after the notice) the close.
    let unix_ms = crate::access::token::unix_now_ms();
    let event = crate::control::server_shutdown_event(unix_ms);
    hub.push_all(&shardcast_proto::encode_frame(
        OpCode::Text,
        event.as_bytes(),
    ));
    if hub.config.shutdown_notice_ms > 0 {
        monoio::time::sleep(Duration::from_millis(hub.config.shutdown_notice_ms)).await;
    }
    hub.close_all(&encode_close(CloseCode::GOING_AWAY, ""));
    let deadline = Instant::now() + Duration::from_millis(hub.config.shutdown_grace_ms);
    while hub.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(shard = hub.id, left = hub.active.get(), "shard stopped");
}

/// Deliver envelopes from other shards to local subscribers; park when idle, but while
/// envelopes for other shards wait in overflow, or publishers wait for the mesh backlog to
/// drain, retry the flush (only a flush sees consumers' progress): see [`retry_pause`]. A
/// parked drain task is poked by `Hub::flush_mesh` when such a backlog appears.
async fn drain_mesh(hub: Rc<Hub>) {
    let mut batch: Vec<MeshItem> = Vec::new();
    loop {
        hub.flush_mesh();
        if hub.mesh_needs_retry() {
            if hub.link().borrow_mut().try_drain(|e| batch.push(e)) == 0 {
                retry_pause(&hub).await;
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

/// Between two retries of the mesh backlog: [`MESH_RETRY`], or less if the shard pokes the
/// drain task (`Hub::poke_mesh`). monoio fires timers only when a shard has nothing else to
/// run, so on a busy shard the timer alone could postpone the retry for as long as it stays
/// busy; the pokes come from that very activity, at most one per drain task turn, so an idle
/// shard sleeps and a busy one retries once per round of its other work (never a spin).
async fn retry_pause(hub: &Hub) {
    let mut sleep = pin!(monoio::time::sleep(MESH_RETRY));
    let mut parked = false;
    poll_fn(|cx| {
        if sleep.as_mut().poll(cx).is_ready() || (parked && !hub.drain_parked()) {
            return Poll::Ready(());
        }
        hub.park_drain(cx.waker());
        parked = true;
        Poll::Pending
    })
    .await
}

/// Retry period of a mesh backlog on an idle shard (monoio's timer wheel rounds it up to 1-2 ms).
const MESH_RETRY: Duration = Duration::from_micros(200);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DriverKind;
    use std::cell::Cell;
    use std::task::Waker;

    /// Two tasks that keep a shard busy the way I/O does: each turn one wakes the other
    /// (queued at the back, behind whatever else is runnable) and waits for its turn. Every
    /// turn pokes the mesh, like a connection wake-up. (A task that wakes itself would not
    /// do: monoio runs it again at once, ahead of every other task.)
    struct Busy {
        turn: Cell<usize>,
        left: Cell<u32>,
        wakers: [Cell<Option<Waker>>; 2],
    }

    async fn busy_player(busy: Rc<Busy>, me: usize, hub: Rc<Hub>) {
        loop {
            poll_fn(|cx| {
                if busy.turn.get() == me {
                    return Poll::Ready(());
                }
                busy.wakers[me].set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
            let done = busy.left.get() == 0;
            if !done {
                busy.left.set(busy.left.get() - 1);
                hub.poke_mesh();
            }
            busy.turn.set(1 - me);
            if let Some(w) = busy.wakers[1 - me].take() {
                w.wake();
            }
            if done {
                return;
            }
        }
    }

    /// While other tasks keep a shard runnable, monoio fires no timer (it does so only when
    /// nothing else can run); the pokes that activity makes still get the mesh backlog
    /// retried within a few turns instead of after the busy spell.
    #[test]
    fn a_busy_shard_still_retries_its_mesh_backlog() {
        let auto = shard::resolve_driver(crate::config::Driver::Auto).unwrap();
        for kind in [DriverKind::Epoll, auto] {
            const TURNS: u32 = 20_000;
            let (left_at_retry, tick_fired_during_busy) = shard::block_on(kind, async {
                let hubs: Vec<Rc<Hub>> = crate::hub::tests::hubs(2, &["--memory-limit", "1MiB"])
                    .into_iter()
                    .map(Rc::new)
                    .collect();
                let h0 = hubs[0].clone();
                // Shard 1 never drains: shard 0's publishers end up stopped.
                let t: std::sync::Arc<str> = "t".into();
                while !h0.mesh_stalled() {
                    h0.publish(&t, shardcast_proto::MessageKind::Binary, &[0; 100]);
                }
                h0.flush_mesh();
                assert!(h0.mesh_needs_retry());
                let busy = Rc::new(Busy {
                    turn: Cell::new(0),
                    left: Cell::new(TURNS),
                    wakers: Default::default(),
                });
                let players: Vec<_> = (0..2)
                    .map(|me| monoio::spawn(busy_player(busy.clone(), me, h0.clone())))
                    .collect();
                // A plain timer, to show the starvation the pokes work around.
                let timer = {
                    let busy = busy.clone();
                    monoio::spawn(async move {
                        monoio::time::sleep(Duration::from_millis(1)).await;
                        busy.left.get() > 0
                    })
                };
                retry_pause(&h0).await;
                let at_retry = busy.left.get();
                for p in players {
                    p.await;
                }
                (at_retry, timer.await)
            })
            .unwrap();
            assert!(
                left_at_retry > TURNS - 10,
                "{kind:?}: retried only after {} busy turns",
                TURNS - left_at_retry
            );
            // If timers did fire while the shard was busy, this test would prove nothing.
            assert!(
                !tick_fired_during_busy,
                "{kind:?}: a timer fired while busy"
            );
        }
    }
}
