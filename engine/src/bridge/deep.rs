//! Deep history on the bridge (`--nats-jetstream`): the JetStream stream that captures the
//! topics' subjects, and the fetches a resume asks for (docs/CONTINUITY.md, "Deep history";
//! the rules of a fetch are sans-IO in `continuity::deep`).
//!
//! - **The stream.** At start the bridge looks the stream up by name and creates it when it is
//!   missing: subjects `PREFIX>`, file storage, `max_messages_per_subject` and `max_age` from
//!   the configuration, `allow_direct`. A stream that exists is used as its operator
//!   configured it, never updated (it may keep more, or be replicated); a warning says when its
//!   subjects do not cover `PREFIX>`. Until the lookup succeeds (NATS or JetStream down) it is
//!   retried every second; what is published meanwhile is not captured.
//! - **A fetch** runs as its own task on the bridge's runtime, so inbound and outbound traffic
//!   never wait for it: find where the range starts (`continuity::deep::Bisect`, one
//!   single-message read per step: direct get when the stream allows it, the leader's
//!   message get otherwise; nats-server 2.9 has no batched direct get; one read when the
//!   previous chunk of the same replay ended right before the range), then read from there
//!   through an ephemeral pull consumer filtered on the topic's subject (no acks, in memory,
//!   deleted afterwards and expiring by itself if that fails), keeping what
//!   `continuity::deep::Collect` keeps. Bounded: at most [`IN_FLIGHT`] fetches at once (the
//!   others wait their turn), one replay chunk per fetch (each consumer batch at most the
//!   chunk's message count, and its bytes plus one largest message), and the configured
//!   timeout over the whole of it (waiting included): past it the fetch fails, and the client
//!   is told `trimmed` — never a hang.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::stream::{self, Stream};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use shardcast_proto::MessageKind;
use tokio::sync::Semaphore;

use super::stats::BridgeStats;
use super::subject;
use crate::config::Config;
use crate::continuity::deep::{classify, stream_behind, Bisect, Collect, Failure, Fetch, Flow};
use crate::continuity::resume::Replayed;
use crate::continuity::{Epoch, Position, Seq};
use crate::obs::stats::add;

/// Fetches running at once; more wait for a turn (their timeout runs meanwhile). Each holds at
/// most one replay chunk.
pub const IN_FLIGHT: usize = 4;

/// Consumer batches read per fetch: the range's messages come first, so more than one batch
/// is needed only to step over other epochs' or unnumbered messages.
const BATCHES: usize = 4;

/// Bytes a consumer batch may carry beyond the chunk and one largest message: subjects and
/// headers of the messages.
const BATCH_SLACK: usize = 64 * 1024;

/// How soon a fetch looks again when the stream is behind this host.
const LAG_RETRY: Duration = Duration::from_millis(5);

/// (topic, epoch) pairs whose last fetch position is remembered; beyond, the table starts
/// over (a hint only saves round trips).
const HINTS: usize = 4096;

/// An ephemeral consumer the bridge could not delete is removed by the server after this.
const CONSUMER_IDLE: Duration = Duration::from_secs(30);

/// How often a missing stream is looked up (or created) again.
const ENSURE_RETRY: Duration = Duration::from_secs(1);

/// The bridge's deep-history side (cloned into each fetch task).
#[derive(Clone)]
pub struct Deep {
    client: async_nats::Client,
    js: jetstream::Context,
    name: String,
    prefix: String,
    max_messages: u64,
    max_age: Duration,
    timeout: Duration,
    turns: Rc<Semaphore>,
    stats: Arc<BridgeStats>,
    /// The last lookup found (or created) the stream: the subjects warning is logged once per
    /// change to found.
    ready: Rc<Cell<bool>>,
    /// Where each (topic, epoch)'s last fetch ended, so a replay's next chunk skips the
    /// bisection.
    hints: Rc<RefCell<Hints>>,
}

/// Per (topic, epoch), where the last fetch ended.
type Hints = HashMap<(Arc<str>, Epoch), Hint>;

/// The last message a fetch kept: its number, its stream sequence, and which incarnation of the
/// stream that sequence belongs to (a deleted and re-created stream numbers from 1 again).
#[derive(Clone, Copy, Debug)]
struct Hint {
    seq: Seq,
    stream_seq: u64,
    created_ns: i128,
}

impl Deep {
    /// Deep history over `client` as configured (`nats_jetstream` on).
    pub fn new(client: async_nats::Client, config: &Config, stats: Arc<BridgeStats>) -> Deep {
        let timeout = Duration::from_millis(config.nats_jetstream_timeout_ms);
        let mut js = jetstream::new(client.clone());
        // One bound for everything, ours: a request may take the whole fetch timeout (the
        // client's default, 5 s, would cut a longer one short, and a request timing out at the
        // same moment as the fetch would be counted as an error rather than a timeout).
        js.set_timeout(timeout + Duration::from_secs(1));
        Deep {
            client,
            js,
            name: config.nats_jetstream_stream.clone(),
            prefix: config.nats_subject_prefix.clone(),
            max_messages: config.nats_jetstream_max_messages,
            max_age: Duration::from_millis(config.nats_jetstream_max_age_ms),
            timeout,
            turns: Rc::new(Semaphore::new(IN_FLIGHT)),
            stats,
            ready: Rc::new(Cell::new(false)),
            hints: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// Find or create the stream, retrying until it exists (run as a task at start: the
    /// stream must exist before messages are published for them to be captured).
    pub async fn keep_ensuring(self) {
        loop {
            match tokio::time::timeout(self.timeout, self.stream()).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    crate::warn_limited!("nats bridge: JetStream stream unavailable", error = %e)
                }
                Err(_) => crate::warn_limited!("nats bridge: JetStream stream lookup timed out"),
            }
            tokio::time::sleep(ENSURE_RETRY).await;
        }
    }

    /// The stream, created if missing (see the module docs).
    async fn stream(&self) -> Result<Stream, String> {
        let found = match self.js.get_stream(&self.name).await {
            Ok(s) => Ok(s),
            Err(e) => match e.kind() {
                stream_missing if is_not_found(&stream_missing) => self.create().await,
                _ => Err(e.to_string()),
            },
        };
        let ok = found.is_ok();
        if ok && !self.ready.replace(true) {
            let s = found.as_ref().expect("ok");
            let wanted = format!("{}>", self.prefix);
            let subjects = &s.cached_info().config.subjects;
            if !subjects.iter().any(|x| *x == wanted || x == ">") {
                tracing::warn!(stream = %self.name, ?subjects, wanted = %wanted, "nats bridge: the JetStream stream does not capture every topic's subject; deep history covers only what it captures");
            }
        }
        self.stats.deep_stream_ready.store(u64::from(ok), Relaxed);
        self.ready.set(ok);
        found
    }

    async fn create(&self) -> Result<Stream, String> {
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}>", self.prefix)],
            max_messages_per_subject: i64::try_from(self.max_messages).unwrap_or(i64::MAX),
            max_age: self.max_age,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        match self.js.create_stream(config).await {
            Ok(s) => {
                tracing::info!(stream = %self.name, "nats bridge: created the JetStream stream for deep history");
                Ok(s)
            }
            // Another host created it meanwhile: use theirs.
            Err(_) => self
                .js
                .get_stream(&self.name)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Run `op` on the stream with a turn, within the timeout; failures counted.
    async fn with_stream<T, Fut>(&self, op: impl FnOnce(Stream) -> Fut) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let work = async {
            let _turn = self
                .turns
                .acquire()
                .await
                .map_err(|_| Failure::Unavailable)?;
            let stream = self.stream().await.map_err(|e| {
                crate::warn_limited!("nats bridge: deep history unavailable", error = %e);
                Failure::Unavailable
            })?;
            op(stream).await
        };
        let got = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        match &got {
            Ok(_) => {}
            Err(Failure::Timeout) => add(&self.stats.deep_timeouts, 1),
            Err(Failure::Unavailable) => add(&self.stats.deep_unavailable, 1),
        }
        got
    }

    /// Fetch what `fetch` asks for, within the timeout; counted.
    pub async fn fetch(&self, fetch: &Fetch) -> Result<Vec<Replayed>, Failure> {
        let got = self.with_stream(|s| self.fetch_from(s, fetch)).await;
        if let Ok(v) = &got {
            add(&self.stats.deep_fetches, 1);
            add(&self.stats.deep_messages, v.len() as u64);
            if v.first().is_none_or(|r| r.seq != fetch.first) {
                add(&self.stats.deep_short, 1);
            }
        }
        got
    }

    /// The numbering of `topic`'s last message in the stream, within the timeout (`None`: no
    /// numbered message there, or deep history failed; counted).
    pub async fn head(&self, topic: &str) -> Option<Position> {
        let got = self.with_stream(|s| head_of(s, self.subject(topic))).await;
        if got.is_ok() {
            add(&self.stats.deep_lookups, 1);
        }
        got.ok().flatten()
    }

    fn subject(&self, topic: &str) -> String {
        subject::subject(&self.prefix, topic)
    }

    /// Fetch from `stream`. Nothing of the range there while everything stored of the topic
    /// is older than it means the stream is behind (it stores a message a moment after NATS
    /// delivered it to this host), not that the range is gone: look again shortly, within the
    /// timeout, rather than tell the client `trimmed`.
    async fn fetch_from(
        &self,
        mut stream: Stream,
        fetch: &Fetch,
    ) -> Result<Vec<Replayed>, Failure> {
        loop {
            let got = self.fetch_once(&stream, fetch).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let stored = head_of(stream.clone(), self.subject(&fetch.topic)).await?;
            if !stream_behind(stored, fetch.epoch, fetch.first) {
                return Ok(got);
            }
            tokio::time::sleep(LAG_RETRY).await;
            stream = self.stream().await.map_err(|_| Failure::Unavailable)?;
        }
    }

    async fn fetch_once(&self, stream: &Stream, fetch: &Fetch) -> Result<Vec<Replayed>, Failure> {
        let subject = self.subject(&fetch.topic);
        let info = stream.cached_info();
        let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
        if info.state.messages == 0 {
            return Ok(Vec::new());
        }
        let direct = info.config.allow_direct;
        let created_ns = info.created.unix_timestamp_nanos();
        let key = (fetch.topic.clone(), fetch.epoch);
        // Valid only below the range (another client may be further back) and in this stream.
        let hint = self
            .hints
            .borrow()
            .get(&key)
            .copied()
            .filter(|h| h.seq < fetch.first && h.created_ns == created_ns);
        let mut bisect = match hint {
            Some(h) => Bisect::after(first_seq, last_seq, h.stream_seq),
            None => Bisect::new(first_seq, last_seq),
        };
        while let Some(at) = bisect.probe() {
            let found = next_for_subject(stream, direct, &subject, at).await?;
            let found = found.map(|(seq, headers)| {
                (seq, classify(numbering(&headers), fetch.epoch, fetch.first))
            });
            bisect.handle(at, found);
        }
        if bisect.start() > last_seq {
            return Ok(Vec::new()); // nothing of the range in the stream
        }
        let (got, last_stream_seq) = self.read(stream, &subject, bisect.start(), fetch).await?;
        if let (Some(r), Some(stream_seq)) = (got.last(), last_stream_seq) {
            let mut hints = self.hints.borrow_mut();
            if hints.len() >= HINTS {
                hints.clear();
            }
            let seq = r.seq;
            hints.insert(
                key,
                Hint {
                    seq,
                    stream_seq,
                    created_ns,
                },
            );
        }
        Ok(got)
    }

    /// Read the subject from stream sequence `start` through an ephemeral consumer; returns
    /// what was kept and the stream sequence of the last of it.
    async fn read(
        &self,
        stream: &Stream,
        subject: &str,
        start: u64,
        fetch: &Fetch,
    ) -> Result<(Vec<Replayed>, Option<u64>), Failure> {
        let unavailable = |e: &dyn std::fmt::Display| {
            crate::warn_limited!("nats bridge: deep history read failed", error = %e);
            Failure::Unavailable
        };
        let consumer: consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                filter_subject: subject.to_owned(),
                inactive_threshold: CONSUMER_IDLE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let name = consumer.cached_info().name.clone();
        let mut collect = Collect::new(fetch);
        let batch = fetch.max_messages.max(1);
        // What one batch may carry: the chunk, plus one message of the largest size the server
        // takes (so the first one always fits) and room for its subject and headers.
        let max_payload = self.client.server_info().max_payload;
        let batch_bytes = fetch.max_bytes + max_payload + BATCH_SLACK;
        let mut result = Ok(());
        let mut last_stream_seq = None;
        'batches: for _ in 0..BATCHES {
            let request = consumer.fetch().max_messages(batch).max_bytes(batch_bytes);
            let mut messages = match request.messages().await {
                Ok(m) => m,
                Err(e) => {
                    result = Err(unavailable(&e));
                    break;
                }
            };
            let mut read = 0;
            while let Some(m) = messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        result = Err(unavailable(&e));
                        break 'batches;
                    }
                };
                read += 1;
                let headers = m.headers.as_ref();
                let kind = kind(headers, &m.payload);
                let kept = collect.len();
                let flow = collect.offer(headers.and_then(numbering), kind, m.payload.clone());
                if collect.len() > kept {
                    last_stream_seq = m.info().ok().map(|i| i.stream_sequence);
                }
                if flow == Flow::Done {
                    break 'batches;
                }
            }
            if read < batch {
                break; // the subject's end
            }
        }
        // Not awaited by the fetch: the server drops it by itself after CONSUMER_IDLE anyway.
        let stream = stream.clone();
        tokio::task::spawn_local(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        // What was read before an error is still a valid (partial) answer.
        match result {
            Err(e) if collect.is_empty() => Err(e),
            _ => Ok((collect.finish(), last_stream_seq)),
        }
    }
}

/// The subject's first message at stream sequence ≥ `at`: its stream sequence and headers, or
/// `None` if there is none.
async fn next_for_subject(
    stream: &Stream,
    direct: bool,
    subject: &str,
    at: u64,
) -> Result<Option<(u64, HeaderMap)>, Failure> {
    if direct {
        return match stream.direct_get_next_for_subject(subject, Some(at)).await {
            Ok(m) => Ok(Some((m.sequence, m.headers))),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => {
                crate::warn_limited!("nats bridge: deep history lookup failed", error = %e);
                Err(Failure::Unavailable)
            }
        };
    }
    match stream
        .raw_message_builder()
        .sequence(at)
        .next_by_subject(subject)
        .send()
        .await
    {
        Ok(m) => Ok(Some((m.sequence, m.headers))),
        Err(e) if raw_not_found(&e.kind()) => Ok(None),
        Err(e) => {
            crate::warn_limited!("nats bridge: deep history lookup failed", error = %e);
            Err(Failure::Unavailable)
        }
    }
}

/// The numbering of the subject's last message in the stream (`None`: no message, or none
/// numbered).
async fn head_of(stream: Stream, subject: String) -> Result<Option<Position>, Failure> {
    let got = if stream.cached_info().config.allow_direct {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(m.headers),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => Err(e.to_string()),
        }
    } else {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(m.headers),
            Err(e) if raw_not_found(&e.kind()) => return Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    got.map(|h| numbering(&h)).map_err(|e| {
        crate::warn_limited!("nats bridge: deep history lookup failed", error = %e);
        Failure::Unavailable
    })
}

/// A leader message get that found nothing (the client reports it in two ways).
fn raw_not_found(kind: &stream::LastRawMessageErrorKind) -> bool {
    match kind {
        stream::LastRawMessageErrorKind::NoMessageFound => true,
        stream::LastRawMessageErrorKind::JetStream(j) => {
            j.error_code() == ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The numbering a stored message's headers carry.
fn numbering(h: &HeaderMap) -> Option<Position> {
    let get = |name: &str| h.get(name).map(|v| v.as_str());
    subject::numbering(get(subject::EPOCH_HEADER), get(subject::SEQ_HEADER))
}

/// A stored message's kind: its kind header, else text when it is UTF-8 (as inbound).
fn kind(h: Option<&HeaderMap>, payload: &[u8]) -> MessageKind {
    let header = h
        .and_then(|h| h.get(subject::KIND_HEADER))
        .map(|v| v.as_str());
    match subject::classify(None, header, payload, "") {
        subject::Inbound::Deliver(k) => k,
        // Invalid text: sent as binary rather than breaking the client's connection (1007).
        subject::Inbound::Own | subject::Inbound::Invalid => MessageKind::Binary,
    }
}
