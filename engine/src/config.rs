//! Server configuration: one set of option names shared by CLI flags (`--shards`), TOML keys
//! (`shards`) in an optional `--config` file, and `SHARDCAST_*` environment variables.
//!
//! Precedence is CLI > env > file > defaults. clap folds the environment into the CLI layer
//! (a flag beats its variable); the file layer then fills whatever is still unset, and
//! [`Config::default`]-style defaults fill the rest. Every layer is an [`Overrides`] with all
//! fields optional, so "unset" is distinguishable from "set to the default".

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::deflate::settings::{Switch, TopicRule};
use crate::flow::limits;
use crate::flow::policy::{Action, Policy, TopicPolicy};
use crate::obs::latency::Recording;
use crate::obs::logging::LogFormat;
use crate::tls::options::{ClientAuth, Tickets, TlsOptions, TlsVersion};

pub use crate::ops::capacity::DEFAULT_QUEUE_CEILING_PCT;

pub use crate::bytesize::ByteSize;
pub use crate::runtime::select::Driver;

/// One `[[topic_policy]]` entry as configured: unset limits fall back to the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPolicySpec {
    /// Glob over topic names.
    pub pattern: String,
    /// Action above the high-water mark.
    pub policy: Action,
    /// High-water mark in bytes (default: the global one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water_bytes: Option<ByteSize>,
    /// Low-water mark in bytes (default: a quarter of this entry's high-water mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_water_bytes: Option<ByteSize>,
    /// Messages `drop-oldest` keeps (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
}

impl std::str::FromStr for TopicPolicySpec {
    type Err = String;

    /// `PATTERN=POLICY[,high_water_bytes=N][,low_water_bytes=N][,keep=N]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=POLICY[,key=value...]"))?;
        let mut parts = rest.split(',');
        let policy = <Action as clap::ValueEnum>::from_str(parts.next().unwrap_or("").trim(), true)
            .map_err(|_| format!("{s:?}: policy must be evict, conflate, drop-oldest or pause"))?;
        let mut spec = TopicPolicySpec {
            pattern: pattern.trim().to_owned(),
            policy,
            high_water_bytes: None,
            low_water_bytes: None,
            keep: None,
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{s:?}: {kv:?} is not key=value"))?;
            let v = v.trim();
            match k.trim() {
                "high_water_bytes" => spec.high_water_bytes = Some(v.parse()?),
                "low_water_bytes" => spec.low_water_bytes = Some(v.parse()?),
                "keep" => {
                    spec.keep = Some(
                        v.parse()
                            .map_err(|_| format!("keep: {v:?} is not a number"))?,
                    )
                }
                other => return Err(format!("{s:?}: unknown key {other:?}")),
            }
        }
        if spec.pattern.is_empty() {
            return Err(format!("{s:?}: empty pattern"));
        }
        Ok(spec)
    }
}

/// A named set of defaults (`--profile`); explicit options still win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// shardcast's own defaults.
    Default,
    /// Binance's spot stream contract: ping every 20 s, pong within 60 s, 24 h connection
    /// lifetime, control messages up to 64 KiB (a SUBSCRIBE of 1024 streams); the inbound
    /// limits already default to Binance's 5 messages/s, 1024 streams and 300 connection
    /// attempts per 5 minutes.
    Binance,
}

/// Where the admin listener binds, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin listener.
    Off,
    /// Bind this address (port 0 picks a free port).
    On(SocketAddr),
}

impl AdminListen {
    /// The address, unless off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::On(a) => Some(a),
        }
    }
}

impl std::str::FromStr for AdminListen {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" => Ok(AdminListen::Off),
            a => a.parse().map(AdminListen::On),
        }
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::On(a) => a.fmt(f),
        }
    }
}

// As a string in TOML ("off" or an address), so `--print-config` output reads back.
impl Serialize for AdminListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The effective configuration after merging every layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Data listener address.
    pub listen: SocketAddr,
    /// Join a data port other SO_REUSEPORT listeners already use (zero-downtime handover)
    /// instead of refusing to start.
    pub reuse_port_handover: bool,
    /// Admin listener address, or off.
    pub admin_listen: AdminListen,
    /// /health reports a shard stalled when its loop has not ticked for this long.
    pub health_stall_ms: u64,
    /// Directory for per-shard HdrHistogram interval logs; `None` writes none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram_log: Option<PathBuf>,
    /// Period of the interval logs.
    pub histogram_log_interval_ms: u64,
    /// Whether shards record histograms (latencies, eviction stalls, queue depths) at all.
    pub latency_recording: Recording,
    /// Number of shards (threads, one per CPU).
    pub shards: usize,
    /// I/O driver.
    pub driver: Driver,
    /// Static token that may publish and subscribe anything (`access`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_token: Option<String>,
    /// Global connection limit (one process-wide counter checked at accept).
    pub max_connections: usize,
    /// Where `max_connections` came from: "config", or the limit its default derives from,
    /// "nofile" (RLIMIT_NOFILE) or "memory" (`memory_limit`).
    pub max_connections_source: String,
    /// Per-shard connection limit; `None`: only the global limit applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_shard: Option<usize>,
    /// Time a client has to complete the HTTP upgrade.
    pub handshake_timeout_ms: u64,
    /// Largest accepted HTTP request head.
    pub max_header_bytes: usize,
    /// Most headers accepted in a request head.
    pub max_headers: usize,
    /// Largest message from publishers, rooms and echo clients.
    pub max_message_bytes: usize,
    /// Largest message from subscribers (they only send control messages).
    pub max_control_message_bytes: usize,
    /// Most topics one connection may subscribe to.
    pub max_topics_per_connection: usize,
    /// Entries per inter-shard ring (one ring per ordered pair of shards).
    pub ring_capacity: usize,
    /// listen(2) backlog per shard listener.
    pub listen_backlog: u32,
    /// How long shutdown waits for queued frames to flush.
    pub shutdown_grace_ms: u64,
    /// How long a connection whose close frame is queued may take to flush it (or, during
    /// shutdown, go without write progress) before it is reset.
    pub close_flush_timeout_ms: u64,
    /// On shutdown, how long after the `serverShutdown` event clients are closed.
    pub shutdown_notice_ms: u64,
    /// The defaults profile in effect.
    pub profile: Profile,
    /// tracing EnvFilter directive.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Ping every this many ms (0 = no pings).
    pub ping_interval_ms: u64,
    /// Close a client that sends nothing within this many ms of a ping (0 = never).
    pub pong_timeout_ms: u64,
    /// Close a client that sends no frame at all (pongs included) for this long (0 = off).
    pub idle_timeout_ms: u64,
    /// Close every connection after at most this long (0 = off).
    pub max_lifetime_ms: u64,
    /// Up to this percentage is taken off each connection's lifetime, spread per connection.
    pub lifetime_jitter_pct: u8,
    /// Close (1008) a connection that leaves a message or frame unfinished this long (0 = off).
    pub fragment_timeout_ms: u64,
    /// Most subscriptions over all connections (split evenly over the shards).
    pub max_subscriptions: usize,
    /// Policy for topics no `topic_policy` pattern matches.
    pub default_policy: Action,
    /// Default high-water mark of a connection's send queue, in bytes.
    pub high_water_bytes: usize,
    /// SO_SNDBUF of every connection (set on the listeners, inherited at accept); 0 leaves
    /// the kernel's autotuning (up to tcp_wmem's max).
    pub send_buffer_bytes: usize,
    /// Default low-water mark, in bytes.
    pub low_water_bytes: usize,
    /// Memory limit the queue ceiling is a share of (configured, else cgroup v2 memory.max,
    /// else MemTotal).
    pub memory_limit: u64,
    /// Where `memory_limit` came from: "config", "cgroup" or "meminfo".
    pub memory_limit_source: String,
    /// Percent of `memory_limit` that queued frames may hold, process-wide.
    pub queue_ceiling_pct: u32,
    /// NATS server(s) the bridge connects to (comma-separated URLs); `None`: no bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Prepended to every topic to form its NATS subject.
    pub nats_subject_prefix: String,
    /// Bytes of local publishes held for NATS while it is slow or down (payload + 64 per
    /// message); more are dropped and counted.
    pub nats_buffer_bytes: u64,
    /// Messages from NATS held per topic while the shards cannot take them; more are dropped
    /// by the NATS client (slow consumer) and counted.
    pub nats_pending_messages: usize,
    /// Longest wait between two reconnection attempts to NATS.
    pub nats_reconnect_max_ms: u64,
    /// Continuity: resume older than the local history from a JetStream stream (deep history).
    pub nats_jetstream: Switch,
    /// The JetStream stream capturing `PREFIX>` (created if missing, never changed if present).
    pub nats_jetstream_stream: String,
    /// When shardcast creates the stream: messages it keeps per subject (topic).
    pub nats_jetstream_max_messages: u64,
    /// When shardcast creates the stream: longest it keeps a message, in ms.
    pub nats_jetstream_max_age_ms: u64,
    /// Longest one deep-history fetch may take before the client is told `trimmed`.
    pub nats_jetstream_timeout_ms: u64,
    /// Access control and inbound limits (`access/config.rs`).
    #[serde(flatten)]
    pub access: crate::access::config::AccessConfig,
    /// permessage-deflate offered to clients (compressed once per message for the process).
    pub compression: Switch,
    /// Messages shorter than this are never compressed.
    pub compression_min_bytes: usize,
    /// Compression level, 1 (fastest) to 12 (smallest).
    pub compression_level: u8,
    /// A second, plain listener next to a TLS `listen` (internal traffic); `None`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_plain: Option<SocketAddr>,
    /// PEM certificate chain of the data listener; `None`: plain ws://.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Lowest TLS version accepted.
    pub tls_min_version: TlsVersion,
    /// PEM CA certificate(s) that client certificates must chain to; `None`: no client auth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (with `tls_client_ca`).
    pub tls_client_auth: ClientAuth,
    /// Stateless session tickets for resumption.
    pub tls_session_tickets: Tickets,
    /// Per-topic policies, first matching pattern wins (last: TOML tables follow values).
    pub topic_policy: Vec<TopicPolicy>,
    /// Per-topic compression on/off, first matching pattern wins, unmatched topics on (tables
    /// last, like `topic_policy`).
    pub compression_topic: Vec<TopicRule>,
    /// Continuity: history bounds per topic pattern, first match wins (validated
    /// `continuity::history::HistoryRule`s); topics no rule matches keep the default.
    pub topic_history: Vec<String>,
}

/// One configuration layer: every option optional. Parsed from the CLI (+ env by clap) and
/// deserialized from the TOML file; the field names are the single source of option names.
#[derive(Clone, Debug, Default, Parser, Deserialize)]
#[command(
    name = "shardcast",
    version,
    about = "Thread-per-core WebSocket broadcast server"
)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Data listener address [default: 0.0.0.0:8080]
    #[arg(long, env = "SHARDCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Share the data port with listeners already on it (another shardcast, for a zero-downtime handover: start the new one with this flag, then stop the old one); without it start-up refuses a port another process listens on [default: false]
    #[arg(long, env = "SHARDCAST_REUSE_PORT_HANDOVER", num_args = 0..=1, default_missing_value = "true")]
    pub reuse_port_handover: Option<bool>,
    /// Admin listener (/health, /stats, /metrics, /histograms, /dashboard); `off` or empty disables it [default: 127.0.0.1:9090]
    #[arg(long, env = "SHARDCAST_ADMIN_LISTEN")]
    pub admin_listen: Option<AdminListen>,
    /// /health answers 503 when a shard's loop has not ticked for this many ms [default: 2000]
    #[arg(long, env = "SHARDCAST_HEALTH_STALL_MS")]
    pub health_stall_ms: Option<u64>,
    /// Write each shard's latency histograms as HdrHistogram interval logs into this directory (DIR/shard-N.KIND.hlog, rotated at 64 MiB, 4 kept) [default: none]
    #[arg(long, env = "SHARDCAST_HISTOGRAM_LOG")]
    pub histogram_log: Option<PathBuf>,
    /// Interval of the histogram logs in ms [default: 10000]
    #[arg(long, env = "SHARDCAST_HISTOGRAM_LOG_INTERVAL_MS")]
    pub histogram_log_interval_ms: Option<u64>,
    /// Record histograms: latencies, eviction stalls, queue depth samples (off only to measure their cost; /stats then shows zeros) [default: on]
    #[arg(long, env = "SHARDCAST_LATENCY_RECORDING")]
    pub latency_recording: Option<Recording>,
    /// Number of shards, one thread per CPU [default: all CPUs in the affinity mask]
    #[arg(long, env = "SHARDCAST_SHARDS")]
    pub shards: Option<usize>,
    /// I/O driver: auto (io_uring, epoll where the kernel refuses io_uring), uring or epoll [default: auto]
    #[arg(long, env = "SHARDCAST_DRIVER")]
    pub driver: Option<Driver>,
    /// Static token that may publish (and subscribe) anything: Authorization: Bearer, ?token= or the subprotocol shardcast.token.<token> [default: none]
    #[arg(long, env = "SHARDCAST_PUBLISH_TOKEN")]
    pub publish_token: Option<String>,
    /// Global connection limit, one process-wide count checked at accept (over it: 503) [default: what RLIMIT_NOFILE (hard, minus 64 + 8 per shard) and memory_limit (95% / 4312 B per connection) both allow]
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Per-shard connection limit, on top of the global one [default: none]
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS_PER_SHARD")]
    pub max_connections_per_shard: Option<usize>,
    /// Time a client has to complete the upgrade, in ms [default: 10000]
    #[arg(long, env = "SHARDCAST_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Largest HTTP request head in bytes; suffixes K/M/G/KiB/MiB/GiB [default: 8192]
    #[arg(long, env = "SHARDCAST_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<ByteSize>,
    /// Most headers in a request head [default: 32]
    #[arg(long, env = "SHARDCAST_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Largest message from publishers, rooms and echo clients, in bytes; suffixes K/M/G/KiB/MiB/GiB [default: 1MiB]
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<ByteSize>,
    /// Largest (control) message from subscribers, in bytes; suffixes K/M/G/KiB/MiB/GiB [default: 4096; 64KiB with --profile binance]
    #[arg(long, env = "SHARDCAST_MAX_CONTROL_MESSAGE_BYTES")]
    pub max_control_message_bytes: Option<ByteSize>,
    /// Most topics per connection [default: 1024]
    #[arg(long, env = "SHARDCAST_MAX_TOPICS_PER_CONNECTION")]
    pub max_topics_per_connection: Option<usize>,
    /// Entries per inter-shard ring [default: 4096]
    #[arg(long, env = "SHARDCAST_RING_CAPACITY")]
    pub ring_capacity: Option<usize>,
    /// listen(2) backlog [default: 4096]
    #[arg(long, env = "SHARDCAST_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Shutdown flush deadline in ms [default: 5000]
    #[arg(long, env = "SHARDCAST_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// A connection whose close frame (eviction 1013, timeout, protocol error, shutdown) is not flushed within this many ms (during shutdown: makes no write progress for this long) is reset (RST), freeing its descriptor and kernel buffers, 1 or more [default: 500]
    #[arg(long, env = "SHARDCAST_CLOSE_FLUSH_TIMEOUT_MS")]
    pub close_flush_timeout_ms: Option<u64>,
    /// On SIGINT/SIGTERM every client first gets the text event {"e":"serverShutdown","E":<ms>}; clients are closed (1001) this many ms later [default: 0]
    #[arg(long, env = "SHARDCAST_SHUTDOWN_NOTICE_MS")]
    pub shutdown_notice_ms: Option<u64>,
    /// Defaults profile: binance = ping every 20 s, pong within 60 s, 24 h lifetime, 64 KiB control messages (explicit options still win) [default: default]
    #[arg(long, env = "SHARDCAST_PROFILE")]
    pub profile: Option<Profile>,
    /// Log filter, tracing EnvFilter syntax; the NATS client (async_nats) is capped at warn unless the filter names it [default: info]
    #[arg(long, env = "SHARDCAST_LOG")]
    pub log: Option<String>,
    /// Log line format on stderr: text (coloured only on a terminal, never with NO_COLOR set) or json (one object per line with timestamp, level, target, fields) [default: text]
    #[arg(long, env = "SHARDCAST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Send a ping every this many ms; 0 disables pings [default: 25000]
    #[arg(long, env = "SHARDCAST_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Close (1001 "pong timeout") a client that sends no frame within this many ms of a ping; 0 = never [default: 10000]
    #[arg(long, env = "SHARDCAST_PONG_TIMEOUT_MS")]
    pub pong_timeout_ms: Option<u64>,
    /// Close (1001 "idle timeout") a client that sends no frame at all, pongs included, for this many ms; 0 = off, pongs already keep subscribers alive [default: 0]
    #[arg(long, env = "SHARDCAST_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Close (1001 "max connection lifetime") every connection after at most this many ms; 0 = off [default: 0]
    #[arg(long, env = "SHARDCAST_MAX_LIFETIME_MS")]
    pub max_lifetime_ms: Option<u64>,
    /// Spread lifetimes: each connection loses up to this percentage of max_lifetime_ms, 0-100 [default: 10]
    #[arg(long, env = "SHARDCAST_LIFETIME_JITTER_PCT")]
    pub lifetime_jitter_pct: Option<u8>,
    /// Close (1008 "message timeout") a client that leaves a fragmented message, or one frame, unfinished for this many ms, pings in between or not; 0 = never [default: 10000]
    #[arg(long, env = "SHARDCAST_FRAGMENT_TIMEOUT_MS")]
    pub fragment_timeout_ms: Option<u64>,
    /// Most subscriptions over all connections, split evenly over the shards; over it SUBSCRIBE gets error 4 and an upgrade naming topics gets 503 [default: 10% of memory_limit at 512 B per subscription]
    #[arg(long, env = "SHARDCAST_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Policy above the high-water mark for topics no --topic-policy matches: evict (close 1013), conflate, drop-oldest or pause [default: evict]
    #[arg(long, env = "SHARDCAST_DEFAULT_POLICY")]
    pub default_policy: Option<Action>,
    /// High-water mark per connection: kernel send buffer plus what is queued behind the frame being written; must be at least max_message_bytes + 159 + 2.5 x send_buffer_bytes (+ 72 KiB with TLS; checked at start); suffixes K/M/G/KiB/MiB/GiB [default: 2MiB, raised to that minimum when larger]
    #[arg(long, env = "SHARDCAST_HIGH_WATER_BYTES")]
    pub high_water_bytes: Option<ByteSize>,
    /// Kernel send buffer per connection (SO_SNDBUF; the kernel holds up to twice this); 0 leaves autotuning up to tcp_wmem's max; suffixes K/M/G/KiB/MiB/GiB [default: 256KiB]
    #[arg(long, env = "SHARDCAST_SEND_BUFFER_BYTES")]
    pub send_buffer_bytes: Option<ByteSize>,
    /// Send-queue low-water mark (a paused topic resumes, a slow client counts as caught up, below it) [default: high_water_bytes / 4]
    #[arg(long, env = "SHARDCAST_LOW_WATER_BYTES")]
    pub low_water_bytes: Option<ByteSize>,
    /// Per-topic policy, repeatable, first match wins: 'PATTERN=POLICY[,high_water_bytes=N][,low_water_bytes=N][,keep=N]' with globs (* ?); env: ';'-separated; TOML: [[topic_policy]] tables with the same keys plus pattern and policy [default: none]
    #[arg(long, env = "SHARDCAST_TOPIC_POLICY", value_delimiter = ';')]
    pub topic_policy: Option<Vec<TopicPolicySpec>>,
    /// Continuity: history kept per topic pattern for resume (seq=1), repeatable, first match wins: 'PATTERN=off' or 'PATTERN=messages=N[,bytes=SIZE][,age_ms=MS]' with globs (* ?); env: ';'-separated [default: every topic keeps its last 64 messages, 64 KiB, 60 s]
    #[arg(long, env = "SHARDCAST_TOPIC_HISTORY", value_delimiter = ';')]
    pub topic_history: Option<Vec<String>>,
    /// Memory limit the queue ceiling is a share of; suffixes K/M/G/KiB/MiB/GiB [default: cgroup v2 memory.max, else MemTotal]
    #[arg(long, env = "SHARDCAST_MEMORY_LIMIT")]
    pub memory_limit: Option<ByteSize>,
    /// Percent of the memory limit that queued frames may hold (split evenly over the shards) [default: 5]
    #[arg(long, env = "SHARDCAST_QUEUE_CEILING_PCT")]
    pub queue_ceiling_pct: Option<u32>,
    /// Join the topic space of other hosts through NATS: server URL(s), comma-separated (nats://host:4222); without it nothing NATS-related runs [default: none]
    #[arg(long, env = "SHARDCAST_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS subject prefix: topic T is subject PREFIX + T (empty dot-separated tokens become ~); empty, or tokens each followed by a dot [default: shardcast.]
    #[arg(long, env = "SHARDCAST_NATS_SUBJECT_PREFIX")]
    pub nats_subject_prefix: Option<String>,
    /// Local publishes held for NATS while it is slow or unreachable, in bytes (payload + 64 per message; the forwarder and the client hold up to 192 more messages); beyond that they are dropped and counted; suffixes K/M/G/KiB/MiB/GiB [default: 64MiB]
    #[arg(long, env = "SHARDCAST_NATS_BUFFER_BYTES")]
    pub nats_buffer_bytes: Option<ByteSize>,
    /// Messages from NATS held per topic while the shards cannot take them (rings full, ceiling pressure, topic paused); beyond that NATS drops them as a slow consumer, counted [default: 8192]
    #[arg(long, env = "SHARDCAST_NATS_PENDING_MESSAGES")]
    pub nats_pending_messages: Option<usize>,
    /// Longest wait between reconnection attempts to NATS, in ms (backoff doubles from 50 ms up to this) [default: 2000]
    #[arg(long, env = "SHARDCAST_NATS_RECONNECT_MAX_MS")]
    pub nats_reconnect_max_ms: Option<u64>,
    /// Continuity: on = a resume older than the local history reads the missing range from a JetStream stream (nats-server -js), so a client resumes on any host as far back as the stream keeps; needs --nats-url [default: off]
    #[arg(long, env = "SHARDCAST_NATS_JETSTREAM")]
    pub nats_jetstream: Option<Switch>,
    /// JetStream stream holding the topics' subjects (PREFIX>): created with the two settings below if missing; an existing one is used as configured, never changed [default: SHARDCAST]
    #[arg(long, env = "SHARDCAST_NATS_JETSTREAM_STREAM")]
    pub nats_jetstream_stream: Option<String>,
    /// Messages the stream keeps per topic, when shardcast creates it [default: 100000]
    #[arg(long, env = "SHARDCAST_NATS_JETSTREAM_MAX_MESSAGES")]
    pub nats_jetstream_max_messages: Option<u64>,
    /// Longest the stream keeps a message, in ms, when shardcast creates it [default: 3600000]
    #[arg(long, env = "SHARDCAST_NATS_JETSTREAM_MAX_AGE_MS")]
    pub nats_jetstream_max_age_ms: Option<u64>,
    /// Longest one deep-history fetch may take, in ms; a fetch that does not finish in time ends in a `trimmed` resync, counted [default: 2000]
    #[arg(long, env = "SHARDCAST_NATS_JETSTREAM_TIMEOUT_MS")]
    pub nats_jetstream_timeout_ms: Option<u64>,
    /// Access control and inbound limits.
    #[command(flatten)]
    #[serde(flatten)]
    pub access: crate::access::config::AccessOverrides,
    /// permessage-deflate (RFC 7692) for clients that offer it: each message is compressed once for every compressing client of the process; off = never negotiated [default: on]
    #[arg(long, env = "SHARDCAST_COMPRESSION")]
    pub compression: Option<Switch>,
    /// Messages shorter than this many bytes are sent uncompressed; suffixes K/M/G/KiB/MiB/GiB [default: 128]
    #[arg(long, env = "SHARDCAST_COMPRESSION_MIN_BYTES")]
    pub compression_min_bytes: Option<ByteSize>,
    /// Compression level, 1 (fastest) to 12 (smallest), libdeflate's scale [default: 6]
    #[arg(long, env = "SHARDCAST_COMPRESSION_LEVEL")]
    pub compression_level: Option<u8>,
    /// Per-topic compression, repeatable, first match wins, unmatched topics compressed: 'PATTERN=on|off' with globs (* ?), e.g. 'video.*=off' for already-compressed payloads; env: ';'-separated; TOML: [[compression_topic]] tables with pattern and compression [default: none]
    #[arg(long, env = "SHARDCAST_COMPRESSION_TOPIC", value_delimiter = ';')]
    pub compression_topic: Option<Vec<TopicRule>>,
    /// Plain ws:// on this address next to a wss:// listen (internal traffic: every route, the same topics); needs tls_cert; one more SO_REUSEPORT listener per shard [default: none]
    #[arg(long, env = "SHARDCAST_LISTEN_PLAIN")]
    pub listen_plain: Option<SocketAddr>,
    /// Serve wss:// on listen with this PEM certificate chain (leaf first); reloaded with tls_key on SIGHUP [default: none, plain ws://]
    #[arg(long, env = "SHARDCAST_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the leaf certificate: PKCS#8, RSA (PKCS#1) or EC (SEC1); must match the certificate [default: none]
    #[arg(long, env = "SHARDCAST_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Lowest TLS version accepted, 1.2 or 1.3; TLS 1.3 is always preferred [default: 1.2]
    #[arg(long, env = "SHARDCAST_TLS_MIN_VERSION")]
    pub tls_min_version: Option<TlsVersion>,
    /// Verify client certificates against the CA certificate(s) in this PEM file [default: none, no client certificates]
    #[arg(long, env = "SHARDCAST_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With tls_client_ca: required (every client presents a valid certificate) or optional (a presented one must be valid) [default: required]
    #[arg(long, env = "SHARDCAST_TLS_CLIENT_AUTH")]
    pub tls_client_auth: Option<ClientAuth>,
    /// Stateless session tickets (resumed handshakes skip the certificate signature; no server memory): on or off [default: on]
    #[arg(long, env = "SHARDCAST_TLS_SESSION_TICKETS")]
    pub tls_session_tickets: Option<Tickets>,
    /// Informational key written by --print-config; ignored on input
    #[arg(skip)]
    #[serde(default)]
    pub memory_limit_source: Option<String>,
    /// Informational key written by --print-config; ignored on input
    #[arg(skip)]
    #[serde(default)]
    pub max_connections_source: Option<String>,
    /// TOML file with any of the options above (same names as keys)
    #[arg(long, env = "SHARDCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Check host limits against this configuration, print one line per check and exit, non-zero when a hard requirement fails [default: false]
    #[arg(long, env = "SHARDCAST_PREFLIGHT")]
    #[serde(skip)]
    pub preflight: bool,
}

/// Why a configuration could not be built.
#[derive(Debug)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    Read(PathBuf, std::io::Error),
    /// The `--config` file is not valid TOML for these options.
    Parse(PathBuf, toml::de::Error),
    /// A value is out of range.
    Invalid(&'static str),
    /// A back-pressure policy is inconsistent.
    Policy(String),
    /// Size limits that would let one accepted message evict a subscriber.
    Limits(String),
    /// An access option is invalid (or a key file unreadable).
    Access(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read config file {}: {e}", p.display()),
            Self::Parse(p, e) => write!(f, "invalid config file {}: {e}", p.display()),
            Self::Invalid(why) => write!(f, "invalid configuration: {why}"),
            Self::Policy(why) => write!(f, "invalid policy: {why}"),
            Self::Limits(why) => write!(f, "inconsistent limits: {why}"),
            Self::Access(why) => write!(f, "invalid access configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// CPUs in this process's affinity mask (at least 1).
pub fn available_cpus() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

impl Overrides {
    /// Fill every unset option of `self` from `lower` (a lower-precedence layer).
    fn or(self, lower: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(lower.listen),
            reuse_port_handover: self.reuse_port_handover.or(lower.reuse_port_handover),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            health_stall_ms: self.health_stall_ms.or(lower.health_stall_ms),
            histogram_log: self.histogram_log.or(lower.histogram_log),
            histogram_log_interval_ms: self
                .histogram_log_interval_ms
                .or(lower.histogram_log_interval_ms),
            latency_recording: self.latency_recording.or(lower.latency_recording),
            shards: self.shards.or(lower.shards),
            driver: self.driver.or(lower.driver),
            publish_token: self.publish_token.or(lower.publish_token),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_shard: self
                .max_connections_per_shard
                .or(lower.max_connections_per_shard),
            handshake_timeout_ms: self.handshake_timeout_ms.or(lower.handshake_timeout_ms),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            max_headers: self.max_headers.or(lower.max_headers),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            max_control_message_bytes: self
                .max_control_message_bytes
                .or(lower.max_control_message_bytes),
            max_topics_per_connection: self
                .max_topics_per_connection
                .or(lower.max_topics_per_connection),
            ring_capacity: self.ring_capacity.or(lower.ring_capacity),
            listen_backlog: self.listen_backlog.or(lower.listen_backlog),
            shutdown_grace_ms: self.shutdown_grace_ms.or(lower.shutdown_grace_ms),
            close_flush_timeout_ms: self.close_flush_timeout_ms.or(lower.close_flush_timeout_ms),
            shutdown_notice_ms: self.shutdown_notice_ms.or(lower.shutdown_notice_ms),
            profile: self.profile.or(lower.profile),
            access: self.access.or(lower.access),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            ping_interval_ms: self.ping_interval_ms.or(lower.ping_interval_ms),
            pong_timeout_ms: self.pong_timeout_ms.or(lower.pong_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(lower.idle_timeout_ms),
            max_lifetime_ms: self.max_lifetime_ms.or(lower.max_lifetime_ms),
            lifetime_jitter_pct: self.lifetime_jitter_pct.or(lower.lifetime_jitter_pct),
            fragment_timeout_ms: self.fragment_timeout_ms.or(lower.fragment_timeout_ms),
            max_subscriptions: self.max_subscriptions.or(lower.max_subscriptions),
            default_policy: self.default_policy.or(lower.default_policy),
            high_water_bytes: self.high_water_bytes.or(lower.high_water_bytes),
            send_buffer_bytes: self.send_buffer_bytes.or(lower.send_buffer_bytes),
            low_water_bytes: self.low_water_bytes.or(lower.low_water_bytes),
            topic_policy: self.topic_policy.or(lower.topic_policy),
            topic_history: self.topic_history.or(lower.topic_history),
            memory_limit: self.memory_limit.or(lower.memory_limit),
            memory_limit_source: self.memory_limit_source.or(lower.memory_limit_source),
            max_connections_source: self.max_connections_source.or(lower.max_connections_source),
            queue_ceiling_pct: self.queue_ceiling_pct.or(lower.queue_ceiling_pct),
            nats_url: self.nats_url.or(lower.nats_url),
            nats_subject_prefix: self.nats_subject_prefix.or(lower.nats_subject_prefix),
            nats_buffer_bytes: self.nats_buffer_bytes.or(lower.nats_buffer_bytes),
            nats_pending_messages: self.nats_pending_messages.or(lower.nats_pending_messages),
            nats_reconnect_max_ms: self.nats_reconnect_max_ms.or(lower.nats_reconnect_max_ms),
            nats_jetstream: self.nats_jetstream.or(lower.nats_jetstream),
            nats_jetstream_stream: self.nats_jetstream_stream.or(lower.nats_jetstream_stream),
            nats_jetstream_max_messages: self
                .nats_jetstream_max_messages
                .or(lower.nats_jetstream_max_messages),
            nats_jetstream_max_age_ms: self
                .nats_jetstream_max_age_ms
                .or(lower.nats_jetstream_max_age_ms),
            nats_jetstream_timeout_ms: self
                .nats_jetstream_timeout_ms
                .or(lower.nats_jetstream_timeout_ms),
            compression: self.compression.or(lower.compression),
            compression_min_bytes: self.compression_min_bytes.or(lower.compression_min_bytes),
            compression_level: self.compression_level.or(lower.compression_level),
            compression_topic: self.compression_topic.or(lower.compression_topic),
            listen_plain: self.listen_plain.or(lower.listen_plain),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_min_version: self.tls_min_version.or(lower.tls_min_version),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            tls_client_auth: self.tls_client_auth.or(lower.tls_client_auth),
            tls_session_tickets: self.tls_session_tickets.or(lower.tls_session_tickets),
            config: self.config.or(lower.config),
            print_config: self.print_config || lower.print_config,
            preflight: self.preflight || lower.preflight,
        }
    }

    /// Merge this (CLI + env) layer with the file it names, then defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str::<Overrides>(&text)
                    .map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
            None => Overrides::default(),
        };
        self.or(file).finish()
    }

    /// Apply defaults to whatever is still unset and validate.
    fn finish(self) -> Result<Config, ConfigError> {
        let profile = self.profile.unwrap_or(Profile::Default);
        let binance = profile == Profile::Binance;
        let shards = self.shards.unwrap_or_else(available_cpus);
        if shards == 0 {
            return Err(ConfigError::Invalid("shards must be at least 1"));
        }
        let size = |b: Option<ByteSize>| b.map(|b| b.0 as usize);
        let max_message_bytes = size(self.max_message_bytes).unwrap_or(1 << 20);
        let send_buffer_bytes = size(self.send_buffer_bytes).unwrap_or(DEFAULT_SEND_BUFFER);
        // An unset mark is at least what one accepted message needs (limits.rs).
        let default_high = crate::flow::policy::DEFAULT_HIGH_WATER.max(limits::min_high_water(
            max_message_bytes,
            kernel_allowance(send_buffer_bytes, self.tls_cert.is_some()),
        ));
        let default = Policy::resolve(
            self.default_policy.unwrap_or(Action::Evict),
            size(self.high_water_bytes),
            size(self.low_water_bytes),
            None,
            default_high,
        )
        .map_err(ConfigError::Policy)?;
        let topic_policy = self
            .topic_policy
            .unwrap_or_default()
            .into_iter()
            .map(|spec| {
                let resolved = Policy::resolve(
                    spec.policy,
                    size(spec.high_water_bytes),
                    size(spec.low_water_bytes),
                    spec.keep,
                    default.high_water_bytes,
                )
                .map_err(|e| ConfigError::Policy(format!("topic_policy {}: {e}", spec.pattern)))?;
                Ok(TopicPolicy {
                    pattern: spec.pattern,
                    resolved,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let topic_history = self.topic_history.unwrap_or_default();
        for rule in &topic_history {
            rule.parse::<crate::continuity::history::HistoryRule>()
                .map_err(|e| ConfigError::Policy(format!("topic_history: {e}")))?;
        }
        let (memory_limit, source) = match self.memory_limit {
            Some(b) => (b.0, "config"),
            None => crate::ops::host::memory_limit_or_default(),
        };
        if memory_limit == 0 {
            return Err(ConfigError::Invalid("memory_limit must be positive"));
        }
        let (max_connections, max_connections_source) = match self.max_connections {
            Some(n) => (n, "config"),
            None => crate::ops::capacity::default_max_connections(
                crate::rlimit::nofile().ok().map(|n| n.hard),
                shards,
                memory_limit,
            ),
        };
        let config = Config {
            listen: self.listen.unwrap_or(([0, 0, 0, 0], 8080).into()),
            reuse_port_handover: self.reuse_port_handover.unwrap_or(false),
            admin_listen: self
                .admin_listen
                .unwrap_or(AdminListen::On(([127, 0, 0, 1], 9090).into())),
            health_stall_ms: self.health_stall_ms.unwrap_or(2000),
            histogram_log: self.histogram_log,
            histogram_log_interval_ms: self.histogram_log_interval_ms.unwrap_or(10_000),
            latency_recording: self.latency_recording.unwrap_or(Recording::On),
            shards,
            driver: self.driver.unwrap_or(Driver::Auto),
            publish_token: self.publish_token,
            max_connections,
            max_connections_source: max_connections_source.to_owned(),
            max_connections_per_shard: self.max_connections_per_shard,
            handshake_timeout_ms: self.handshake_timeout_ms.unwrap_or(10_000),
            max_header_bytes: size(self.max_header_bytes).unwrap_or(8192),
            max_headers: self.max_headers.unwrap_or(32),
            max_message_bytes,
            // Binance clients SUBSCRIBE up to 1024 streams in one message.
            max_control_message_bytes: size(self.max_control_message_bytes).unwrap_or(if binance {
                65_536
            } else {
                4096
            }),
            max_topics_per_connection: self.max_topics_per_connection.unwrap_or(1024),
            ring_capacity: self.ring_capacity.unwrap_or(4096),
            listen_backlog: self.listen_backlog.unwrap_or(4096),
            shutdown_grace_ms: self.shutdown_grace_ms.unwrap_or(5000),
            close_flush_timeout_ms: self.close_flush_timeout_ms.unwrap_or(500),
            shutdown_notice_ms: self.shutdown_notice_ms.unwrap_or(0),
            profile,
            log: self.log.unwrap_or_else(|| "info".to_owned()),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            ping_interval_ms: self.ping_interval_ms.unwrap_or(if binance {
                20_000
            } else {
                25_000
            }),
            pong_timeout_ms: self
                .pong_timeout_ms
                .unwrap_or(if binance { 60_000 } else { 10_000 }),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(0),
            max_lifetime_ms: self
                .max_lifetime_ms
                .unwrap_or(if binance { 86_400_000 } else { 0 }),
            lifetime_jitter_pct: self.lifetime_jitter_pct.unwrap_or(10),
            fragment_timeout_ms: self.fragment_timeout_ms.unwrap_or(10_000),
            max_subscriptions: self
                .max_subscriptions
                .unwrap_or_else(|| default_max_subscriptions(memory_limit)),
            default_policy: default.policy,
            high_water_bytes: default.high_water_bytes,
            send_buffer_bytes,
            low_water_bytes: default.low_water_bytes,
            memory_limit,
            memory_limit_source: source.to_owned(),
            queue_ceiling_pct: self.queue_ceiling_pct.unwrap_or(DEFAULT_QUEUE_CEILING_PCT),
            // An empty URL (e.g. SHARDCAST_NATS_URL= in a unit file) means no bridge.
            nats_url: self.nats_url.filter(|u| !u.trim().is_empty()),
            nats_subject_prefix: self
                .nats_subject_prefix
                .unwrap_or_else(|| crate::bridge::subject::DEFAULT_PREFIX.to_owned()),
            nats_buffer_bytes: self.nats_buffer_bytes.map_or(64 << 20, |b| b.0),
            nats_pending_messages: self.nats_pending_messages.unwrap_or(8192),
            nats_reconnect_max_ms: self.nats_reconnect_max_ms.unwrap_or(2000),
            nats_jetstream: self.nats_jetstream.unwrap_or(Switch::Off),
            nats_jetstream_stream: self
                .nats_jetstream_stream
                .unwrap_or_else(|| "SHARDCAST".to_owned()),
            nats_jetstream_max_messages: self.nats_jetstream_max_messages.unwrap_or(100_000),
            nats_jetstream_max_age_ms: self.nats_jetstream_max_age_ms.unwrap_or(3_600_000),
            nats_jetstream_timeout_ms: self.nats_jetstream_timeout_ms.unwrap_or(2000),
            access: self.access.finish().map_err(ConfigError::Access)?,
            compression: self.compression.unwrap_or(Switch::On),
            compression_min_bytes: size(self.compression_min_bytes)
                .unwrap_or(crate::deflate::settings::DEFAULT_MIN_BYTES),
            compression_level: self
                .compression_level
                .unwrap_or(crate::deflate::settings::DEFAULT_LEVEL),
            listen_plain: self.listen_plain,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_min_version: self.tls_min_version.unwrap_or(TlsVersion::Tls12),
            tls_client_ca: self.tls_client_ca,
            tls_client_auth: self.tls_client_auth.unwrap_or(ClientAuth::Required),
            tls_session_tickets: self.tls_session_tickets.unwrap_or(Tickets::On),
            topic_policy,
            compression_topic: self.compression_topic.unwrap_or_default(),
            topic_history,
        };
        if config.histogram_log_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "histogram_log_interval_ms must be at least 1",
            ));
        }
        if !(1..=100).contains(&config.queue_ceiling_pct) {
            return Err(ConfigError::Invalid("queue_ceiling_pct must be 1..=100"));
        }
        if config.ring_capacity == 0 {
            return Err(ConfigError::Invalid("ring_capacity must be at least 1"));
        }
        if config.publish_token.as_deref() == Some("") {
            return Err(ConfigError::Invalid("publish_token must not be empty"));
        }
        let durations = [
            config.ping_interval_ms,
            config.pong_timeout_ms,
            config.idle_timeout_ms,
            config.max_lifetime_ms,
            config.fragment_timeout_ms,
        ];
        // Deadlines are compared as signed differences of a wrapping u32 ms clock.
        if durations
            .iter()
            .any(|&d| d > crate::conn::heartbeat::MAX_DURATION_MS)
        {
            return Err(ConfigError::Invalid(
                "heartbeat durations must be at most 2147483647 ms",
            ));
        }
        if config.lifetime_jitter_pct > 100 {
            return Err(ConfigError::Invalid(
                "lifetime_jitter_pct must be at most 100",
            ));
        }
        if !(1..=crate::conn::heartbeat::MAX_DURATION_MS).contains(&config.close_flush_timeout_ms) {
            return Err(ConfigError::Invalid(
                "close_flush_timeout_ms must be 1..=2147483647",
            ));
        }
        config.check_tls().map_err(ConfigError::Invalid)?;
        crate::bridge::subject::validate_prefix(&config.nats_subject_prefix)
            .map_err(ConfigError::Invalid)?;
        if config.nats_buffer_bytes == 0 || config.nats_pending_messages == 0 {
            return Err(ConfigError::Invalid(
                "nats_buffer_bytes and nats_pending_messages must be at least 1",
            ));
        }
        if !shardcast_proto::deflate::LEVELS.contains(&config.compression_level) {
            return Err(ConfigError::Invalid("compression_level must be 1..=12"));
        }
        if config.nats_reconnect_max_ms == 0 {
            return Err(ConfigError::Invalid(
                "nats_reconnect_max_ms must be at least 1",
            ));
        }
        validate_jetstream(&config).map_err(ConfigError::Invalid)?;
        Ok(config)
    }
}

/// Deep history (`nats_jetstream`): it reads what the bridge publishes, so it needs the bridge
/// and a prefix (a stream over `>` would capture every subject of the NATS account); the
/// stream name is one NATS subject token.
fn validate_jetstream(c: &Config) -> Result<(), &'static str> {
    if c.nats_jetstream == Switch::Off {
        return Ok(());
    }
    if c.nats_url.is_none() {
        return Err("nats_jetstream needs nats_url");
    }
    if c.nats_subject_prefix.is_empty() {
        return Err("nats_jetstream needs a non-empty nats_subject_prefix");
    }
    let name = &c.nats_jetstream_stream;
    let bad = |ch: char| ch.is_whitespace() || ch.is_control() || matches!(ch, '.' | '*' | '>');
    if name.is_empty() || name.len() > 255 || name.chars().any(bad) {
        return Err(
            "nats_jetstream_stream must be 1..=255 characters without whitespace, '.', '*' or '>'",
        );
    }
    if c.nats_jetstream_max_messages == 0
        || c.nats_jetstream_max_age_ms == 0
        || c.nats_jetstream_timeout_ms == 0
    {
        return Err("nats_jetstream_max_messages, nats_jetstream_max_age_ms and nats_jetstream_timeout_ms must be at least 1");
    }
    Ok(())
}

/// Bytes one subscription is budgeted in the default `max_subscriptions` (measured 421 B for
/// a subscription to a topic of its own, the costliest kind: docs/ENGINE.md).
pub const SUBSCRIPTION_BYTES: u64 = 512;

/// Share of the memory limit the default `max_subscriptions` lets subscriptions take.
pub const SUBSCRIPTIONS_PCT: u64 = 10;

/// The default `max_subscriptions` for a memory limit: [`SUBSCRIPTIONS_PCT`]% of it at
/// [`SUBSCRIPTION_BYTES`] each (at least 1024).
pub fn default_max_subscriptions(memory_limit: u64) -> usize {
    (memory_limit / 100 * SUBSCRIPTIONS_PCT / SUBSCRIPTION_BYTES).max(1024) as usize
}

/// Default `send_buffer_bytes` (docs/TUNING.md, "Kernel send buffers").
pub const DEFAULT_SEND_BUFFER: usize = 256 << 10;

/// Kernel bytes one socket may hold with `send_buffer_bytes` (limits.rs).
fn kernel_allowance(send_buffer_bytes: usize, tls: bool) -> usize {
    let wmem_max = if send_buffer_bytes == 0 {
        limits::host_tcp_wmem_max()
    } else {
        0
    };
    // A TLS connection is also charged the ciphertext of its send in flight.
    let ciphertext = if tls {
        crate::tls::MAX_SEND_CIPHERTEXT
    } else {
        0
    };
    limits::kernel_allowance(send_buffer_bytes, wmem_max) + ciphertext
}

/// Two listeners would take the same connections: the same non-zero port on addresses that
/// overlap (equal, or either unspecified). With SO_REUSEPORT the kernel would not refuse the
/// second bind; it would silently spread plain and TLS clients over both.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    /// The data listener's TLS options, or `None` when it serves plain `ws://`.
    pub fn tls_options(&self) -> Option<TlsOptions> {
        Some(TlsOptions {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            min_version: self.tls_min_version,
            client_ca: self.tls_client_ca.clone(),
            client_auth: self.tls_client_auth,
            tickets: self.tls_session_tickets,
        })
    }

    /// Check the TLS keys against each other and the listeners.
    fn check_tls(&self) -> Result<(), &'static str> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together");
        }
        let tls = self.tls_cert.is_some();
        if self.tls_client_ca.is_some() && !tls {
            return Err("tls_client_ca needs tls_cert and tls_key");
        }
        if let Some(plain) = self.listen_plain {
            if !tls {
                return Err(
                    "listen_plain needs tls_cert and tls_key (without TLS, listen is already plain)",
                );
            }
            if overlap(plain, self.listen) {
                return Err("listen_plain must not share listen's port on an overlapping address");
            }
            if self.admin_listen.addr().is_some_and(|a| overlap(plain, a)) {
                return Err(
                    "listen_plain must not share admin_listen's port on an overlapping address",
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// Start-up check of the size limits (limits.rs): the default mark and every `evict` topic
    /// policy's mark must take one accepted message plus a full kernel send buffer.
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        let kernel = kernel_allowance(self.send_buffer_bytes, self.tls_cert.is_some());
        let max = self.max_message_bytes;
        limits::check_mark("high_water_bytes", self.high_water_bytes, max, kernel)
            .map_err(ConfigError::Limits)?;
        for t in &self.topic_policy {
            if t.resolved.policy == Action::Evict {
                let what = format!("topic_policy {} high_water_bytes", t.pattern);
                limits::check_mark(&what, t.resolved.high_water_bytes, max, kernel)
                    .map_err(ConfigError::Limits)?;
            }
        }
        Ok(())
    }

    /// The policy table the hubs use.
    pub fn policies(&self) -> crate::flow::policy::Policies {
        crate::flow::policy::Policies::new(
            self.topic_policy.clone(),
            Policy {
                policy: self.default_policy,
                high_water_bytes: self.high_water_bytes,
                low_water_bytes: self.low_water_bytes,
                keep: crate::flow::policy::DEFAULT_KEEP,
            },
        )
    }

    /// The compression settings the shards (and the NATS bridge) use.
    pub fn compression(&self) -> crate::deflate::settings::Settings {
        crate::deflate::settings::Settings {
            enabled: self.compression.is_on(),
            min_bytes: self.compression_min_bytes,
            level: self.compression_level,
            rules: self.compression_topic.clone(),
        }
    }

    /// Continuity: the `topic_history` rules (validated when the configuration was built).
    pub fn history_rules(&self) -> Vec<crate::continuity::history::HistoryRule> {
        self.topic_history
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    /// Continuity: history bounds of topics no `topic_history` rule matches.
    pub fn default_history(&self) -> crate::continuity::history::Limits {
        crate::continuity::history::Limits::DEFAULT
    }

    /// Process-wide ceiling on bytes retained by queued frames.
    pub fn queue_ceiling(&self) -> u64 {
        (self.memory_limit as u128 * self.queue_ceiling_pct as u128 / 100) as u64
    }

    /// The effective configuration as TOML, with the publish token redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.publish_token.is_some() {
            shown.publish_token = Some("<redacted>".to_owned());
        }
        shown.access = shown.access.redacted();
        toml::to_string(&shown).expect("Config always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Overrides {
        Overrides::try_parse_from(std::iter::once("shardcast").chain(args.iter().copied()))
            .expect("valid args")
    }

    #[test]
    fn spec_parsing() {
        let s: TopicPolicySpec = "ticker.*=conflate".parse().unwrap();
        assert_eq!(s.pattern, "ticker.*");
        assert_eq!(s.policy, Action::Conflate);
        let s: TopicPolicySpec =
            "b*=drop-oldest,high_water_bytes=64KiB,low_water_bytes=1000,keep=4"
                .parse()
                .unwrap();
        assert_eq!(s.policy, Action::DropOldest);
        assert_eq!(s.high_water_bytes.unwrap().0, 65536);
        assert_eq!(s.low_water_bytes.unwrap().0, 1000);
        assert_eq!(s.keep, Some(4));
        assert!("x".parse::<TopicPolicySpec>().is_err());
        assert!("x=nope".parse::<TopicPolicySpec>().is_err());
        assert!("x=pause,color=red".parse::<TopicPolicySpec>().is_err());
        assert!("=pause".parse::<TopicPolicySpec>().is_err());
    }

    #[test]
    fn defaults() {
        let c = parse(&["--shards", "4"]).resolve().unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.health_stall_ms, 2000);
        assert_eq!(c.driver, Driver::Auto);
        let nofile = crate::rlimit::nofile().unwrap().hard;
        assert_eq!(
            (c.max_connections, c.max_connections_source.as_str()),
            crate::ops::capacity::default_max_connections(Some(nofile), 4, c.memory_limit)
        );
        assert_eq!(c.max_connections_per_shard, None, "only the global limit");
        let c = parse(&["--max-connections", "7"]).resolve().unwrap();
        assert_eq!(
            (c.max_connections, c.max_connections_source.as_str()),
            (7, "config")
        );
        assert_eq!(c.max_message_bytes, 1_048_576);
        assert_eq!(c.max_control_message_bytes, 4096);
        assert_eq!(c.ring_capacity, 4096);
        assert_eq!(c.log, "info");
        assert_eq!(c.publish_token, None);
        assert_eq!((c.ping_interval_ms, c.pong_timeout_ms), (25_000, 10_000));
        assert_eq!((c.idle_timeout_ms, c.max_lifetime_ms), (0, 0));
        assert_eq!(c.lifetime_jitter_pct, 10);
        assert!(parse(&[]).resolve().unwrap().shards >= 1);
        let a = &c.access;
        assert_eq!(
            a.public_topics,
            ["*"],
            "everything public without a JWT key"
        );
        assert_eq!((a.subscriber_rate, a.subscriber_burst), (5, 10));
        assert_eq!((a.publisher_rate, a.publisher_burst), (100_000, 100_000));
        assert_eq!((a.ip_connect_limit, a.ip_connect_window_ms), (300, 300_000));
        assert_eq!(a.ip_max_connections, 0);
        assert_eq!(c.profile, Profile::Default);
        assert_eq!(c.shutdown_notice_ms, 0);
        let b = parse(&["--profile", "binance", "--pong-timeout-ms", "5"])
            .resolve()
            .unwrap();
        assert_eq!((b.ping_interval_ms, b.pong_timeout_ms), (20_000, 5));
        assert_eq!(b.max_lifetime_ms, 86_400_000);
        assert_eq!(b.max_control_message_bytes, 65_536);
        assert!(parse(&["--jwt-secret", "a", "--jwt-secret-file", "/x"])
            .resolve()
            .is_err());
        assert!(parse(&["--allowed-origins", "example.com"])
            .resolve()
            .is_err());
        assert!(parse(&["--jwt-public-key", "/nonexistent.pem"])
            .resolve()
            .is_err());
    }

    #[test]
    fn file_fills_unset_and_cli_wins() {
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "shards = 3\nmax_headers = 7\ndriver = \"epoll\"\n").unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--max-headers", "9"])
            .resolve()
            .unwrap();
        assert_eq!(c.shards, 3, "file beats default");
        assert_eq!(c.max_headers, 9, "cli beats file");
        assert_eq!(c.driver, Driver::Epoll);
        std::fs::write(&path, "shardz = 3\n").unwrap();
        let err = parse(&["--config", p]).resolve().unwrap_err();
        assert!(err.to_string().contains("shardz"), "{err}");
    }

    #[test]
    fn message_and_header_limits_take_size_suffixes() {
        let c = parse(&[
            "--max-message-bytes",
            "64KiB",
            "--max-header-bytes",
            "16K",
            "--max-control-message-bytes",
            "8192",
            "--compression-min-bytes",
            "1k",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.max_message_bytes, 65_536);
        assert_eq!(c.max_header_bytes, 16_384);
        assert_eq!(c.max_control_message_bytes, 8192);
        assert_eq!(c.compression_min_bytes, 1024);
        let bad = Overrides::try_parse_from(["shardcast", "--max-message-bytes", "1MB2"]);
        assert!(bad.is_err(), "an unknown suffix is refused while parsing");
        // The TOML file accepts both forms.
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "max_message_bytes = \"2MiB\"\nmax_header_bytes = 4096\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!((c.max_message_bytes, c.max_header_bytes), (2 << 20, 4096));
    }

    #[test]
    fn env_beats_file_and_cli_beats_env() {
        // Only this test uses this variable, so parallel tests are not affected.
        std::env::set_var("SHARDCAST_SHUTDOWN_GRACE_MS", "1234");
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "shutdown_grace_ms = 99\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            parse(&["--config", p]).resolve().unwrap().shutdown_grace_ms,
            1234
        );
        let c = parse(&["--config", p, "--shutdown-grace-ms", "7"])
            .resolve()
            .unwrap();
        assert_eq!(c.shutdown_grace_ms, 7);
        std::env::remove_var("SHARDCAST_SHUTDOWN_GRACE_MS");
    }

    #[test]
    fn help_documents_every_option_with_default() {
        let help = Overrides::command().render_long_help().to_string();
        for arg in Overrides::command().get_arguments() {
            let long = arg.get_long().unwrap();
            if matches!(long, "config" | "print-config" | "help" | "version") {
                continue;
            }
            assert!(help.contains(&format!("--{long}")), "{long} missing");
            let doc = arg.get_help().unwrap().to_string();
            assert!(
                doc.contains("[default: "),
                "{long} lacks its default: {doc}"
            );
            let env = arg.get_env().unwrap().to_str().unwrap().to_owned();
            assert_eq!(
                env,
                format!("SHARDCAST_{}", long.replace('-', "_").to_uppercase())
            );
        }
    }

    #[test]
    fn print_config_round_trips_and_redacts() {
        let c = parse(&[
            "--shards",
            "2",
            "--publish-token",
            "s3cret",
            "--jwt-secret",
            "jwt-s3cret",
            "--allowed-origins",
            "https://a.example,https://*.b.example",
            "--profile",
            "binance",
        ])
        .resolve()
        .unwrap();
        let text = c.to_toml();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("allowed_origins = [\"https://a.example\", \"https://*.b.example\"]"),
            "{text}"
        );
        assert!(
            text.contains("public_topics = []"),
            "a JWT key makes nothing public: {text}"
        );
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.shards, 2);
        assert_eq!(back.publish_token.as_deref(), Some("<redacted>"));
        // Every printed key is accepted back as a config-file key.
        toml::from_str::<Overrides>(&text).unwrap();
    }

    #[test]
    fn admin_listen_can_be_turned_off() {
        for off in ["off", ""] {
            let c = parse(&["--admin-listen", off]).resolve().unwrap();
            assert_eq!(c.admin_listen, AdminListen::Off);
            assert_eq!(c.admin_listen.addr(), None);
            let back: Config = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back.admin_listen, AdminListen::Off);
        }
        let c = parse(&["--admin-listen", "127.0.0.1:0"]).resolve().unwrap();
        assert_eq!(c.admin_listen.addr(), Some("127.0.0.1:0".parse().unwrap()));
        assert!(Overrides::try_parse_from(["shardcast", "--admin-listen", "nowhere"]).is_err());
    }

    #[test]
    fn backpressure_options_from_cli_env_and_file() {
        let c = parse(&[
            "--topic-policy",
            "tick.*=conflate,high_water_bytes=64K",
            "--topic-policy",
            "book.*=evict",
            "--default-policy",
            "drop-oldest",
            "--high-water-bytes",
            "2MiB",
            "--memory-limit",
            "64M",
            "--queue-ceiling-pct",
            "10",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.default_policy, Action::DropOldest);
        assert_eq!(
            (c.high_water_bytes, c.low_water_bytes),
            (2 << 20, 512 << 10)
        );
        assert_eq!(
            (c.memory_limit, c.memory_limit_source.as_str()),
            (64 << 20, "config")
        );
        assert_eq!(c.queue_ceiling(), (64 << 20) / 10);
        assert_eq!(c.topic_policy.len(), 2);
        let p = c.policies();
        assert_eq!(p.lookup("tick.btc").high_water_bytes, 65536);
        assert_eq!(p.lookup("tick.btc").low_water_bytes, 16384);
        assert_eq!(p.lookup("book.btc").policy, Action::Evict);
        assert_eq!(
            p.lookup("book.btc").high_water_bytes,
            2 << 20,
            "inherits the default"
        );
        assert_eq!(p.lookup("other").policy, Action::DropOldest);
        // Printed config round-trips, topic policies included.
        let text = c.to_toml();
        assert!(text.contains("[[topic_policy]]"), "{text}");
        let back = toml::from_str::<Overrides>(&text)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(back.topic_policy, c.topic_policy);
        assert_eq!(back.memory_limit, c.memory_limit);
        // Env: ';'-separated (only this test uses this variable).
        std::env::set_var("SHARDCAST_TOPIC_POLICY", "a*=pause;b=drop-oldest,keep=3");
        let c = parse(&[]).resolve().unwrap();
        std::env::remove_var("SHARDCAST_TOPIC_POLICY");
        let p = c.policies();
        assert_eq!(p.lookup("ab").policy, Action::Pause);
        assert_eq!(p.lookup("b").keep, 3);
        // TOML tables.
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-bp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "memory_limit = \"1GiB\"\n[[topic_policy]]\npattern = \"x?\"\npolicy = \"conflate\"\nlow_water_bytes = 10\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(c.memory_limit, 1 << 30);
        assert_eq!(c.policies().lookup("xy").policy, Action::Conflate);
        assert_eq!(c.policies().lookup("xy").low_water_bytes, 10);
        assert!(
            parse(&["--low-water-bytes", "2M", "--high-water-bytes", "1M"])
                .resolve()
                .is_err()
        );
        assert!(parse(&["--queue-ceiling-pct", "0"]).resolve().is_err());
        assert!(Overrides::try_parse_from(["shardcast", "--memory-limit", "12X"]).is_err());
    }

    #[test]
    fn limits_are_consistent_or_refused_at_start() {
        let c = parse(&[]).resolve().unwrap();
        assert_eq!(
            (c.high_water_bytes, c.low_water_bytes),
            (2 << 20, 512 << 10)
        );
        assert_eq!(c.send_buffer_bytes, 256 << 10);
        c.check_limits().unwrap();
        // A larger max message raises the unset default mark to what it needs.
        let c = parse(&["--max-message-bytes", "4194304"])
            .resolve()
            .unwrap();
        assert_eq!(c.high_water_bytes, (4 << 20) + 159 + (640 << 10));
        c.check_limits().unwrap();
        // An explicit mark below that is refused, with the minimum in the message.
        let c = parse(&["--high-water-bytes", "1MiB"]).resolve().unwrap();
        let e = c.check_limits().unwrap_err().to_string();
        assert!(e.contains("at least 1704095"), "{e}");
        let c = parse(&["--topic-policy", "b=evict,high_water_bytes=64K"])
            .resolve()
            .unwrap();
        let e = c.check_limits().unwrap_err().to_string();
        assert!(e.contains("topic_policy b high_water_bytes"), "{e}");
        // Other policies may use small marks: crossing them never evicts.
        let c = parse(&["--topic-policy", "b=conflate,high_water_bytes=64K"])
            .resolve()
            .unwrap();
        c.check_limits().unwrap();
        // A smaller send buffer and message allow a smaller mark.
        let c = parse(&[
            "--send-buffer-bytes",
            "64K",
            "--max-message-bytes",
            "65536",
            "--high-water-bytes",
            "256K",
        ])
        .resolve()
        .unwrap();
        c.check_limits().unwrap();
    }

    #[test]
    fn nats_options() {
        let c = parse(&[]).resolve().unwrap();
        assert_eq!(c.nats_url, None, "no bridge unless asked");
        assert_eq!(c.nats_subject_prefix, "shardcast.");
        assert_eq!(c.nats_buffer_bytes, 64 << 20);
        assert_eq!(
            (c.nats_pending_messages, c.nats_reconnect_max_ms),
            (8192, 2000)
        );
        let c = parse(&[
            "--nats-url",
            "nats://a:4222,nats://b:4222",
            "--nats-subject-prefix",
            "eu.md.",
            "--nats-buffer-bytes",
            "1M",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.nats_url.as_deref(), Some("nats://a:4222,nats://b:4222"));
        assert_eq!(c.nats_buffer_bytes, 1 << 20);
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c, "printed config reads back");
        assert_eq!(
            parse(&["--nats-url", " "]).resolve().unwrap().nats_url,
            None
        );
        assert!(parse(&["--nats-subject-prefix", "no-dot"])
            .resolve()
            .is_err());
        assert!(parse(&["--nats-pending-messages", "0"]).resolve().is_err());
        assert!(parse(&["--nats-reconnect-max-ms", "0"]).resolve().is_err());
    }

    #[test]
    fn overlapping_listeners() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(overlap(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(!overlap(a("10.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(
            !overlap(a("127.0.0.1:0"), a("127.0.0.1:0")),
            "both ephemeral"
        );
        assert!(!overlap(a("0.0.0.0:8080"), a("0.0.0.0:8081")));
    }

    #[test]
    fn jetstream_options() {
        let c = parse(&[]).resolve().unwrap();
        assert_eq!(
            c.nats_jetstream,
            Switch::Off,
            "deep history only when asked"
        );
        assert_eq!(c.nats_jetstream_stream, "SHARDCAST");
        assert_eq!(
            (
                c.nats_jetstream_max_messages,
                c.nats_jetstream_max_age_ms,
                c.nats_jetstream_timeout_ms
            ),
            (100_000, 3_600_000, 2000)
        );
        let url = ["--nats-url", "nats://a:4222"];
        let with = |extra: &[&str]| {
            let mut args = url.to_vec();
            args.extend_from_slice(extra);
            parse(&args).resolve()
        };
        let c = with(&["--nats-jetstream", "on", "--nats-jetstream-stream", "S2"]).unwrap();
        assert_eq!(
            (c.nats_jetstream, &*c.nats_jetstream_stream),
            (Switch::On, "S2")
        );
        assert!(
            parse(&["--nats-jetstream", "on"]).resolve().is_err(),
            "no bridge"
        );
        for bad in [
            &["--nats-jetstream", "on", "--nats-subject-prefix", ""][..],
            &["--nats-jetstream", "on", "--nats-jetstream-stream", "a.b"],
            &["--nats-jetstream", "on", "--nats-jetstream-stream", ""],
            &["--nats-jetstream", "on", "--nats-jetstream-timeout-ms", "0"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        // Off: the other settings are not checked against the bridge.
        assert!(with(&["--nats-jetstream-stream", "a.b"]).is_ok());
    }

    #[test]
    fn tls_options() {
        let c = parse(&[]).resolve().unwrap();
        assert_eq!(
            (c.tls_cert.as_ref(), c.listen_plain),
            (None, None),
            "plain by default"
        );
        assert_eq!(c.tls_min_version, TlsVersion::Tls12);
        assert_eq!(c.tls_session_tickets, Tickets::On);
        let c = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-min-version",
            "1.3",
            "--tls-client-ca",
            "ca.pem",
            "--tls-client-auth",
            "optional",
            "--tls-session-tickets",
            "off",
            "--listen-plain",
            "127.0.0.1:8081",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.tls_min_version, TlsVersion::Tls13);
        assert_eq!(c.tls_client_auth, ClientAuth::Optional);
        let o = c.tls_options().unwrap();
        assert_eq!(o.client_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(o.tickets, Tickets::Off);
        let text = c.to_toml();
        assert!(text.contains("tls_min_version = \"1.3\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c, "printed config reads back");
        toml::from_str::<Overrides>(&text).unwrap();
        for bad in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-client-ca", "ca.pem"],
            &["--listen-plain", "127.0.0.1:8081"],
            &[
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--listen-plain",
                "127.0.0.1:8080",
            ],
        ] {
            assert!(parse(bad).resolve().is_err(), "{bad:?}");
        }
        assert!(Overrides::try_parse_from(["shardcast", "--tls-min-version", "1.1"]).is_err());
    }

    #[test]
    fn rejects_invalid_values() {
        assert!(parse(&["--shards", "0"]).resolve().is_err());
        assert!(parse(&["--ring-capacity", "0"]).resolve().is_err());
        assert!(parse(&["--lifetime-jitter-pct", "101"]).resolve().is_err());
        assert!(parse(&["--max-lifetime-ms", "2147483648"])
            .resolve()
            .is_err());
        assert!(Overrides::try_parse_from(["shardcast", "--driver", "kqueue"]).is_err());
    }
}
