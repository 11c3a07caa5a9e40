//! One connection's state, as a plain struct in the shard's slab: no future, no task, no
//! waker, no buffer while idle. What only some connections need for a while (the request head,
//! a partial frame, held pauses, several topics) sits behind one pointer each, allocated only
//! while needed. `tests::slot_stays_within_budget` guards the size (docs/ENGINE.md,
//! "Per-connection memory budget").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use shardcast_proto::http::RequestParser;
use shardcast_proto::Decoder;

use crate::conn::heartbeat::Liveness;
use crate::deflate::Negotiated;
use crate::flow::queue::{InboundCharge, SendQueue};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request head (or an HTTP publish body), under the handshake deadline.
    Http,
    /// A WebSocket.
    Open,
    /// A final frame or response is queued: flush it (under the close deadline), then end.
    Closing,
    /// Flushed and half-closed: discard input until the peer's EOF or the linger deadline,
    /// so unread input does not turn our close into a reset that loses the close frame.
    Linger,
    /// The driver was asked to close it; waiting for it to report the socket released.
    Ended,
}

/// What the connection does with the messages it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Text messages are control requests (`/ws`, `/stream`).
    Subscriber,
    /// Every message is published to the topic (`/pub`, and `/room` which also subscribes).
    Publisher(Arc<str>),
    /// Every message is echoed back (`/echo`).
    Echo,
}

/// Flag bits of [`Conn::flags`].
pub mod flag {
    /// In the shard's dirty list for this turn's flush.
    pub const DIRTY: u16 = 1;
    /// A send is in flight (between `gather` and `sent`).
    pub const SENDING: u16 = 1 << 1;
    /// wss://: a TLS session (`tls::ShardTls`, by slot) sits between the socket and the codec.
    pub const TLS: u16 = 1 << 2;
    /// `/stream`: text messages arrive wrapped with their topic.
    pub const STREAM: u16 = 1 << 3;
    /// A publisher holds undecoded input (its publishing was stopped mid-read).
    pub const HELD: u16 = 1 << 4;
    /// Input is not wanted now (a stopped publisher): the driver was told `StopRead`.
    pub const STOPPED: u16 = 1 << 5;
    /// Above a high-water mark until below [`Conn::slow_low`](super::Conn::slow_low).
    pub const SLOW: u16 = 1 << 6;
    /// Close without the linger (a dead peer, or a deadline passed).
    pub const ABORT: u16 = 1 << 7;
    /// In the shard's list of connections with a deadline.
    pub const TIMED: u16 = 1 << 8;
    /// Upgraded and counted in the shard's registered connections.
    pub const REGISTERED: u16 = 1 << 9;
    /// The peer ended its input.
    pub const READ_EOF: u16 = 1 << 10;
    /// Waiting in a publisher wait list (pause or mesh backlog).
    pub const WAITING: u16 = 1 << 11;
    /// Access (issue 14): may subscribe in-band to anything (a trusted peer or the static
    /// token), so no grants are kept.
    pub const ALL_GRANTS: u16 = 1 << 12;
    /// `seq=1`: messages arrive numbered (continuity, `shard/seq.rs`); its topics are in
    /// `Core::seq_topics`.
    pub const SEQ: u16 = 1 << 13;
    /// In the shard's list of queues to trim on the next tick (`State::note_spare`).
    pub const TRIM: u16 = 1 << 14;
    /// [`Role::Echo`](super::Role::Echo) (with no publish topic; neither: a subscriber).
    pub const ECHO: u16 = 1 << 15;
}

/// The topics a connection is subscribed to, each with its position in the topic's subscriber
/// list (so unsubscribing needs no search). One topic is stored inline; a few in a boxed list
/// (searched linearly); past [`INDEX_FROM`] topics the list gets a hash index, so a SUBSCRIBE
/// or UNSUBSCRIBE of 1024 topics stays linear (access, issue 14: expensive requests are linear).
#[derive(Debug, Default)]
pub enum Subs {
    /// None.
    #[default]
    None,
    /// One topic (the common case: `/ws/<topic>`, `/room/<topic>`).
    One(Arc<str>, u32),
    /// Several, in subscription order.
    Many(Box<Vec<(Arc<str>, u32)>>),
    /// More than [`INDEX_FROM`]: subscription order, and each topic's position by name.
    Indexed(Box<Indexed>),
}

/// A list this long gets a hash index: below it a search is a few compares and costs no map.
pub const INDEX_FROM: usize = 16;

/// Many topics: their order, and their positions by name.
#[derive(Debug, Default)]
pub struct Indexed {
    order: Vec<Arc<str>>,
    positions: std::collections::HashMap<Arc<str>, u32>,
}

impl Subs {
    /// Number of topics.
    pub fn len(&self) -> usize {
        match self {
            Subs::None => 0,
            Subs::One(..) => 1,
            Subs::Many(v) => v.len(),
            Subs::Indexed(x) => x.order.len(),
        }
    }

    /// True when subscribed to nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Topic names in subscription order.
    pub fn names(&self) -> Vec<Arc<str>> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each_arc(|t| out.push(t.clone()));
        out
    }

    /// Visit every topic name in subscription order (no allocation).
    pub fn for_each(&self, mut f: impl FnMut(&str)) {
        self.for_each_arc(|t| f(t));
    }

    fn for_each_arc(&self, mut f: impl FnMut(&Arc<str>)) {
        match self {
            Subs::None => {}
            Subs::One(t, _) => f(t),
            Subs::Many(v) => v.iter().for_each(|(t, _)| f(t)),
            Subs::Indexed(x) => x.order.iter().for_each(f),
        }
    }

    /// True if subscribed to `topic`.
    pub fn contains(&self, topic: &str) -> bool {
        self.position(topic).is_some()
    }

    /// `topic`'s position in its subscriber list.
    pub fn position(&self, topic: &str) -> Option<u32> {
        match self {
            Subs::None => None,
            Subs::One(t, p) => (&**t == topic).then_some(*p),
            Subs::Many(v) => v.iter().find(|(t, _)| &**t == topic).map(|(_, p)| *p),
            Subs::Indexed(x) => x.positions.get(topic).copied(),
        }
    }

    /// Record that `topic` moved to position `pos` in its subscriber list.
    pub fn set_position(&mut self, topic: &str, pos: u32) {
        match self {
            Subs::None => {}
            Subs::One(t, p) => {
                if &**t == topic {
                    *p = pos;
                }
            }
            Subs::Many(v) => {
                if let Some(e) = v.iter_mut().find(|(t, _)| &**t == topic) {
                    e.1 = pos;
                }
            }
            Subs::Indexed(x) => {
                if let Some(p) = x.positions.get_mut(topic) {
                    *p = pos;
                }
            }
        }
    }

    /// Add `topic` (not subscribed yet) at position `pos`.
    pub fn push(&mut self, topic: Arc<str>, pos: u32) {
        *self = match std::mem::take(self) {
            Subs::None => Subs::One(topic, pos),
            Subs::One(t, p) => Subs::Many(Box::new(vec![(t, p), (topic, pos)])),
            Subs::Many(mut v) if v.len() < INDEX_FROM => {
                v.push((topic, pos));
                Subs::Many(v)
            }
            Subs::Many(v) => {
                let mut x = Indexed::default();
                for (t, p) in v.into_iter().chain(std::iter::once((topic, pos))) {
                    x.order.push(t.clone());
                    x.positions.insert(t, p);
                }
                Subs::Indexed(Box::new(x))
            }
            Subs::Indexed(mut x) => {
                x.order.push(topic.clone());
                x.positions.insert(topic, pos);
                Subs::Indexed(x)
            }
        };
    }

    /// Remove `topic`; returns its position.
    pub fn remove(&mut self, topic: &str) -> Option<u32> {
        match self {
            Subs::None => None,
            Subs::One(t, p) => {
                if &**t != topic {
                    return None;
                }
                let p = *p;
                *self = Subs::None;
                Some(p)
            }
            Subs::Many(v) => {
                let i = v.iter().position(|(t, _)| &**t == topic)?;
                let (_, p) = v.remove(i);
                if v.is_empty() {
                    *self = Subs::None;
                }
                Some(p)
            }
            Subs::Indexed(x) => {
                let (name, p) = x.positions.remove_entry(topic)?;
                // Pointer compares only: the same `Arc` is in both.
                if let Some(i) = x.order.iter().position(|t| Arc::ptr_eq(t, &name)) {
                    x.order.remove(i);
                }
                Some(p)
            }
        }
    }

    /// Take every subscription, leaving none.
    pub fn take_all(&mut self) -> Vec<(Arc<str>, u32)> {
        match std::mem::take(self) {
            Subs::None => Vec::new(),
            Subs::One(t, p) => vec![(t, p)],
            Subs::Many(v) => *v,
            Subs::Indexed(mut x) => x
                .order
                .into_iter()
                .map(|t| {
                    let p = x.positions.remove(&t).unwrap_or_default();
                    (t, p)
                })
                .collect(),
        }
    }
}

/// An HTTP publish whose body is still arriving.
#[derive(Debug)]
pub struct Body {
    /// Topic to publish to.
    pub topic: String,
    /// Text (`text/*`, JSON) or binary.
    pub text: bool,
    /// Where the body starts in the request buffer.
    pub head_len: usize,
    /// Content-Length.
    pub length: usize,
    /// CORS headers for the answer (access: a listed `Origin`).
    pub cors: Option<Vec<(&'static str, String)>>,
}

/// Request state while the connection speaks HTTP (handshake, HTTP publish).
#[derive(Debug)]
pub struct Http {
    /// Every byte received so far (pooled by the shard).
    pub buf: Vec<u8>,
    /// The incremental head parser.
    pub parser: RequestParser,
    /// Who connected.
    pub peer: SocketAddr,
    /// When it was accepted (handshake latency).
    pub accepted_at: Instant,
    /// An HTTP publish waiting for its body.
    pub body: Option<Body>,
    /// `buf`'s capacity, charged to the shard's ledger as unfinished input (isolation).
    pub charge: InboundCharge,
}

/// Receive state while a partial frame or a fragmented message is buffered.
#[derive(Debug)]
pub struct Rx {
    /// The frame decoder (holds the reassembly of a fragmented message).
    pub decoder: Decoder,
    /// Received bytes not decoded yet (a partial frame, or input held by a stopped publisher).
    pub leftover: Vec<u8>,
    /// `leftover`'s capacity plus the reassembly buffer, charged to the shard's ledger as
    /// unfinished input (isolation).
    pub charge: InboundCharge,
}

/// Topics a connection holds paused, each with the low-water mark that releases it.
pub type HeldPauses = Vec<(Arc<str>, usize)>;

/// One connection.
pub struct Conn {
    /// Frames waiting to be written (no allocation while empty).
    pub queue: SendQueue,
    /// Subscribed topics.
    pub subs: Subs,
    /// The topic its messages are published to ([`Role::Publisher`]); the rest of its
    /// [`role`](Self::role) is [`flag::ECHO`]. (A `Role` field would take 24 bytes: a fat
    /// pointer has one niche, not the two its unit variants need.)
    publishes: Option<Arc<str>>,
    /// Heartbeat and timeout state.
    pub liveness: Liveness,
    /// While speaking HTTP.
    pub http: Option<Box<Http>>,
    /// While a partial frame is buffered.
    pub rx: Option<Box<Rx>>,
    /// Topics this connection holds paused (`pause` policy), each with the low-water mark that
    /// releases it.
    pub paused: Option<Box<HeldPauses>>,
    /// With [`flag::SLOW`]: the low-water mark that ends it (saturated at 4 GiB: no queue
    /// is allowed that deep).
    pub slow_low: u32,
    /// Shard clock (ms) of the last write that made progress, or of the upgrade: how long an
    /// evicted connection had stalled.
    pub write_progress: u32,
    /// Shard clock (ms) of the phase's deadline (handshake, flush, linger), with
    /// [`flag::TIMED`].
    pub deadline: u32,
    /// Bytes its kernel send buffer held at the last sample (`Handler::kernel_held`): part of
    /// its backlog against the high-water mark; charged to the ceiling while it is slow.
    pub kernel: u32,
    /// Access state only some connections need for a while: a token's grants, a per-address
    /// ticket, a rate bucket that is not full (`access::state`).
    pub access: Option<Box<crate::access::state::ConnAccess>>,
    /// [`flag`] bits.
    pub flags: u16,
    /// Where it is in its life.
    pub phase: Phase,
    /// permessage-deflate as negotiated in the handshake (one byte, in what was padding; the
    /// compressor and inflater are per shard: `crate::deflate`).
    pub deflate: Negotiated,
}

impl Conn {
    /// A connection just accepted from `peer` at `now`, reading its request.
    pub fn accepted(http: Box<Http>) -> Conn {
        Conn {
            queue: SendQueue::new(),
            subs: Subs::None,
            publishes: None,
            liveness: Liveness::default(),
            http: Some(http),
            rx: None,
            paused: None,
            slow_low: 0,
            write_progress: 0,
            deadline: 0,
            kernel: 0,
            access: None,
            flags: 0,
            phase: Phase::Http,
            deflate: Negotiated::default(),
        }
    }

    /// What its messages do.
    pub fn role(&self) -> Role {
        match &self.publishes {
            Some(t) => Role::Publisher(t.clone()),
            None if self.has(flag::ECHO) => Role::Echo,
            None => Role::Subscriber,
        }
    }

    /// Give it a role (at the upgrade).
    pub fn set_role(&mut self, role: Role) {
        self.clear(flag::ECHO);
        self.publishes = match role {
            Role::Publisher(t) => Some(t),
            Role::Echo => {
                self.set(flag::ECHO);
                None
            }
            Role::Subscriber => None,
        };
    }

    /// The topic it publishes to, if it is a publisher.
    pub fn publishes(&self) -> Option<&Arc<str>> {
        self.publishes.as_ref()
    }

    /// True for [`Role::Subscriber`] (its text messages are control requests).
    pub fn is_subscriber(&self) -> bool {
        self.publishes.is_none() && !self.has(flag::ECHO)
    }

    /// True if every bit of `f` is set.
    pub fn has(&self, f: u16) -> bool {
        self.flags & f == f
    }

    /// Set the bits of `f`.
    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    /// Clear the bits of `f`.
    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    /// True once a final frame is queued or the connection is past that: it takes no more
    /// frames.
    pub fn closing(&self) -> bool {
        !matches!(self.phase, Phase::Http | Phase::Open)
    }

    /// Everything it holds unsent: its queue (logical bytes) and its kernel send buffer as last
    /// sampled.
    pub fn unsent(&self) -> usize {
        self.queue.len_bytes() + self.kernel as usize
    }

    /// What counts against the high-water mark if `extra` more bytes were queued: the kernel's
    /// bytes plus everything behind the frame being written. The frame in progress is exempt,
    /// so a frame alone (even one larger than the mark) never makes a connection slow.
    pub fn backlog_with(&self, extra: usize) -> usize {
        let behind = if self.queue.is_empty() {
            0 // `extra` becomes the frame in progress
        } else {
            self.queue.len_bytes() - self.queue.head_remaining() + extra
        };
        self.kernel as usize + behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle connection keeps: see docs/ENGINE.md, "Per-connection memory budget".
    #[test]
    fn slot_stays_within_budget() {
        let size = std::mem::size_of::<Conn>();
        eprintln!("Conn: {size} bytes");
        // 160 in engine v2; isolation added 16 (the queue's waiting-pong index and entry-array
        // charge, the fragment clock in `Liveness`, padding), access 8 for its pointer (issue
        // 14; `access::state`): 184. Issue 13 took 16 back: the entry-array charge is derived
        // from the capacity, the pinned count is a `u32`, and the role is a publish topic plus
        // a flag bit (an enum with a fat pointer takes 24 bytes).
        assert!(size <= 168, "Conn is {size} bytes");
        assert!(std::mem::size_of::<Subs>() <= 24);
    }

    #[test]
    fn many_subs_get_an_index_and_keep_their_order() {
        let mut s = Subs::None;
        let n = INDEX_FROM as u32 * 4;
        for i in 0..n {
            s.push(format!("t{i}").into(), i);
        }
        assert!(matches!(s, Subs::Indexed(_)));
        assert_eq!(s.len(), n as usize);
        assert_eq!(s.position("t7"), Some(7));
        s.set_position("t7", 70);
        assert_eq!(s.remove("t7"), Some(70));
        assert_eq!(s.remove("t7"), None);
        assert!(!s.contains("t7") && s.contains("t8"));
        let names = s.names();
        assert_eq!(names.len(), n as usize - 1);
        assert_eq!((&*names[6], &*names[7]), ("t6", "t8"), "subscription order");
        let all = s.take_all();
        assert_eq!(all[7], (Arc::from("t8"), 8));
        assert!(s.is_empty());
    }

    #[test]
    fn subs_inline_then_boxed_with_positions() {
        let mut s = Subs::None;
        s.push("a".into(), 3);
        assert!(matches!(s, Subs::One(..)));
        assert_eq!(s.position("a"), Some(3));
        s.push("b".into(), 0);
        s.set_position("a", 7);
        assert_eq!(s.names(), vec![Arc::from("a"), Arc::from("b")]);
        assert_eq!((s.position("a"), s.position("b")), (Some(7), Some(0)));
        assert_eq!(s.remove("a"), Some(7));
        assert_eq!(s.remove("a"), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove("b"), Some(0));
        assert!(s.is_empty() && matches!(s, Subs::None));
        s.push("c".into(), 1);
        assert_eq!(s.take_all(), vec![(Arc::from("c"), 1)]);
        assert!(s.is_empty());
    }
}
