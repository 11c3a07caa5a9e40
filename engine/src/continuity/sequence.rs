//! The numbering of one topic, kept by its home shard.
//!
//! Contract:
//! - Every message the home shard accepts gets a [`Stamp`]: `(epoch, seq)`. Within an epoch
//!   the numbers a host hands out are strictly increasing; they are gap-free unless the stamp
//!   says otherwise ([`Change::Lost`]: this host never received those numbers from the origin).
//!   A stamp with [`Change::Epoch`] starts a new numbering: what came before it cannot be
//!   compared with what follows (history of the old epoch is dropped).
//! - **Own** numbering (messages published on this host, or numbered here): seq = last + 1,
//!   starting at 1. Its epoch comes from the shard's [`EpochSource`]; re-entering own
//!   numbering, or reaching [`MAX_SEQ`], takes a fresh generation.
//! - **Adopted** numbering (messages from another host through NATS carrying that host's
//!   `(epoch, seq)`): the origin's numbers are kept as they are, so every host shows the same
//!   numbers for a topic published on one host. A repeated or older number is a
//!   [`Stamped::Duplicate`]; a jump is [`Change::Lost`].
//! - **Several origins.** While one source is adopted, a message from another source (this
//!   host, another origin, a publisher outside shardcast) is a *handover* if the adopted
//!   origin has been silent for `window_ms` (adopt the new source, new epoch), else a
//!   *conflict*: the topic goes to own numbering under a fresh epoch and this host numbers
//!   every message in its arrival order. Own numbering adopts a remote origin only after that
//!   origin alone has been heard for `window_ms` (nothing local, no other origin), or
//!   immediately if own numbering has not numbered anything yet. So a topic published on two
//!   hosts at once has per-host numbers (resume works on the same host; another host answers
//!   with a resync), and a topic whose publisher moves settles on one numbering after at most
//!   two epoch changes.
//!
//! Time is an input (`now_ms`); nothing here reads a clock.

use super::epoch::EpochSource;
use super::{Epoch, Position, Seq, MAX_SEQ};

/// Where a message comes from, as the home shard sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Published on this host (any shard).
    Local,
    /// From NATS with the origin host's numbering (`Shardcast-Epoch` / `Shardcast-Seq`).
    Remote(Position),
    /// From NATS without a usable numbering (a publisher outside shardcast, or bad headers).
    External,
}

impl Source {
    /// A message from NATS: with the origin's numbering if it has a valid one (`seq` in
    /// `1..=MAX_SEQ`), else [`Source::External`].
    pub fn remote(numbering: Option<Position>) -> Source {
        match numbering {
            Some(p) if (1..=MAX_SEQ).contains(&p.seq) => Source::Remote(p),
            _ => Source::External,
        }
    }
}

/// What changed in the numbering with this message; subscribers get a resync notice first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new numbering starts with this message (reason `epoch` on the wire).
    Epoch,
    /// Numbers `first..=last` of this epoch never reached this host (reason `lost`).
    Lost {
        /// First missing number.
        first: Seq,
        /// Last missing number.
        last: Seq,
    },
}

/// The number a message gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Its numbering.
    pub epoch: Epoch,
    /// Its number.
    pub seq: Seq,
    /// Set when subscribers must be told before this message.
    pub change: Option<Change>,
}

/// The outcome of numbering a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamped {
    /// Deliver it with this stamp.
    Deliver(Stamp),
    /// The adopted origin's number was already delivered: drop it (counted).
    Duplicate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// This host numbers. `candidate`: a remote origin heard alone since `since_ms`.
    Own { candidate: Option<(Epoch, u64)> },
    /// The origin's numbers are kept; it was last heard at `heard_ms`.
    Adopted { heard_ms: u64 },
}

/// One topic's numbering.
#[derive(Clone, Debug)]
pub struct TopicSeq {
    epoch: Epoch,
    last: Seq,
    mode: Mode,
    /// This epoch numbered a message from NATS here: its numbers exist on this host only.
    renumbered: bool,
}

impl TopicSeq {
    /// A topic nobody has published yet: own numbering at position 0 of the current epoch
    /// (created when the first subscriber or the first message needs it).
    pub fn new(epochs: &EpochSource) -> TopicSeq {
        TopicSeq {
            epoch: epochs.current(),
            last: 0,
            mode: Mode::Own { candidate: None },
            renumbered: false,
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The last number handed out in the current epoch (0 if none): the head.
    pub fn head(&self) -> Seq {
        self.last
    }

    /// The position a fresh subscriber starts at.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.last,
        }
    }

    /// True while the numbers are the origin host's.
    pub fn is_adopted(&self) -> bool {
        matches!(self.mode, Mode::Adopted { .. })
    }

    /// True when every number of this epoch is the one its origin published to NATS (adopted,
    /// or this host's own publishes only): deep history (JetStream) holds the same numbers.
    pub fn origin_numbers(&self) -> bool {
        !self.renumbered
    }

    /// Deep history: take the numbering the topic's last message in the stream carries, on a
    /// topic this host has not numbered anything of yet (it has received nothing of it since it
    /// started, or forgot it): nothing is delivered; the origin's next message continues it as
    /// if this host had always adopted it. False (and nothing changes) once a number was
    /// handed out here.
    pub fn adopt_stored(&mut self, p: Position, now_ms: u64) -> bool {
        if self.last != 0 || self.is_adopted() || !(1..=MAX_SEQ).contains(&p.seq) {
            return false;
        }
        self.epoch = p.epoch;
        self.last = p.seq;
        self.mode = Mode::Adopted { heard_ms: now_ms };
        self.renumbered = false;
        true
    }

    /// Number one message from `source` arriving at `now_ms`; `window_ms` is the handover
    /// window (see the module docs).
    pub fn stamp(
        &mut self,
        now_ms: u64,
        source: Source,
        window_ms: u64,
        epochs: &mut EpochSource,
    ) -> Stamped {
        match self.mode {
            Mode::Adopted { heard_ms } => match source {
                Source::Remote(p) if p.epoch == self.epoch => {
                    self.mode = Mode::Adopted { heard_ms: now_ms };
                    if p.seq <= self.last {
                        return Stamped::Duplicate;
                    }
                    let change = (p.seq > self.last + 1).then_some(Change::Lost {
                        first: self.last + 1,
                        last: p.seq - 1,
                    });
                    self.last = p.seq;
                    self.deliver(change)
                }
                _ if now_ms.saturating_sub(heard_ms) < window_ms => {
                    // Two live sources: this host numbers everything from now on.
                    self.own_fresh(epochs, None, source != Source::Local)
                }
                Source::Remote(p) => self.adopt(p, now_ms),
                Source::Local => self.own_fresh(epochs, None, false),
                Source::External => self.own_fresh(epochs, None, true),
            },
            Mode::Own { candidate } => match source {
                Source::Remote(p) if self.last == 0 => self.adopt(p, now_ms),
                Source::Remote(p) => match candidate {
                    Some((e, since))
                        if e == p.epoch && now_ms.saturating_sub(since) >= window_ms =>
                    {
                        self.adopt(p, now_ms)
                    }
                    Some((e, _)) if e == p.epoch => self.own_next(epochs, candidate, true),
                    _ => self.own_next(epochs, Some((p.epoch, now_ms)), true),
                },
                Source::Local => self.own_next(epochs, None, false),
                Source::External => self.own_next(epochs, None, true),
            },
        }
    }

    fn deliver(&self, change: Option<Change>) -> Stamped {
        Stamped::Deliver(Stamp {
            epoch: self.epoch,
            seq: self.last,
            change,
        })
    }

    fn adopt(&mut self, p: Position, now_ms: u64) -> Stamped {
        self.epoch = p.epoch;
        self.last = p.seq;
        self.mode = Mode::Adopted { heard_ms: now_ms };
        self.renumbered = false;
        self.deliver(Some(Change::Epoch))
    }

    fn own_fresh(
        &mut self,
        epochs: &mut EpochSource,
        candidate: Option<(Epoch, u64)>,
        renumbered: bool,
    ) -> Stamped {
        self.epoch = epochs.advance();
        self.last = 1;
        self.mode = Mode::Own { candidate };
        self.renumbered = renumbered;
        self.deliver(Some(Change::Epoch))
    }

    fn own_next(
        &mut self,
        epochs: &mut EpochSource,
        candidate: Option<(Epoch, u64)>,
        renumbered: bool,
    ) -> Stamped {
        if self.last >= MAX_SEQ {
            return self.own_fresh(epochs, candidate, renumbered);
        }
        self.last += 1;
        self.mode = Mode::Own { candidate };
        self.renumbered |= renumbered;
        self.deliver(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 10_000;

    fn pos(e: u64, seq: Seq) -> Position {
        Position {
            epoch: Epoch::from_u64(e),
            seq,
        }
    }

    fn stamp(t: &mut TopicSeq, now: u64, s: Source, ep: &mut EpochSource) -> Stamp {
        match t.stamp(now, s, W, ep) {
            Stamped::Deliver(st) => st,
            Stamped::Duplicate => panic!("unexpected duplicate"),
        }
    }

    #[test]
    fn a_stored_numbering_is_adopted_only_before_anything_is_numbered() {
        let mut ep = EpochSource::new(1);
        let mut t = TopicSeq::new(&ep);
        assert!(!t.adopt_stored(pos(0xa, 0), 0), "0 is not a message number");
        assert!(t.adopt_stored(pos(0xa, 50), 0));
        assert_eq!(
            (t.position(), t.is_adopted(), t.origin_numbers()),
            (pos(0xa, 50), true, true)
        );
        let s = stamp(&mut t, 1, Source::Remote(pos(0xa, 51)), &mut ep);
        assert_eq!((s.seq, s.change), (51, None));
        assert!(!t.adopt_stored(pos(0xb, 7), 2), "already adopted");
        let mut own = TopicSeq::new(&ep);
        stamp(&mut own, 0, Source::Local, &mut ep);
        assert!(!own.adopt_stored(pos(0xa, 50), 0), "numbered here already");
    }

    #[test]
    fn own_numbering_is_gap_free_from_one() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        let e = t.epoch();
        assert_eq!(t.position(), Position { epoch: e, seq: 0 });
        for i in 1..=1000 {
            let s = stamp(&mut t, i, Source::Local, &mut ep);
            assert_eq!((s.epoch, s.seq, s.change), (e, i, None));
        }
        // Unnumbered NATS messages are numbered here too, in arrival order.
        assert!(t.origin_numbers());
        let s = stamp(&mut t, 2000, Source::External, &mut ep);
        assert_eq!((s.epoch, s.seq, s.change), (e, 1001, None));
        assert!(!t.is_adopted());
        assert!(
            !t.origin_numbers(),
            "an unnumbered message was numbered here"
        );
    }

    #[test]
    fn max_seq_restarts_under_a_new_epoch() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        t.last = MAX_SEQ - 1;
        let e = t.epoch();
        assert_eq!(stamp(&mut t, 0, Source::Local, &mut ep).seq, MAX_SEQ);
        let s = stamp(&mut t, 0, Source::Local, &mut ep);
        assert_eq!((s.seq, s.change), (1, Some(Change::Epoch)));
        assert_ne!(s.epoch, e);
    }

    #[test]
    fn adopts_a_single_origin_and_reports_duplicates_and_losses() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        // A fresh topic adopts the first origin it hears, at that origin's number.
        let s = stamp(&mut t, 0, Source::Remote(pos(0xa, 500)), &mut ep);
        assert_eq!(
            s,
            Stamp {
                epoch: Epoch::from_u64(0xa),
                seq: 500,
                change: Some(Change::Epoch)
            }
        );
        assert!(t.is_adopted());
        assert_eq!(
            stamp(&mut t, 1, Source::Remote(pos(0xa, 501)), &mut ep).change,
            None
        );
        assert_eq!(
            t.stamp(2, Source::Remote(pos(0xa, 501)), W, &mut ep),
            Stamped::Duplicate
        );
        assert_eq!(
            t.stamp(2, Source::Remote(pos(0xa, 400)), W, &mut ep),
            Stamped::Duplicate
        );
        let s = stamp(&mut t, 3, Source::Remote(pos(0xa, 505)), &mut ep);
        assert_eq!(
            (s.seq, s.change),
            (
                505,
                Some(Change::Lost {
                    first: 502,
                    last: 504
                })
            )
        );
        assert_eq!(t.head(), 505);
    }

    #[test]
    fn conflict_goes_to_own_numbering_then_settles_on_the_survivor() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        stamp(&mut t, 0, Source::Remote(pos(0xa, 1)), &mut ep);
        // Origin B while A is live: conflict, this host numbers from 1 under a fresh epoch.
        let s = stamp(&mut t, 100, Source::Remote(pos(0xb, 1)), &mut ep);
        assert_eq!((s.seq, s.change), (1, Some(Change::Epoch)));
        let own = s.epoch;
        assert!(own != Epoch::from_u64(0xa) && own != Epoch::from_u64(0xb));
        assert!(
            !t.origin_numbers(),
            "B's message was renumbered: no deep history"
        );
        // Both keep publishing, interleaved: numbered here, one epoch, no more changes.
        for i in 0..100u64 {
            let origin = if i % 2 == 0 {
                pos(0xa, 2 + i)
            } else {
                pos(0xb, 2 + i)
            };
            let s = stamp(&mut t, 200 + i * 10, Source::Remote(origin), &mut ep);
            assert_eq!((s.epoch, s.seq, s.change), (own, 2 + i, None));
        }
        // A stops; B alone for the window: adopted (one more epoch change), then B's numbers.
        let mut now = 2000;
        let mut seq = 200;
        loop {
            now += 1000;
            seq += 1;
            let s = stamp(&mut t, now, Source::Remote(pos(0xb, seq)), &mut ep);
            if s.change == Some(Change::Epoch) {
                assert_eq!((s.epoch, s.seq), (Epoch::from_u64(0xb), seq));
                break;
            }
            assert_eq!(s.epoch, own);
        }
        // B has been alone since its last interleaved message at 1190.
        assert!(
            (1190 + W..1190 + W + 1000).contains(&now),
            "adopted after the window: {now}"
        );
        assert!(t.is_adopted() && t.origin_numbers());
    }

    #[test]
    fn local_publishes_keep_own_numbering_against_a_remote_origin() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        let e = stamp(&mut t, 0, Source::Local, &mut ep).epoch;
        // A remote origin interleaved with local publishes never reaches the window alone.
        for i in 0..1000u64 {
            let src = if i % 3 == 0 {
                Source::Local
            } else {
                Source::Remote(pos(0xb, i + 1))
            };
            let s = stamp(&mut t, i * 100, src, &mut ep);
            assert_eq!((s.epoch, s.seq, s.change), (e, i + 2, None));
        }
    }

    #[test]
    fn handover_after_silence_changes_epoch_once() {
        let mut ep = EpochSource::new(7);
        let mut t = TopicSeq::new(&ep);
        stamp(&mut t, 0, Source::Remote(pos(0xa, 10)), &mut ep);
        // A silent for the window, then a local publisher: own numbering, fresh epoch.
        let s = stamp(&mut t, W, Source::Local, &mut ep);
        assert_eq!((s.seq, s.change), (1, Some(Change::Epoch)));
        assert_eq!(stamp(&mut t, W + 1, Source::Local, &mut ep).change, None);
        assert!(t.origin_numbers(), "this host's own publishes only");
        // Back to adopted: a remote origin after the window with no local publishes.
        let mut t = TopicSeq::new(&ep);
        stamp(&mut t, 0, Source::Remote(pos(0xa, 10)), &mut ep);
        let s = stamp(&mut t, W, Source::Remote(pos(0xc, 3)), &mut ep);
        assert_eq!(
            s,
            Stamp {
                epoch: Epoch::from_u64(0xc),
                seq: 3,
                change: Some(Change::Epoch)
            }
        );
        // And an external publisher after silence: own numbering.
        let s = stamp(&mut t, 2 * W, Source::External, &mut ep);
        assert_eq!((s.seq, s.change), (1, Some(Change::Epoch)));
    }

    #[test]
    fn own_epochs_are_never_reused_for_a_topic() {
        // Flip between sources forever: every own epoch this topic gets is new.
        let mut ep = EpochSource::new(9);
        let mut t = TopicSeq::new(&ep);
        let mut own_epochs = std::collections::HashSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut now = 0;
        let mut remote_seq = [0u64; 3];
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += x % (2 * W);
            let src = match x % 5 {
                0 => Source::Local,
                1 => Source::External,
                k => {
                    let o = (k - 2) as usize;
                    remote_seq[o] += 1;
                    Source::Remote(pos(0x100 + o as u64, remote_seq[o]))
                }
            };
            let before = (t.epoch(), t.head(), t.is_adopted());
            match t.stamp(now, src, W, &mut ep) {
                Stamped::Duplicate => unreachable!("remote numbers only grow"),
                Stamped::Deliver(s) => {
                    if s.change == Some(Change::Epoch) {
                        assert_ne!(s.epoch, before.0);
                        if !t.is_adopted() {
                            assert!(own_epochs.insert(s.epoch), "own epoch reused");
                            assert_eq!(s.seq, 1);
                        }
                    } else {
                        assert_eq!(s.epoch, before.0);
                        assert!(s.seq > before.1, "strictly increasing");
                        if !before.2 {
                            assert_eq!(s.seq, before.1 + 1, "own numbering is gap-free");
                        }
                    }
                }
            }
        }
        assert!(own_epochs.len() > 10, "the walk exercised transitions");
    }

    #[test]
    fn invalid_remote_numbers_count_as_external() {
        let e = Epoch::from_u64(1);
        assert_eq!(Source::remote(None), Source::External);
        assert_eq!(
            Source::remote(Some(Position { epoch: e, seq: 0 })),
            Source::External
        );
        assert_eq!(
            Source::remote(Some(Position {
                epoch: e,
                seq: MAX_SEQ + 1
            })),
            Source::External
        );
        assert_eq!(
            Source::remote(Some(Position { epoch: e, seq: 5 })),
            Source::Remote(Position { epoch: e, seq: 5 })
        );
    }
}
