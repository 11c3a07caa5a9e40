//! A simulation of the whole protocol across shards: publishers on every shard, home shards
//! numbering their topics, FIFO rings between every pair of shards, sequenced connections
//! subscribing fresh or resuming (valid, trimmed, from another epoch) at random moments,
//! paced replays, disconnects, ages and origins changing, and (in half of the worlds) deep
//! history: a stream that keeps the origin-numbered messages with a bounded retention, answering
//! fetches and numbering lookups at random moments. It checks what the client sees:
//! after every notice, data numbered notice + 1, + 2, … with no gap and no duplicate; a
//! resume the history covers gets no resync and starts exactly where the client left; and
//! once the rings are drained every live connection is at its topic's head.

use std::collections::VecDeque;

use bytes::Bytes;
use shardcast_proto::MessageKind;

use super::history::{HistoryRules, Limits};
use super::log::{Hold, LogConfig, TopicLogs};
use super::resume::{Action, Answer, Ask, Notice, Reason, Replayed, Resume};
use super::sequence::{Change, Source, Stamped};
use super::{home_shard, Epoch, Position, Seq};

const TOPICS: [&str; 3] = ["btc@depth", "eth@trade", "news"];

enum Msg {
    /// A publish forwarded to the topic's home shard.
    Forward { topic: usize, source: Source },
    /// A numbered message, home → every shard.
    Deliver {
        topic: usize,
        epoch: Epoch,
        seq: Seq,
        change: Option<Change>,
    },
    /// A pending subscription's ask, C → H.
    Ask { from: usize, topic: usize, ask: Ask },
    /// H → C.
    Answer { answer: Answer },
}

/// Work for the bridge (deep history), answered at a random later moment.
enum Job {
    /// Connection `c`'s pending subscription needs `first..=last` of `epoch`.
    Fetch {
        c: usize,
        epoch: Epoch,
        first: Seq,
        last: Seq,
        max: usize,
    },
    /// Home shard `shard` needs the numbering of `topic`'s last stored message.
    Head { shard: usize, topic: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Notice(Notice),
    Data(Epoch, Seq),
}

struct Conn {
    shard: usize,
    topic: usize,
    since: Option<Position>,
    resume: Option<Resume>,
    /// Its replay chunk (messages), which bounds its deep fetches too.
    chunk: usize,
    queued: usize,
    seen: Vec<Seen>,
    open: bool,
}

struct World {
    shards: usize,
    rings: Vec<Vec<VecDeque<Msg>>>,
    logs: Vec<TopicLogs>,
    live: Vec<Vec<Vec<usize>>>,
    last_seen: Vec<Vec<Option<(Epoch, Seq)>>>,
    conns: Vec<Conn>,
    now: u64,
    rng: u64,
    origin: (Epoch, Seq),
    /// Deep history: per topic, the origin-numbered messages in stream order, of which the
    /// last `retention` are kept; the bridge's pending jobs.
    stream: Vec<Vec<(Epoch, Seq)>>,
    retention: usize,
    jobs: VecDeque<Job>,
    /// Messages replayed from the stream.
    deep_messages: usize,
}

impl World {
    fn new(shards: usize, limits: Limits, seed: u64, deep: Option<usize>) -> World {
        let config = LogConfig {
            rules: HistoryRules::new(Vec::new(), limits),
            budget: 1 << 30,
            window_ms: 50,
            idle_ms: 1 << 40,
            deep: deep.is_some(),
        };
        World {
            shards,
            rings: (0..shards)
                .map(|_| (0..shards).map(|_| VecDeque::new()).collect())
                .collect(),
            logs: (0..shards)
                .map(|_| TopicLogs::new(config.clone(), 99))
                .collect(),
            live: vec![vec![Vec::new(); TOPICS.len()]; shards],
            last_seen: vec![vec![None; TOPICS.len()]; shards],
            conns: Vec::new(),
            now: 0,
            rng: seed | 1,
            origin: (Epoch::from_u64(0xa11), 0),
            stream: vec![Vec::new(); TOPICS.len()],
            retention: deep.unwrap_or(0),
            jobs: VecDeque::new(),
            deep_messages: 0,
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn home(&self, topic: usize) -> usize {
        home_shard(TOPICS[topic], self.shards)
    }

    fn send(&mut self, from: usize, to: usize, m: Msg) {
        if from == to {
            self.handle(to, from, m);
        } else {
            self.rings[from][to].push_back(m);
        }
    }

    /// A message of `topic` enters on shard `at` (a publisher there, or the bridge).
    fn publish(&mut self, at: usize, topic: usize, source: Source) {
        let h = self.home(topic);
        self.send(at, h, Msg::Forward { topic, source });
    }

    fn handle(&mut self, shard: usize, from: usize, m: Msg) {
        match m {
            Msg::Forward { topic, source } => {
                let payload = Bytes::from_static(b"{}");
                let stamped = self.logs[shard].append(
                    self.now,
                    TOPICS[topic],
                    source,
                    MessageKind::Text,
                    payload,
                    2,
                );
                if let Stamped::Deliver(s) = stamped {
                    // What reaches the stream: this host's publishes with the numbers they
                    // got here, the origin's with its own.
                    match source {
                        Source::Local => self.stream[topic].push((s.epoch, s.seq)),
                        Source::Remote(p) => self.stream[topic].push((p.epoch, p.seq)),
                        Source::External => {}
                    }
                    for to in 0..self.shards {
                        let d = Msg::Deliver {
                            topic,
                            epoch: s.epoch,
                            seq: s.seq,
                            change: s.change,
                        };
                        self.send(shard, to, d);
                    }
                }
            }
            Msg::Deliver {
                topic,
                epoch,
                seq,
                change,
            } => {
                assert_eq!(
                    from,
                    self.home(topic),
                    "messages of a topic come from its home"
                );
                // FIFO from one owner: strictly increasing within an epoch.
                if let (Some((e, s)), None) = (self.last_seen[shard][topic], change) {
                    assert_eq!(e, epoch);
                    assert_eq!(seq, s + 1, "gap-free on one host without a change");
                }
                self.last_seen[shard][topic] = Some((epoch, seq));
                for &c in &self.live[shard][topic] {
                    let conn = &mut self.conns[c];
                    if let Some(ch) = change {
                        let reason = match ch {
                            Change::Epoch => Reason::Epoch,
                            Change::Lost { .. } => Reason::Lost,
                        };
                        conn.seen.push(Seen::Notice(Notice {
                            epoch,
                            seq: seq - 1,
                            resync: Some(reason),
                        }));
                    }
                    conn.seen.push(Seen::Data(epoch, seq));
                }
            }
            Msg::Ask { from, topic, ask } => match self.logs[shard].hold(TOPICS[topic], from, &ask)
            {
                Hold::Serve => {
                    let answer = self.logs[shard].serve(self.now, TOPICS[topic], &ask);
                    self.send(shard, from, Msg::Answer { answer });
                }
                Hold::Held { lookup } => {
                    if lookup {
                        self.jobs.push_back(Job::Head { shard, topic });
                    }
                }
            },
            Msg::Answer { answer } => {
                let c = answer.ticket as usize;
                if !self.conns[c].open {
                    return;
                }
                let step = self.conns[c]
                    .resume
                    .as_mut()
                    .unwrap()
                    .handle_answer(answer)
                    .unwrap();
                self.apply(
                    c,
                    step.notice,
                    step.replay.iter().map(|r| r.seq),
                    step.action,
                );
            }
        }
    }

    fn apply(
        &mut self,
        c: usize,
        notice: Option<Notice>,
        replay: impl Iterator<Item = Seq>,
        action: Action,
    ) {
        let conn = &mut self.conns[c];
        let epoch = conn.resume.as_ref().unwrap().position().unwrap().epoch;
        conn.seen.extend(notice.map(Seen::Notice));
        for seq in replay {
            conn.seen.push(Seen::Data(epoch, seq));
            conn.queued += 1;
        }
        let (shard, topic) = (conn.shard, conn.topic);
        match action {
            Action::Subscribe { after } => {
                // The switch-over rule: the shard has seen exactly up to the switch point.
                let seen = self.last_seen[shard][topic].map_or(0, |(_, s)| s);
                assert_eq!(
                    seen, after,
                    "registered at S while the shard had seen {seen}"
                );
                self.live[shard][topic].push(c);
            }
            Action::AskWhenDrained => {}
            Action::FetchDeep { epoch, first, last } => {
                assert!(self.retention > 0, "deep history only when it is on");
                let max = self.conns[c].chunk;
                self.jobs.push_back(Job::Fetch {
                    c,
                    epoch,
                    first,
                    last,
                    max,
                });
            }
        }
    }

    /// The bridge answers its oldest job (as `bridge/deep.rs` does, from the stream).
    fn step_bridge(&mut self) -> bool {
        let Some(job) = self.jobs.pop_front() else {
            return false;
        };
        match job {
            Job::Fetch {
                c,
                epoch,
                first,
                last,
                max,
            } => {
                let topic = self.conns[c].topic;
                let kept = &self.stream[topic];
                let got: Vec<Replayed> = kept[kept.len().saturating_sub(self.retention)..]
                    .iter()
                    .filter(|&&(e, s)| e == epoch && (first..=last).contains(&s))
                    .take(max)
                    .map(|&(_, seq)| Replayed {
                        seq,
                        kind: MessageKind::Text,
                        payload: Bytes::new(),
                    })
                    .collect();
                if !self.conns[c].open {
                    return true; // its ticket is gone: the result is dropped
                }
                self.deep_messages += got.len();
                let step = self.conns[c]
                    .resume
                    .as_mut()
                    .unwrap()
                    .handle_deep(got)
                    .unwrap();
                self.apply(
                    c,
                    step.notice,
                    step.replay.iter().map(|r| r.seq),
                    step.action,
                );
            }
            Job::Head { shard, topic } => {
                let stored = self.stream[topic]
                    .last()
                    .map(|&(epoch, seq)| Position { epoch, seq });
                for (from, ask) in self.logs[shard].handle_head(self.now, TOPICS[topic], stored) {
                    let answer = self.logs[shard].serve(self.now, TOPICS[topic], &ask);
                    self.send(shard, from, Msg::Answer { answer });
                }
            }
        }
        true
    }

    fn connect(&mut self, shard: usize, topic: usize, since: Option<Position>, chunk: usize) {
        let c = self.conns.len();
        let (resume, ask) = Resume::start(c as u64, since, 1 << 20, chunk);
        self.conns.push(Conn {
            shard,
            topic,
            since,
            resume: Some(resume),
            chunk,
            queued: 0,
            seen: Vec::new(),
            open: true,
        });
        self.ask(shard, topic, ask);
    }

    /// Send a pending subscription's ask from its shard to the topic's home.
    fn ask(&mut self, shard: usize, topic: usize, ask: Ask) {
        let h = self.home(topic);
        self.send(
            shard,
            h,
            Msg::Ask {
                from: shard,
                topic,
                ask,
            },
        );
    }

    fn drain_queue(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        conn.queued = conn.queued.saturating_sub(3);
        if conn.queued == 0 {
            if let Some(ask) = conn.resume.as_mut().unwrap().poll_ask() {
                let (shard, topic) = (conn.shard, conn.topic);
                self.ask(shard, topic, ask);
            }
        }
    }

    fn step_ring(&mut self) -> bool {
        let pairs: Vec<(usize, usize)> = (0..self.shards)
            .flat_map(|a| (0..self.shards).map(move |b| (a, b)))
            .filter(|&(a, b)| !self.rings[a][b].is_empty())
            .collect();
        if pairs.is_empty() {
            return false;
        }
        let (a, b) = pairs[self.rand(pairs.len() as u64) as usize];
        let m = self.rings[a][b].pop_front().unwrap();
        self.handle(b, a, m);
        true
    }

    /// The client's view of a connection: its position, checked message by message.
    fn check(&self, c: usize) -> Option<Position> {
        let conn = &self.conns[c];
        let mut pos: Option<Position> = None;
        for (i, s) in conn.seen.iter().enumerate() {
            match *s {
                Seen::Notice(n) => {
                    if i == 0 && n.resync.is_none() {
                        if let Some(since) = conn.since {
                            assert_eq!(
                                (n.epoch, n.seq),
                                (since.epoch, since.seq),
                                "resumed where it left"
                            );
                        }
                    }
                    pos = Some(Position {
                        epoch: n.epoch,
                        seq: n.seq,
                    });
                }
                Seen::Data(e, seq) => {
                    let p = pos.as_mut().expect("a notice comes first");
                    assert_eq!(
                        (e, seq),
                        (p.epoch, p.seq + 1),
                        "conn {c}: gap or duplicate at {i}"
                    );
                    p.seq = seq;
                }
            }
        }
        pos
    }

    fn resyncs(&self, c: usize) -> usize {
        self.conns[c]
            .seen
            .iter()
            .filter(|s| matches!(s, Seen::Notice(n) if n.resync.is_some()))
            .count()
    }
}

/// Run one world (`deep`: deep history with that stream retention per topic); returns
/// (resumes, resumes that were told to resync, messages replayed from the stream).
fn run(
    seed: u64,
    shards: usize,
    limits: Limits,
    steps: usize,
    remote: bool,
    deep: Option<usize>,
) -> (usize, usize, usize) {
    let mut w = World::new(shards, limits, seed, deep);
    let mut resumes = 0;
    for _ in 0..steps {
        w.now += w.rand(3);
        match w.rand(100) {
            0..=34 => {
                let (at, topic) = (w.rand(shards as u64) as usize, w.rand(3) as usize);
                let source = if remote && w.rand(4) == 0 {
                    // The bridge, on its own shard-like path: an origin that sometimes skips a
                    // number (lost in NATS) and sometimes restarts.
                    match w.rand(20) {
                        0 => w.origin = (Epoch::from_u64(w.rng), 0),
                        1 => w.origin.1 += 1,
                        _ => {}
                    }
                    w.origin.1 += 1;
                    Source::Remote(Position {
                        epoch: w.origin.0,
                        seq: w.origin.1,
                    })
                } else {
                    Source::Local
                };
                w.publish(at, topic, source);
            }
            35..=64 => {
                w.step_ring();
            }
            65..=69 => {
                w.step_bridge();
            }
            70..=79 => {
                let (shard, topic) = (w.rand(shards as u64) as usize, w.rand(3) as usize);
                let chunk = 1 + w.rand(8) as usize;
                w.connect(shard, topic, None, chunk);
            }
            80..=87 => {
                // Disconnect a connection and resume it elsewhere from its position.
                let open: Vec<usize> = (0..w.conns.len()).filter(|&c| w.conns[c].open).collect();
                if open.is_empty() {
                    continue;
                }
                let c = open[w.rand(open.len() as u64) as usize];
                let Some(mut pos) = w.check(c) else { continue };
                w.conns[c].open = false;
                let (s, t) = (w.conns[c].shard, w.conns[c].topic);
                w.live[s][t].retain(|&x| x != c);
                match w.rand(10) {
                    0 => pos.epoch = Epoch::from_u64(7),
                    1 => pos.seq += 1_000_000,
                    _ => {}
                }
                let (shard, chunk) = (w.rand(shards as u64) as usize, 1 + w.rand(8) as usize);
                w.connect(shard, t, Some(pos), chunk);
                resumes += 1;
            }
            _ => {
                let n = w.conns.len();
                if n > 0 {
                    let c = w.rand(n as u64) as usize;
                    if w.conns[c].open {
                        w.drain_queue(c);
                    }
                }
            }
        }
    }
    // Quiesce: deliver everything, drain every queue, until no connection is pending.
    loop {
        while w.step_ring() || w.step_bridge() {}
        let mut asked = false;
        for c in 0..w.conns.len() {
            if w.conns[c].open && !w.conns[c].resume.as_ref().unwrap().is_live() {
                w.conns[c].queued = 0;
                w.drain_queue(c);
                asked = true;
            }
        }
        if !asked {
            break;
        }
    }
    let mut resynced = 0;
    for c in 0..w.conns.len() {
        let pos = w.check(c);
        if w.conns[c].since.is_some() && w.resyncs(c) > 0 {
            resynced += 1;
        }
        if w.conns[c].open {
            let log = w.logs[w.home(w.conns[c].topic)]
                .get(TOPICS[w.conns[c].topic])
                .unwrap();
            assert_eq!(pos, Some(log.seq().position()), "conn {c} ends at the head");
        }
    }
    (resumes, resynced, w.deep_messages)
}

#[test]
fn history_that_covers_resumes_without_resync() {
    // Large rings and honest positions: every resume of a real position is exact.
    let big = Limits {
        messages: 1 << 20,
        bytes: 1 << 30,
        age_ms: 0,
    };
    for seed in 1..=40u64 {
        let mut w = World::new(3, big, seed * 0x9e37_79b9, None);
        for _ in 0..50 {
            let at = w.rand(3) as usize;
            w.publish(at, 0, Source::Local);
        }
        w.connect(1, 0, None, 4);
        for round in 0..400 {
            match w.rand(4) {
                0 => {
                    let at = w.rand(3) as usize;
                    w.publish(at, 0, Source::Local);
                }
                1 | 2 => {
                    w.step_ring();
                }
                _ => {
                    let c = w.conns.len() - 1;
                    w.drain_queue(c);
                }
            }
            if round % 50 == 49 {
                let c = w.conns.len() - 1;
                if let Some(p) = w.check(c) {
                    w.conns[c].open = false;
                    let s = w.conns[c].shard;
                    w.live[s][0].retain(|&x| x != c);
                    let (shard, chunk) = (w.rand(3) as usize, 1 + w.rand(5) as usize);
                    w.connect(shard, 0, Some(p), chunk);
                }
            }
        }
        while w.step_ring() {}
        let c = w.conns.len() - 1;
        while !w.conns[c].resume.as_ref().unwrap().is_live() {
            w.conns[c].queued = 0;
            w.drain_queue(c);
            while w.step_ring() {}
        }
        for c in 0..w.conns.len() {
            w.check(c);
            assert_eq!(
                w.resyncs(c),
                0,
                "seed {seed}: covered resume told to resync"
            );
        }
        let head = w.logs[w.home(0)].get(TOPICS[0]).unwrap().seq().head();
        assert_eq!(w.check(c).unwrap().seq, head);
    }
}

#[test]
fn random_worlds_never_gap_or_duplicate() {
    let small = Limits {
        messages: 12,
        bytes: 1 << 20,
        age_ms: 40,
    };
    let (mut resumes, mut resynced) = (0, 0);
    for seed in 1..=60u64 {
        for shards in [1, 2, 4] {
            let remote = seed % 2 == 0;
            let (r, s, _) = run(seed * 0x2545_f491, shards, small, 3000, remote, None);
            resumes += r;
            resynced += s;
        }
    }
    // Both paths were exercised.
    assert!(resumes > 1000, "{resumes}");
    assert!(
        resynced > 100 && resynced < resumes,
        "{resynced} of {resumes}"
    );
}

#[test]
fn history_off_always_resyncs_unless_nothing_was_missed() {
    for seed in 1..=20u64 {
        let (r, s, _) = run(seed, 2, Limits::OFF, 2000, false, None);
        assert!(r > 0 && s <= r);
    }
}

#[test]
fn deep_history_worlds_never_gap_or_duplicate_and_resync_less() {
    // Small rings (or none) with a stream behind them: the same invariants, and a long
    // retention turns most resyncs into replays.
    let small = Limits {
        messages: 12,
        bytes: 1 << 20,
        age_ms: 40,
    };
    let mut by_retention = Vec::new();
    for retention in [20, 1 << 20] {
        let (mut resumes, mut resynced, mut deep) = (0, 0, 0);
        for seed in 1..=30u64 {
            for shards in [1, 2, 4] {
                for limits in [small, Limits::OFF] {
                    let remote = seed % 2 == 0;
                    let seed = seed * 0x2545_f491;
                    let (r, s, d) = run(seed, shards, limits, 3000, remote, Some(retention));
                    resumes += r;
                    resynced += s;
                    deep += d;
                }
            }
        }
        assert!(resumes > 1000, "{resumes}");
        assert!(deep > 1000, "the stream was used: {deep}");
        by_retention.push(resynced as f64 / resumes as f64);
    }
    // Resyncs that remain with a stream that keeps everything: other epochs, positions
    // ahead, multi-origin topics.
    assert!(
        by_retention[1] < by_retention[0],
        "retention did not help: {by_retention:?}"
    );
}
