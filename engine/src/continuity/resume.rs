//! Resume: what a sequenced subscription receives before it goes live, and the switch-over.
//!
//! Two sides talk through the mesh: the **connection's shard** C (a [`Resume`] per pending
//! subscription) sends [`Ask`]s to the topic's **home shard** H, which answers each from the
//! topic's numbering and history with [`serve`] (an [`Answer`]: an optional [`Notice`], a chunk
//! of messages to replay, and what comes [`Next`]).
//!
//! **The switch-over rule.** H answers `Next::Live { after: S }` when its chunk reaches the
//! topic's head S at the moment H serves the ask. C adds the connection to the topic's live
//! subscribers when it *processes* that answer, not before. H sends the topic's messages to C
//! and its answers to C over the same FIFO ring, so every message numbered ≤ S reached C
//! before the answer (and was not delivered to the connection, which was not subscribed yet)
//! and every message numbered > S reaches C after it (and is delivered). Replay covers
//! `(position, S]`; live starts at S + 1: no gap, no duplicate. When C is H, serving and
//! subscribing happen in one step of the same loop turn. The rule needs: every message of a
//! topic reaches every shard through its home shard's ring (publishes on other shards and
//! messages from NATS are forwarded to the home shard first).
//!
//! **Pacing.** A replay is cut into chunks (`max_bytes`, `max_messages`; at least one message
//! each). After a chunk that is not the last (`Next::More`), C asks again only once the
//! connection's queue has drained ([`Resume::poll_ask`]), so a long replay never pushes a
//! connection over its high-water mark; live messages keep flowing to C meanwhile and wait in
//! H's history, which is why a replay slower than the topic can end in a `trimmed` resync.
//!
//! **Deep history.** When the ring does not reach back far enough and the host has JetStream,
//! H answers `Next::Deep` with the missing range; C fetches it through the NATS bridge
//! ([`Resume::handle_deep`]) and then asks H for the rest.
//!
//! **Notices.** The first answer always carries a notice: the position the client is at in
//! the topic's current epoch (its next message is `seq + 1`). A notice with `resync` means the
//! client cannot have every message after the position it asked for: the first one it can
//! have is `seq + 1`. The reasons: `epoch` (the numbering is not the one the client named),
//! `ahead` (the client named a number this epoch has not reached), `trimmed` (history no
//! longer reaches back that far, or is off), `lost` (this host never received some of those
//! messages).

use bytes::Bytes;
use shardcast_proto::MessageKind;

use super::history::{Coverage, HistoryRing};
use super::sequence::TopicSeq;
use super::{Epoch, Position, Seq};

/// Why a client cannot have everything after the position it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The topic's numbering is not the epoch the client named (restart, change of origin).
    Epoch,
    /// The client named a number beyond the head of this epoch.
    Ahead,
    /// History does not reach back that far (or is off for this topic).
    Trimmed,
    /// This host never received some of those messages (lost between hosts).
    Lost,
}

impl Reason {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Epoch => "epoch",
            Reason::Ahead => "ahead",
            Reason::Trimmed => "trimmed",
            Reason::Lost => "lost",
        }
    }
}

/// What a sequenced client is told about a topic: its position in `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The topic's numbering.
    pub epoch: Epoch,
    /// The client's position: the next message it receives of this topic is `seq + 1`.
    pub seq: Seq,
    /// Set when messages the client asked for are not coming (the first it can have is
    /// `seq + 1`).
    pub resync: Option<Reason>,
}

/// C → H: what a pending subscription needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// C's handle for the pending subscription (connection slot + generation + topic), echoed
    /// in the answer so a stale answer is recognised.
    pub ticket: u64,
    /// Everything after this position (`None`: nothing old, live from the head).
    pub after: Option<Position>,
    /// The subscription's first ask: the answer carries a notice.
    pub first: bool,
    /// Most payload bytes in one answer's replay (at least one message is always sent).
    pub max_bytes: usize,
    /// Most messages in one answer's replay.
    pub max_messages: usize,
}

impl Ask {
    /// A fresh subscription: live from the head, no replay.
    pub fn fresh(ticket: u64, max_bytes: usize, max_messages: usize) -> Ask {
        Ask {
            ticket,
            after: None,
            first: true,
            max_bytes,
            max_messages,
        }
    }
}

/// One message handed out for replay (C encodes it in the connection's wire form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Its number.
    pub seq: Seq,
    /// Text or binary.
    pub kind: MessageKind,
    /// The published payload.
    pub payload: Bytes,
}

/// What follows an answer's replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Subscribe the connection now: live delivery starts after `after` (the head H had).
    Live {
        /// The switch point S.
        after: Seq,
    },
    /// More to replay: ask again after this position once the queue has drained.
    More {
        /// The last message of this chunk.
        after: Position,
    },
    /// Older than the ring: fetch `first..=last` of `epoch` from deep history, then ask again.
    Deep {
        /// The numbering.
        epoch: Epoch,
        /// First missing number.
        first: Seq,
        /// Last missing number (the one before the ring's first).
        last: Seq,
    },
}

/// H → C: the answer to an [`Ask`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The ask's ticket.
    pub ticket: u64,
    /// The client's position before the replay (always on a first answer; on later ones
    /// only to resync).
    pub notice: Option<Notice>,
    /// Messages numbered `position + 1, position + 2, …`, contiguous.
    pub replay: Vec<Replayed>,
    /// What comes next.
    pub next: Next,
}

/// H's side: answer `ask` from the topic's numbering and ring. `deep` is true when this host
/// can fetch older messages of the topic from JetStream.
pub fn serve(seq: &TopicSeq, ring: &HistoryRing, ask: &Ask, deep: bool) -> Answer {
    let (epoch, head) = (seq.epoch(), seq.head());
    let answer = |notice: Option<Notice>, replay: Vec<Replayed>, next: Next| Answer {
        ticket: ask.ticket,
        notice,
        replay,
        next,
    };
    let positioned = |at: Seq| {
        ask.first.then_some(Notice {
            epoch,
            seq: at,
            resync: None,
        })
    };
    let Some(p) = ask.after else {
        return answer(positioned(head), Vec::new(), Next::Live { after: head });
    };
    let resync = |reason: Reason| {
        // Replay the part of the ring that is complete up to the head.
        let start = ring.complete_from();
        let at = start.map_or(head, |s| s - 1);
        let notice = Some(Notice {
            epoch,
            seq: at,
            resync: Some(reason),
        });
        match start.and_then(|s| ring.index_of(s)) {
            Some(i) => chunk(ring, i, ask, epoch, head, notice),
            None => answer(notice, Vec::new(), Next::Live { after: head }),
        }
    };
    if p.epoch != epoch {
        return resync(Reason::Epoch);
    }
    if p.seq > head {
        return resync(Reason::Ahead);
    }
    if p.seq == head {
        return answer(positioned(head), Vec::new(), Next::Live { after: head });
    }
    match ring.locate(p.seq) {
        Coverage::Covered(i) => chunk(ring, i, ask, epoch, head, positioned(p.seq)),
        Coverage::Trimmed(first) if deep => answer(
            positioned(p.seq),
            Vec::new(),
            Next::Deep {
                epoch,
                first: p.seq + 1,
                last: first.map_or(head, |f| f - 1),
            },
        ),
        Coverage::Trimmed(_) => resync(Reason::Trimmed),
        Coverage::Lost { .. } => resync(Reason::Lost),
    }
}

/// A chunk of the ring from index `i`, ending the replay if it reaches `head`.
fn chunk(
    ring: &HistoryRing,
    i: usize,
    ask: &Ask,
    epoch: Epoch,
    head: Seq,
    notice: Option<Notice>,
) -> Answer {
    let mut replay = Vec::new();
    let mut bytes = 0usize;
    for e in ring.from_index(i) {
        let full = replay.len() >= ask.max_messages.max(1)
            || (!replay.is_empty() && bytes + e.payload.len() > ask.max_bytes);
        if full {
            break;
        }
        bytes += e.payload.len();
        replay.push(Replayed {
            seq: e.seq,
            kind: e.kind,
            payload: e.payload.clone(),
        });
    }
    let last = replay.last().map(|r| r.seq);
    let next = match last {
        Some(l) if l < head => Next::More {
            after: Position { epoch, seq: l },
        },
        _ => Next::Live { after: head },
    };
    Answer {
        ticket: ask.ticket,
        notice,
        replay,
        next,
    }
}

/// What C must do after an answer (or a deep fetch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Send this notice to the client first.
    pub notice: Option<Notice>,
    /// Then queue these messages, in order.
    pub replay: Vec<Replayed>,
    /// Then this.
    pub action: Action,
}

/// C's next move for a pending subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the connection to the topic's live subscribers now; live starts after `after`.
    Subscribe {
        /// The switch point S.
        after: Seq,
    },
    /// Call [`Resume::poll_ask`] once the connection's queue has drained.
    AskWhenDrained,
    /// Fetch `first..=last` of `epoch` from deep history, then call [`Resume::handle_deep`].
    FetchDeep {
        /// The numbering.
        epoch: Epoch,
        /// First number.
        first: Seq,
        /// Last number.
        last: Seq,
    },
}

/// An answer that breaks the protocol (a bug somewhere: the connection is closed with 1011).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// An ask is out.
    Asked,
    /// A chunk was queued; the next ask waits for the queue to drain.
    Draining,
    /// Waiting for a deep fetch of `first..=last`.
    Deep { first: Seq, last: Seq },
    /// Subscribed: nothing more to do.
    Live,
}

/// C's side: one pending sequenced subscription, from its first ask until it is live.
#[derive(Clone, Debug)]
pub struct Resume {
    ticket: u64,
    position: Option<Position>,
    state: State,
    max_bytes: usize,
    max_messages: usize,
}

impl Resume {
    /// Start a subscription resuming after `since` (`None`: fresh); returns the first ask.
    pub fn start(
        ticket: u64,
        since: Option<Position>,
        max_bytes: usize,
        max_messages: usize,
    ) -> (Resume, Ask) {
        let r = Resume {
            ticket,
            position: since,
            state: State::Asked,
            max_bytes,
            max_messages,
        };
        let ask = Ask {
            ticket,
            after: since,
            first: true,
            max_bytes,
            max_messages,
        };
        (r, ask)
    }

    /// The client's position as far as what was queued for it.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// True once the connection is (to be) subscribed.
    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    /// Take H's answer; checks that the replay continues the position without gap or
    /// duplicate and that the switch point is where the replay ends.
    pub fn handle_answer(&mut self, a: Answer) -> Result<Step, Broken> {
        if a.ticket != self.ticket {
            return Err(Broken("answer for another ticket"));
        }
        if self.state != State::Asked {
            return Err(Broken("answer without an ask"));
        }
        if let Some(n) = a.notice {
            self.position = Some(Position {
                epoch: n.epoch,
                seq: n.seq,
            });
        }
        let Some(mut pos) = self.position else {
            return Err(Broken("first answer without a notice"));
        };
        for r in &a.replay {
            if r.seq != pos.seq + 1 {
                return Err(Broken("replay is not contiguous"));
            }
            pos.seq = r.seq;
        }
        self.position = Some(pos);
        let action = match a.next {
            Next::Live { after } if after == pos.seq => {
                self.state = State::Live;
                Action::Subscribe { after }
            }
            Next::Live { .. } => return Err(Broken("switch point is not the end of the replay")),
            Next::More { after } if after == pos => {
                self.state = State::Draining;
                Action::AskWhenDrained
            }
            Next::More { .. } => return Err(Broken("continuation is not the end of the chunk")),
            Next::Deep { epoch, first, last } if epoch == pos.epoch && first == pos.seq + 1 => {
                self.state = State::Deep { first, last };
                Action::FetchDeep { epoch, first, last }
            }
            Next::Deep { .. } => return Err(Broken("deep range does not continue the position")),
        };
        Ok(Step {
            notice: a.notice,
            replay: a.replay,
            action,
        })
    }

    /// The next ask, once the connection's queue has drained after a chunk (`None` in any
    /// other state).
    pub fn poll_ask(&mut self) -> Option<Ask> {
        if self.state != State::Draining {
            return None;
        }
        self.state = State::Asked;
        Some(Ask {
            ticket: self.ticket,
            after: self.position,
            first: false,
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
        })
    }

    /// Take what deep history returned for the range it was asked (ascending; any subset).
    /// Keeps the complete run that ends the fetch; if that run does not start right after the
    /// position, the client is told (`trimmed`) where it continues. Then asks H for the rest
    /// once the queue has drained.
    pub fn handle_deep(&mut self, mut got: Vec<Replayed>) -> Result<Step, Broken> {
        let State::Deep { first, last } = self.state else {
            return Err(Broken("deep result without a deep fetch"));
        };
        let Some(mut pos) = self.position else {
            return Err(Broken("deep fetch without a position"));
        };
        got.retain(|r| (first..=last).contains(&r.seq));
        if got.windows(2).any(|w| w[1].seq <= w[0].seq) {
            return Err(Broken("deep result out of order"));
        }
        let run = got
            .windows(2)
            .rposition(|w| w[1].seq != w[0].seq + 1)
            .map_or(0, |i| i + 1);
        got.drain(..run);
        let notice = match got.first() {
            Some(r) if r.seq == first => None,
            // Nothing (or only a later part) could be fetched: continue after what we have,
            // or ask H from the end of the range.
            Some(r) => Some(r.seq - 1),
            None => Some(last),
        }
        .map(|at| Notice {
            epoch: pos.epoch,
            seq: at,
            resync: Some(Reason::Trimmed),
        });
        if let Some(n) = notice {
            pos.seq = n.seq;
        }
        if let Some(r) = got.last() {
            pos.seq = r.seq;
        }
        self.position = Some(pos);
        self.state = State::Draining;
        Ok(Step {
            notice,
            replay: got,
            action: Action::AskWhenDrained,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuity::epoch::EpochSource;
    use crate::continuity::history::Limits;
    use crate::continuity::sequence::Source;

    struct Topic {
        seq: TopicSeq,
        ring: HistoryRing,
        epochs: EpochSource,
        limits: Limits,
    }

    impl Topic {
        fn new(messages: usize) -> Topic {
            let epochs = EpochSource::new(5);
            Topic {
                seq: TopicSeq::new(&epochs),
                ring: HistoryRing::new(),
                epochs,
                limits: Limits {
                    messages,
                    bytes: 1 << 20,
                    age_ms: 0,
                },
            }
        }

        fn publish(&mut self, n: u64) {
            for _ in 0..n {
                let super::super::sequence::Stamped::Deliver(s) =
                    self.seq.stamp(0, Source::Local, 1000, &mut self.epochs)
                else {
                    unreachable!()
                };
                let payload = Bytes::from(format!("m{}", s.seq));
                let len = payload.len();
                self.ring
                    .push(&self.limits, 0, s.seq, MessageKind::Text, payload, len);
            }
        }

        fn epoch(&self) -> Epoch {
            self.seq.epoch()
        }
    }

    /// Deep-history results numbered `seqs`.
    fn fetched(seqs: impl IntoIterator<Item = Seq>) -> Vec<Replayed> {
        seqs.into_iter()
            .map(|seq| Replayed {
                seq,
                kind: MessageKind::Text,
                payload: Bytes::new(),
            })
            .collect()
    }

    fn ask(after: Option<Position>) -> Ask {
        Ask {
            ticket: 7,
            after,
            first: true,
            max_bytes: 1 << 20,
            max_messages: 1000,
        }
    }

    fn seqs(a: &Answer) -> Vec<Seq> {
        a.replay.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn fresh_is_live_at_the_head() {
        let mut t = Topic::new(10);
        t.publish(5);
        let a = serve(&t.seq, &t.ring, &ask(None), false);
        assert_eq!(
            a.notice,
            Some(Notice {
                epoch: t.epoch(),
                seq: 5,
                resync: None
            })
        );
        assert!(a.replay.is_empty());
        assert_eq!(a.next, Next::Live { after: 5 });
    }

    #[test]
    fn covered_resume_replays_exactly_the_gap() {
        let mut t = Topic::new(10);
        t.publish(20);
        let at = |seq| {
            Some(Position {
                epoch: t.epoch(),
                seq,
            })
        };
        let a = serve(&t.seq, &t.ring, &ask(at(15)), false);
        assert_eq!(
            a.notice,
            Some(Notice {
                epoch: t.epoch(),
                seq: 15,
                resync: None
            })
        );
        assert_eq!(seqs(&a), [16, 17, 18, 19, 20]);
        assert_eq!(a.replay[0].payload, Bytes::from_static(b"m16"));
        assert_eq!(a.next, Next::Live { after: 20 });
        let a = serve(&t.seq, &t.ring, &ask(at(20)), false);
        assert_eq!((seqs(&a).len(), a.next), (0, Next::Live { after: 20 }));
        assert_eq!(a.notice.unwrap().resync, None);
        let a = serve(&t.seq, &t.ring, &ask(at(10)), false);
        assert_eq!(seqs(&a), (11..=20).collect::<Vec<_>>(), "exactly the ring");
        assert_eq!(a.notice.unwrap().resync, None);
    }

    #[test]
    fn resyncs_name_the_first_message_the_client_can_have() {
        let mut t = Topic::new(10);
        t.publish(20);
        let e = t.epoch();
        let cases = [
            (Position { epoch: e, seq: 3 }, Reason::Trimmed),
            (
                Position {
                    epoch: Epoch::from_u64(1),
                    seq: 15,
                },
                Reason::Epoch,
            ),
            (Position { epoch: e, seq: 21 }, Reason::Ahead),
        ];
        for (p, reason) in cases {
            let a = serve(&t.seq, &t.ring, &ask(Some(p)), false);
            assert_eq!(
                a.notice,
                Some(Notice {
                    epoch: e,
                    seq: 10,
                    resync: Some(reason)
                })
            );
            assert_eq!(seqs(&a), (11..=20).collect::<Vec<_>>());
            assert_eq!(a.next, Next::Live { after: 20 });
        }
        // History off: nothing to replay, live from the head.
        let mut off = Topic::new(0);
        off.publish(20);
        let a = serve(
            &off.seq,
            &off.ring,
            &ask(Some(Position {
                epoch: off.epoch(),
                seq: 3,
            })),
            false,
        );
        assert_eq!(
            a.notice,
            Some(Notice {
                epoch: off.epoch(),
                seq: 20,
                resync: Some(Reason::Trimmed)
            })
        );
        assert_eq!((a.replay.len(), a.next), (0, Next::Live { after: 20 }));
    }

    #[test]
    fn lost_messages_resync_after_the_last_hole() {
        let mut t = Topic::new(100);
        let e = Epoch::from_u64(0xa);
        for s in [1, 2, 3, 6, 7, 9, 10] {
            let p = Position { epoch: e, seq: s };
            let _ = t.seq.stamp(0, Source::Remote(p), 1000, &mut t.epochs);
            t.ring
                .push(&t.limits, 0, s, MessageKind::Binary, Bytes::new(), 0);
        }
        let a = serve(
            &t.seq,
            &t.ring,
            &ask(Some(Position { epoch: e, seq: 2 })),
            false,
        );
        assert_eq!(
            a.notice,
            Some(Notice {
                epoch: e,
                seq: 8,
                resync: Some(Reason::Lost)
            })
        );
        assert_eq!(seqs(&a), [9, 10]);
        let a = serve(
            &t.seq,
            &t.ring,
            &ask(Some(Position { epoch: e, seq: 8 })),
            false,
        );
        assert_eq!((a.notice.unwrap().resync, seqs(&a)), (None, vec![9, 10]));
        // A client from another epoch gets the complete tail too.
        let a = serve(
            &t.seq,
            &t.ring,
            &ask(Some(Position {
                epoch: Epoch::from_u64(3),
                seq: 8,
            })),
            false,
        );
        assert_eq!(
            a.notice.unwrap(),
            Notice {
                epoch: e,
                seq: 8,
                resync: Some(Reason::Epoch)
            }
        );
    }

    #[test]
    fn chunks_pace_the_replay_and_the_last_one_switches() {
        let mut t = Topic::new(1000);
        t.publish(100);
        let e = t.epoch();
        let (mut r, mut next) = Resume::start(7, Some(Position { epoch: e, seq: 40 }), 1 << 20, 25);
        let mut got = Vec::new();
        let mut notices = Vec::new();
        loop {
            let a = serve(&t.seq, &t.ring, &next, false);
            // Live traffic between chunks.
            t.publish(3);
            let step = r.handle_answer(a).unwrap();
            notices.extend(step.notice);
            got.extend(step.replay.iter().map(|x| x.seq));
            match step.action {
                Action::AskWhenDrained => next = r.poll_ask().unwrap(),
                Action::Subscribe { after } => {
                    assert_eq!(after, *got.last().unwrap());
                    break;
                }
                Action::FetchDeep { .. } => unreachable!(),
            }
        }
        assert_eq!(
            notices,
            [Notice {
                epoch: e,
                seq: 40,
                resync: None
            }]
        );
        assert_eq!(got, (41..=got.len() as u64 + 40).collect::<Vec<_>>());
        assert!(
            *got.last().unwrap() > 100,
            "caught up with what was published meanwhile"
        );
        assert!(r.is_live() && r.poll_ask().is_none());
    }

    #[test]
    fn byte_bound_always_sends_one_message() {
        let mut t = Topic::new(100);
        t.publish(10);
        let mut a = ask(Some(Position {
            epoch: t.epoch(),
            seq: 0,
        }));
        a.max_bytes = 1;
        let ans = serve(&t.seq, &t.ring, &a, false);
        assert_eq!(seqs(&ans), [1]);
        assert_eq!(
            ans.next,
            Next::More {
                after: Position {
                    epoch: t.epoch(),
                    seq: 1
                }
            }
        );
    }

    #[test]
    fn deep_history_fills_what_the_ring_lost() {
        let mut t = Topic::new(10);
        t.publish(50);
        let e = t.epoch();
        let (mut r, first) = Resume::start(1, Some(Position { epoch: e, seq: 12 }), 1 << 20, 1000);
        let a = serve(&t.seq, &t.ring, &first, true);
        assert_eq!(
            a.next,
            Next::Deep {
                epoch: e,
                first: 13,
                last: 40
            }
        );
        let step = r.handle_answer(a).unwrap();
        assert_eq!(
            step.action,
            Action::FetchDeep {
                epoch: e,
                first: 13,
                last: 40
            }
        );
        // JetStream had all of it.
        let deep = fetched(13..=40);
        let step = r.handle_deep(deep).unwrap();
        assert_eq!((step.notice, step.replay.len()), (None, 28));
        let a = serve(&t.seq, &t.ring, &r.poll_ask().unwrap(), true);
        assert_eq!(seqs(&a), (41..=50).collect::<Vec<_>>());
        let step = r.handle_answer(a).unwrap();
        assert_eq!(step.action, Action::Subscribe { after: 50 });

        // JetStream had only a later part, with a hole: keep the run that ends the range.
        let (mut r, first) = Resume::start(2, Some(Position { epoch: e, seq: 12 }), 1 << 20, 1000);
        r.handle_answer(serve(&t.seq, &t.ring, &first, true))
            .unwrap();
        let deep = fetched([20, 21, 30, 31, 32]);
        let step = r.handle_deep(deep).unwrap();
        assert_eq!(
            step.notice,
            Some(Notice {
                epoch: e,
                seq: 29,
                resync: Some(Reason::Trimmed)
            })
        );
        assert_eq!(
            step.replay.iter().map(|x| x.seq).collect::<Vec<_>>(),
            [30, 31, 32]
        );
        let a = serve(&t.seq, &t.ring, &r.poll_ask().unwrap(), true);
        assert_eq!(
            a.next,
            Next::Deep {
                epoch: e,
                first: 33,
                last: 40
            },
            "still behind the ring"
        );
        r.handle_answer(a).unwrap();
        let step = r.handle_deep(Vec::new()).unwrap();
        assert_eq!(
            step.notice,
            Some(Notice {
                epoch: e,
                seq: 40,
                resync: Some(Reason::Trimmed)
            })
        );
        let next = r.poll_ask().unwrap();
        let step = r
            .handle_answer(serve(&t.seq, &t.ring, &next, true))
            .unwrap();
        assert_eq!(step.replay.len(), 10);
        assert_eq!(step.action, Action::Subscribe { after: 50 });
    }

    #[test]
    fn broken_answers_are_refused() {
        let e = Epoch::from_u64(1);
        let p = Position { epoch: e, seq: 5 };
        let msg = |seq| Replayed {
            seq,
            kind: MessageKind::Text,
            payload: Bytes::new(),
        };
        let ans = |notice, replay, next| Answer {
            ticket: 1,
            notice,
            replay,
            next,
        };
        let n = Some(Notice {
            epoch: e,
            seq: 5,
            resync: None,
        });
        let cases = [
            (
                Answer {
                    ticket: 2,
                    ..ans(n, vec![], Next::Live { after: 5 })
                },
                "ticket",
            ),
            (ans(n, vec![msg(7)], Next::Live { after: 7 }), "contiguous"),
            (
                ans(n, vec![msg(6)], Next::Live { after: 9 }),
                "switch point",
            ),
            (
                ans(
                    n,
                    vec![msg(6)],
                    Next::More {
                        after: Position { epoch: e, seq: 9 },
                    },
                ),
                "continuation",
            ),
            (
                ans(
                    n,
                    vec![],
                    Next::Deep {
                        epoch: e,
                        first: 9,
                        last: 10,
                    },
                ),
                "deep",
            ),
        ];
        for (a, what) in cases {
            let (mut r, _) = Resume::start(1, Some(p), 100, 100);
            assert!(r.handle_answer(a).is_err(), "{what}");
        }
        let (mut r, _) = Resume::start(1, None, 100, 100);
        assert!(r
            .handle_answer(ans(None, vec![], Next::Live { after: 0 }))
            .is_err());
        assert!(r.handle_deep(vec![]).is_err());
        let (mut r, _) = Resume::start(1, Some(p), 100, 100);
        r.handle_answer(ans(n, vec![], Next::Live { after: 5 }))
            .unwrap();
        assert!(
            r.handle_answer(ans(n, vec![], Next::Live { after: 5 }))
                .is_err(),
            "no ask out"
        );
    }
}
