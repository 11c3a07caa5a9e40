//! The bridge thread: the NATS client on a current-thread tokio runtime, the forwarder, the
//! interest-driven subscriptions and the inbound path (see the module docs of `bridge`).

use std::cell::Cell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap, ServerAddr, Subscriber};
use bytes::Bytes;
use futures_util::stream::{SelectAll, Stream, StreamExt};
use shardcast_proto::frame::{parse_header, Role};
use shardcast_proto::{MessageKind, OpCode};
use tokio::sync::mpsc;

use super::deep::Deep;
use super::interest::{Change, Interest};
use super::linklog::{self, LinkEvent};
use super::stats::{BridgeStats, LinkState};
use super::subject::{self, Inbound};
use crate::config::Config;
use crate::continuity::deep::{Failure, Fetch, Fetched};
use crate::continuity::Position;
use crate::deflate::ShardDeflate;
use crate::mesh::{Envelope, MeshItem, MeshLink};
use crate::obs::stats::{add, get, monotonic_ms, ShardStats};
use crate::runtime::shutdown::Shutdown;

/// Commands the NATS client queues before `publish` waits (the client's own buffer, on top of
/// `nats_buffer_bytes`). Small: the bound operators configure is ours.
const CLIENT_CAPACITY: usize = 128;

/// Bytes a queued outbound message is charged beyond its payload (topic, kind, queue slot), so
/// that empty messages are bounded too.
pub const OUTBOUND_OVERHEAD: usize = 64;

/// How often the link state and gauges are refreshed.
const REFRESH: Duration = Duration::from_millis(100);

/// How soon a message blocked by a full ring or a shard under memory pressure is retried.
const RETRY: Duration = Duration::from_millis(1);

/// Keepalive pings: a silent network partition is noticed after two unanswered ones.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Local publishes forwarded per wake-up of the forwarding task.
const FORWARD_BATCH: usize = 64;

/// The running bridge thread.
pub struct Bridge {
    stats: Arc<BridgeStats>,
    handle: JoinHandle<()>,
}

impl Bridge {
    /// The bridge's counters (for the admin thread).
    pub fn stats(&self) -> Arc<BridgeStats> {
        self.stats.clone()
    }

    /// Wait for the thread to finish (after shutdown was triggered).
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("nats bridge thread panicked");
        }
    }
}

/// Parse `--nats-url`: one or more comma-separated server URLs.
pub fn servers(url: &str) -> io::Result<Vec<ServerAddr>> {
    url.split(',')
        .map(|u| {
            u.trim().parse::<ServerAddr>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("nats_url {u:?}: {e}"))
            })
        })
        .collect()
}

/// Start the bridge thread on `link` (the mesh participant after the shards); it stops when
/// `shutdown` is triggered. `shard_stats` tells it which shards are under memory pressure.
pub fn spawn(
    servers: Vec<ServerAddr>,
    link: MeshLink<MeshItem>,
    config: Arc<Config>,
    shard_stats: Arc<[ShardStats]>,
    shutdown: Arc<Shutdown>,
) -> io::Result<Bridge> {
    let stats = Arc::new(BridgeStats::new());
    let thread_stats = stats.clone();
    let handle = std::thread::Builder::new()
        .name("nats-bridge".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "nats bridge: cannot build its runtime");
                    return;
                }
            };
            let ctx = Ctx {
                servers,
                link,
                config,
                shard_stats,
                shutdown,
                stats: thread_stats,
            };
            tokio::task::LocalSet::new().block_on(&rt, run(ctx));
        })?;
    Ok(Bridge { stats, handle })
}

/// Everything the bridge thread owns.
struct Ctx {
    servers: Vec<ServerAddr>,
    link: MeshLink<MeshItem>,
    config: Arc<Config>,
    shard_stats: Arc<[ShardStats]>,
    shutdown: Arc<Shutdown>,
    stats: Arc<BridgeStats>,
}

/// A local publish on its way to NATS.
struct Outbound {
    topic: Arc<str>,
    kind: MessageKind,
    payload: Bytes,
    /// Continuity: its number on this host (the `Shardcast-Epoch`/`Shardcast-Seq` headers).
    numbering: Option<Position>,
}

/// The bridge's handle on one topic's subscription: the topic stream polls it, the bridge
/// pauses or closes it.
struct SubCtl {
    topic: Arc<str>,
    paused: Cell<bool>,
    closed: Cell<bool>,
    /// The waker of the last poll, so pausing, resuming and closing reach the stream.
    waker: Cell<Option<Waker>>,
}

impl SubCtl {
    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// One topic's subscription as a stream of (topic, message); pending while paused, ended when
/// closed (dropping the `Subscriber` unsubscribes).
struct TopicStream {
    ctl: Rc<SubCtl>,
    sub: Subscriber,
}

impl Stream for TopicStream {
    type Item = (Arc<str>, async_nats::Message);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let ctl = &self.ctl;
        if ctl.closed.get() {
            return Poll::Ready(None);
        }
        let w = ctl.waker.take();
        ctl.waker.set(Some(match w {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        }));
        if ctl.paused.get() {
            return Poll::Pending;
        }
        let topic = ctl.topic.clone();
        self.sub.poll_next_unpin(cx).map(|m| m.map(|m| (topic, m)))
    }
}

/// A message from NATS, encoded, waiting for room in its shards' rings.
struct Pending {
    env: Envelope,
    stalled: bool,
    /// Continuity: the numbering its headers carried.
    numbering: Option<Position>,
}

/// The bridge loop's state (the futures of one `select!` turn borrow disjoint fields).
struct State {
    link: MeshLink<MeshItem>,
    client: async_nats::Client,
    prefix: String,
    origin: String,
    shard_stats: Arc<[ShardStats]>,
    stats: Arc<BridgeStats>,
    interest: Interest,
    subs: HashMap<Arc<str>, Rc<SubCtl>>,
    streams: SelectAll<TopicStream>,
    sub_tx: mpsc::UnboundedSender<(Arc<str>, u64, Option<Subscriber>)>,
    out_tx: mpsc::UnboundedSender<Outbound>,
    /// Bytes charged for queued outbound messages (the forwarder gives them back), and the
    /// bound.
    out_bytes: Rc<Cell<usize>>,
    out_limit: usize,
    pending: Option<Pending>,
    batch: Vec<MeshItem>,
    /// Compresses messages from NATS once for every shard (`deflate`).
    deflate: ShardDeflate,
    /// Continuity: deep history from JetStream (`--nats-jetstream`), and where finished
    /// fetches come back to the loop.
    deep: Option<Deep>,
    deep_tx: mpsc::UnboundedSender<(usize, MeshItem)>,
}

/// Reconnect backoff: immediately, then 50 ms doubling up to `max_ms`, with up to 25% jitter so
/// a fleet that lost NATS together does not reconnect in lockstep.
fn backoff(attempts: usize, max_ms: u64) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = (attempts - 2).min(20) as u32;
    let ms = 50u64.saturating_mul(1 << exp).min(max_ms);
    let jitter = monotonic_ms().wrapping_mul(0x9E37_79B9) % (ms / 4 + 1);
    Duration::from_millis(ms - jitter)
}

async fn run(ctx: Ctx) {
    let Ctx {
        servers,
        link,
        config,
        shard_stats,
        shutdown,
        stats,
    } = ctx;
    let origin = subject::origin_id();
    stats.set_origin(&origin);
    let events = stats.clone();
    let reconnect_max_ms = config.nats_reconnect_max_ms;
    let link_log = Arc::new(std::sync::Mutex::new(linklog::LinkLog::new(monotonic_ms())));
    let options = ConnectOptions::new()
        .name(format!("shardcast-{origin}"))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(move |n| backoff(n, reconnect_max_ms))
        .subscription_capacity(config.nats_pending_messages)
        .client_capacity(CLIENT_CAPACITY)
        .ping_interval(PING_INTERVAL)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let (stats, link_log) = (events.clone(), link_log.clone());
            async move {
                let link = match event {
                    async_nats::Event::SlowConsumer(_) => {
                        add(&stats.slow_consumer_drops, 1);
                        None
                    }
                    async_nats::Event::Connected => Some(LinkEvent::Connected),
                    async_nats::Event::Disconnected => Some(LinkEvent::Disconnected),
                    // The client reports each failed round of connection attempts this way.
                    async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => {
                        add(&stats.connect_failures, 1);
                        Some(LinkEvent::ConnectFailed(e))
                    }
                    e => {
                        tracing::debug!(event = %e, "nats bridge event");
                        None
                    }
                };
                let line = link.and_then(|ev| {
                    let mut log = link_log.lock().unwrap_or_else(|e| e.into_inner());
                    log.handle(ev, monotonic_ms())
                });
                if let Some(line) = line {
                    line.log(reconnect_max_ms);
                }
            }
        });
    // With retry_on_initial_connect this returns at once and connects in the background, so
    // a host whose NATS is down at start still serves its local traffic.
    let client = match options.connect(servers).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "nats bridge: cannot create the client");
            return;
        }
    };
    tracing::info!(origin = %origin, "nats bridge started");
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let out_bytes = Rc::new(Cell::new(0));
    let forwarder = tokio::task::spawn_local(forward(
        client.clone(),
        out_rx,
        out_bytes.clone(),
        config.nats_subject_prefix.clone(),
        origin.clone(),
        stats.clone(),
    ));
    let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
    let (deep_tx, mut deep_rx) = mpsc::unbounded_channel();
    let deep = config
        .nats_jetstream
        .is_on()
        .then(|| Deep::new(client.clone(), &config, stats.clone()));
    if let Some(d) = &deep {
        tokio::task::spawn_local(d.clone().keep_ensuring());
    }
    let shard_id = link.id();
    let mut st = State {
        link,
        client,
        prefix: config.nats_subject_prefix.clone(),
        origin,
        shard_stats,
        stats,
        interest: Interest::default(),
        subs: HashMap::new(),
        streams: SelectAll::new(),
        sub_tx,
        out_tx,
        out_bytes,
        out_limit: config.nats_buffer_bytes as usize,
        pending: None,
        batch: Vec::new(),
        deflate: ShardDeflate::new(config.compression()),
        deep,
        deep_tx,
    };
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait(shard_id) => break,
            _ = poll_fn(|cx| st.link.poll_drain(cx, |i| st.batch.push(i))) => {
                st.handle_items();
                // A busy mesh re-arms the retry timer below on every turn: retry here too.
                st.deliver_pending();
                // Let the forwarder and the client's connection task run: on this one-thread
                // runtime a steady stream of local publishes would otherwise fill the
                // outbound buffer before anything drained it.
                tokio::task::yield_now().await;
            }
            Some((topic, generation, sub)) = sub_rx.recv() => st.attach(topic, generation, sub),
            Some((shard, item)) = deep_rx.recv() => st.deep_result(shard, item),
            _ = refresh.tick() => st.refresh(),
            _ = tokio::time::sleep(RETRY), if st.pending.is_some() => st.deliver_pending(),
            Some((topic, msg)) = st.streams.next(), if st.pending.is_none() => {
                st.inbound(topic, msg);
            }
        }
    }
    // Give what is queued for NATS a moment to leave (bounded: NATS may be down).
    drop(st.out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), st.client.flush()).await;
    tracing::info!("nats bridge stopped");
}

/// Forward local publishes to NATS in order (one connection: NATS keeps per-connection order,
/// which gives per-publisher order across hosts).
async fn forward(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    out_bytes: Rc<Cell<usize>>,
    prefix: String,
    origin: String,
    stats: Arc<BridgeStats>,
) {
    let mut batch = Vec::with_capacity(FORWARD_BATCH);
    let mut warned = false;
    while rx.recv_many(&mut batch, FORWARD_BATCH).await > 0 {
        for m in batch.drain(..) {
            // Released when handed over: the client's own small queue is not charged.
            out_bytes.set(out_bytes.get() - m.payload.len() - OUTBOUND_OVERHEAD);
            let mut headers = HeaderMap::new();
            headers.insert(subject::ORIGIN_HEADER, origin.as_str());
            headers.insert(subject::KIND_HEADER, subject::kind_name(m.kind));
            if let Some(at) = m.numbering {
                let epoch = at.epoch.to_string();
                headers.insert(subject::EPOCH_HEADER, epoch.as_str());
                headers.insert(subject::SEQ_HEADER, at.seq.to_string().as_str());
            }
            let subject = subject::subject(&prefix, &m.topic);
            match client
                .publish_with_headers(subject, headers, m.payload)
                .await
            {
                Ok(()) => add(&stats.messages_out, 1),
                Err(e) => {
                    // Over the server's max_payload, or the client is closing.
                    add(&stats.out_dropped, 1);
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, topic = %m.topic, "nats bridge: publish failed (further failures are only counted)");
                    }
                }
            }
        }
    }
}

impl State {
    /// Handle what the shards sent since the last drain.
    fn handle_items(&mut self) {
        let mut items = std::mem::take(&mut self.batch);
        for item in items.drain(..) {
            match item {
                MeshItem::Publish(env) => self.outbound(env),
                MeshItem::Interest { topic, shard, on } => self.interest_change(topic, shard, on),
                MeshItem::Pause(t) => self.pause(t, true),
                MeshItem::Resume(t) => self.pause(t, false),
                MeshItem::Deflate { topic, variant, on } => {
                    self.deflate.remote(&topic, variant, on);
                    let n = self.deflate.topics() as u64;
                    self.stats.compression.topics.store(n, Relaxed);
                }
                // Continuity: the home shard forwards local publishes with their number.
                MeshItem::Numbered(b) => {
                    let (env, at) = *b;
                    self.outbound_numbered(env, Some(at));
                }
                MeshItem::DeepFetch(f) => self.deep_fetch(*f),
                MeshItem::DeepHead { topic, shard } => self.deep_head(topic, shard),
                // Continuity items between shards.
                MeshItem::Sequenced(_)
                | MeshItem::SeqInterest { .. }
                | MeshItem::Ask { .. }
                | MeshItem::Answer(_)
                | MeshItem::Remote(_)
                | MeshItem::DeepFetched(_)
                | MeshItem::DeepHeadIs { .. } => {}
            }
        }
        self.batch = items;
    }

    /// A local publish: queue it for NATS, or count it when the queue is full.
    fn outbound(&mut self, env: Envelope) {
        self.outbound_numbered(env, None);
    }

    /// [`outbound`](Self::outbound) with the number the home shard gave it (continuity).
    fn outbound_numbered(&mut self, env: Envelope, numbering: Option<Position>) {
        // Our own frames: a valid server frame header, then the payload (no copy: a slice).
        let Ok(Some(h)) = parse_header(&env.frame, Role::Client) else {
            return;
        };
        let kind = match h.opcode {
            OpCode::Text => MessageKind::Text,
            _ => MessageKind::Binary,
        };
        let payload = env.frame.slice(h.header_len..);
        let cost = payload.len() + OUTBOUND_OVERHEAD;
        let used = self.out_bytes.get();
        if used + cost > self.out_limit {
            return add(&self.stats.out_dropped, 1);
        }
        let m = Outbound {
            topic: env.topic,
            kind,
            payload,
            numbering,
        };
        if self.out_tx.send(m).is_ok() {
            self.out_bytes.set(used + cost);
        } else {
            add(&self.stats.out_dropped, 1);
        }
    }

    fn interest_change(&mut self, topic: Arc<str>, shard: usize, on: bool) {
        match self.interest.set(&topic, shard, on) {
            Change::Subscribe(generation) => {
                let (client, tx) = (self.client.clone(), self.sub_tx.clone());
                let subject = subject::subject(&self.prefix, &topic);
                // Subscribing awaits the client's command queue (full while NATS is down), so
                // it runs beside the loop; a stale result is dropped (which unsubscribes).
                tokio::task::spawn_local(async move {
                    let sub = match client.subscribe(subject).await {
                        Ok(sub) => {
                            let _ = client.flush().await;
                            Some(sub)
                        }
                        Err(e) => {
                            crate::warn_limited!("nats bridge: subscribe failed", error = %e, topic = %topic);
                            None
                        }
                    };
                    let _ = tx.send((topic, generation, sub));
                });
            }
            Change::Unsubscribe => {
                if let Some(ctl) = self.subs.remove(&topic) {
                    ctl.closed.set(true);
                    ctl.wake();
                }
            }
            Change::None => {}
        }
        self.gauges();
    }

    /// A subscription finished subscribing: keep it if its interest is still current.
    fn attach(&mut self, topic: Arc<str>, generation: u64, sub: Option<Subscriber>) {
        let Some(sub) = sub else { return };
        if !self.interest.is_current(&topic, generation) {
            return; // dropped: unsubscribes
        }
        let ctl = Rc::new(SubCtl {
            topic: topic.clone(),
            paused: Cell::new(self.interest.is_paused(&topic)),
            closed: Cell::new(false),
            waker: Cell::new(None),
        });
        self.subs.insert(topic, ctl.clone());
        self.streams.push(TopicStream { ctl, sub });
        self.gauges();
    }

    fn pause(&mut self, topic: Arc<str>, up: bool) {
        if let Some(paused) = self.interest.pause(&topic, up) {
            if let Some(ctl) = self.subs.get(&topic) {
                ctl.paused.set(paused);
                if !paused {
                    ctl.wake();
                }
            }
        }
    }

    /// A message from NATS: classify, encode once, deliver (or hold it until there is room).
    fn inbound(&mut self, topic: Arc<str>, msg: async_nats::Message) {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let kind = match subject::classify(
            header(subject::ORIGIN_HEADER),
            header(subject::KIND_HEADER),
            &msg.payload,
            &self.origin,
        ) {
            Inbound::Deliver(kind) => kind,
            Inbound::Own => return add(&self.stats.own_ignored, 1),
            Inbound::Invalid => return add(&self.stats.in_invalid, 1),
        };
        let mut env = Envelope::encode(topic, kind, &msg.payload, std::time::Instant::now());
        // permessage-deflate: compressed once here for every shard (`crate::deflate`).
        let z = &self.stats.compression;
        env.deflated =
            self.deflate
                .compress(&env.topic, kind, &env.frame, env.stream_frame.as_ref(), z);
        let numbering =
            subject::numbering(header(subject::EPOCH_HEADER), header(subject::SEQ_HEADER));
        self.pending = Some(Pending {
            env,
            stalled: false,
            numbering,
        });
        self.deliver_pending();
    }

    /// Send the pending message to every interested shard if all of them can take it now;
    /// otherwise keep it (pulling stops until it is delivered).
    fn deliver_pending(&mut self) {
        let Some(p) = &mut self.pending else { return };
        // Continuity: every message also goes to its topic's home shard, which numbers it
        // (`MeshItem::Remote`); interest above the shard count is a home shard's interest
        // for its sequenced subscribers elsewhere (not a destination).
        let n = self.shard_stats.len();
        let home = crate::continuity::home_shard(&p.env.topic, n);
        let shards = self.interest.shards(&p.env.topic);
        let blocked = shards
            .iter()
            .filter(|&&s| s < n)
            .chain(std::iter::once(&home))
            .any(|&s| !self.link.has_room(s) || overloaded(&self.shard_stats[s]));
        if blocked {
            if !std::mem::replace(&mut p.stalled, true) {
                add(&self.stats.in_stalls, 1);
            }
            return;
        }
        let p = self.pending.take().expect("checked above");
        let shards = self.interest.shards(&p.env.topic);
        // No interested shard any more (the last subscriber left meanwhile): nothing to do.
        if shards.is_empty() {
            return;
        }
        // One record for every copy: the frame is one allocation, charged once.
        let plain: Vec<usize> = shards
            .iter()
            .copied()
            .filter(|&s| s < n && s != home)
            .collect();
        if !plain.is_empty() {
            self.link.broadcast(plain, MeshItem::Publish(p.env.clone()));
        }
        self.link
            .send(home, MeshItem::Remote(Box::new((p.env, p.numbering))));
        self.link.flush();
        add(&self.stats.messages_in, 1);
    }

    /// A shard's resume needs a range from deep history: fetch it beside the loop.
    fn deep_fetch(&mut self, fetch: Fetch) {
        let Some(deep) = self.deep.clone() else {
            // Not configured here (the shards offer deep history only when it is).
            let f = Fetched {
                ticket: fetch.ticket,
                result: Err(Failure::Unavailable),
            };
            return self.deep_result(fetch.shard, MeshItem::DeepFetched(Box::new(f)));
        };
        let tx = self.deep_tx.clone();
        tokio::task::spawn_local(async move {
            let result = deep.fetch(&fetch).await;
            let ticket = fetch.ticket;
            let f = Fetched { ticket, result };
            let _ = tx.send((fetch.shard, MeshItem::DeepFetched(Box::new(f))));
        });
    }

    /// A home shard needs the numbering of `topic`'s last message in the stream: look it up
    /// beside the loop.
    fn deep_head(&mut self, topic: Arc<str>, shard: usize) {
        let Some(deep) = self.deep.clone() else {
            let item = MeshItem::DeepHeadIs {
                topic,
                stored: None,
            };
            return self.deep_result(shard, item);
        };
        let tx = self.deep_tx.clone();
        tokio::task::spawn_local(async move {
            let stored = deep.head(&topic).await;
            let _ = tx.send((shard, MeshItem::DeepHeadIs { topic, stored }));
        });
    }

    /// A deep-history request finished: hand the result to the shard that asked (an
    /// overflowing ring keeps it in the link's overflow queue, retried on every flush: at most
    /// one chunk per pending resume).
    fn deep_result(&mut self, shard: usize, item: MeshItem) {
        self.link.send(shard, item);
        self.link.flush();
    }

    /// Refresh the link state, reconnect count and gauges.
    fn refresh(&mut self) {
        // Retry what waits in overflow (deep-history results).
        self.link.flush();
        let now = monotonic_ms();
        let connects = self.client.statistics().connects.load(Relaxed);
        let state = match self.client.connection_state() {
            async_nats::connection::State::Connected => LinkState::Up,
            _ if connects == 0 => LinkState::Connecting,
            _ => LinkState::Down,
        };
        self.stats.set_state(state, now);
        self.stats
            .reconnects
            .store(connects.saturating_sub(1), Relaxed);
        self.stats
            .out_buffered_bytes
            .store(self.out_bytes.get() as u64, Relaxed);
        self.gauges();
    }

    fn gauges(&self) {
        let s = &self.stats;
        s.subscriptions.store(self.subs.len() as u64, Relaxed);
        s.interested_topics
            .store(self.interest.len() as u64, Relaxed);
    }
}

/// A shard whose queued frames hold more than the /health overload share of its ceiling
/// takes nothing more from NATS until it is back under.
fn overloaded(s: &ShardStats) -> bool {
    crate::obs::health::overloaded(get(&s.retained_bytes), get(&s.queue_ceiling_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        assert_eq!(backoff(0, 2000), Duration::ZERO);
        assert_eq!(backoff(1, 2000), Duration::ZERO);
        for (attempt, base) in [
            (2, 50),
            (3, 100),
            (4, 200),
            (7, 1600),
            (8, 2000),
            (60, 2000),
        ] {
            let d = backoff(attempt, 2000).as_millis() as u64;
            assert!(
                d <= base && d >= base - base / 4,
                "attempt {attempt}: {d} ms"
            );
        }
        assert!(backoff(30, 100).as_millis() <= 100);
    }

    #[test]
    fn servers_parse_lists_and_reject_garbage() {
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert_eq!(servers("nats://a:4222, nats://b:4222").unwrap().len(), 2);
        assert!(servers("nats://a:notaport").is_err());
    }

    #[test]
    fn overload_mark_matches_health() {
        let s = ShardStats::default();
        s.queue_ceiling_bytes.store(1000, Relaxed);
        s.retained_bytes.store(900, Relaxed);
        assert!(!overloaded(&s));
        s.retained_bytes.store(901, Relaxed);
        assert!(overloaded(&s));
        s.queue_ceiling_bytes.store(0, Relaxed);
        assert!(!overloaded(&s), "no ceiling known yet");
    }
}
