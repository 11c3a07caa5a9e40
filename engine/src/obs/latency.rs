//! Per-shard duration histograms (HdrHistogram, microseconds): latencies, and how long evicted
//! connections had stalled.
//!
//! A shard records into its own [`LocalLatency`] (`RefCell`s, no atomics, no locks); once per
//! tick it folds them into the [`SharedLatency`] in its stats, the only lock, taken once per tick
//! by the shard and briefly by the admin thread. Readers therefore see data at most one tick old.

use std::cell::{Cell, RefCell, RefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest recordable handshake and ring transit: one minute in µs (larger samples are clamped).
const MAX_US: u64 = 60_000_000;

/// Largest recordable broadcast latency and eviction stall: one hour in µs. A paused or slow
/// subscriber can hold a frame, or stall, for minutes; the wider range costs ~7 KB per histogram.
const MAX_LONG_US: u64 = 3_600_000_000;

/// Two significant digits (1% value precision) keep a histogram near 20 KB, four per shard.
const SIGFIGS: u8 = 2;

/// What a histogram measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyKind {
    /// Accept to the 101 response written.
    Handshake,
    /// `Envelope.published_at` to drained by the consuming shard.
    RingTransit,
    /// Publish accepted to the frame fully written to a subscriber's socket, once per delivery.
    Broadcast,
    /// How long an evicted connection had gone without write progress, once per eviction.
    EvictionStall,
}

/// Number of [`LatencyKind`]s.
pub const KINDS: usize = 4;

impl LatencyKind {
    /// Every kind.
    pub const ALL: [LatencyKind; KINDS] = [
        LatencyKind::Handshake,
        LatencyKind::RingTransit,
        LatencyKind::Broadcast,
        LatencyKind::EvictionStall,
    ];

    /// Stable name for /stats, /metrics and `/histograms?kind=`.
    pub fn name(self) -> &'static str {
        match self {
            LatencyKind::Handshake => "handshake",
            LatencyKind::RingTransit => "ring_transit",
            LatencyKind::Broadcast => "broadcast",
            LatencyKind::EvictionStall => "eviction_stall",
        }
    }

    /// Largest recordable value in µs (larger samples are clamped to it).
    pub fn max_us(self) -> u64 {
        match self {
            LatencyKind::Handshake | LatencyKind::RingTransit => MAX_US,
            LatencyKind::Broadcast | LatencyKind::EvictionStall => MAX_LONG_US,
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<LatencyKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Whether shards record latency at all (`--latency-recording`). Off exists to measure what
/// recording costs; production keeps it on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Recording {
    /// Record every sample.
    On,
    /// Record nothing (histograms stay empty).
    Off,
}

/// An empty histogram with the engine's range for `kind` and its precision.
pub fn new_histogram(kind: LatencyKind) -> Histogram<u64> {
    Histogram::new_with_bounds(1, kind.max_us(), SIGFIGS).expect("static bounds are valid")
}

/// One empty histogram per kind, indexed like [`LatencyKind::ALL`].
pub fn new_histograms() -> [Histogram<u64>; KINDS] {
    LatencyKind::ALL.map(new_histogram)
}

fn micros(d: Duration, kind: LatencyKind) -> u64 {
    (d.as_micros().min(u128::from(u64::MAX)) as u64).clamp(1, kind.max_us())
}

/// A shard's own histograms, written on its hot path.
pub struct LocalLatency {
    hists: [RefCell<Histogram<u64>>; KINDS],
    enabled: Cell<bool>,
}

impl Default for LocalLatency {
    fn default() -> Self {
        LocalLatency {
            hists: new_histograms().map(RefCell::new),
            enabled: Cell::new(true),
        }
    }
}

impl LocalLatency {
    /// Turn recording on or off (the shard's tick applies `--latency-recording` at start).
    pub fn set_recording(&self, r: Recording) {
        self.enabled.set(r == Recording::On);
    }

    /// Whether samples are recorded: callers skip their clock reads when not.
    pub fn is_recording(&self) -> bool {
        self.enabled.get()
    }

    /// Add the samples not yet published into `out` (indexed like [`LatencyKind::ALL`]); the
    /// histogram log calls this right before [`LocalLatency::publish`] to build its intervals.
    pub fn add_pending_to(&self, out: &mut [Histogram<u64>; KINDS]) {
        for kind in LatencyKind::ALL {
            let local = self.hists[kind as usize].borrow();
            if !local.is_empty() {
                // Same bounds on both sides, so adding cannot fail.
                let _ = out[kind as usize].add(&*local);
            }
        }
    }

    /// Record one sample.
    pub fn record(&self, kind: LatencyKind, d: Duration) {
        self.record_n(kind, d, 1);
    }

    /// Record `n` samples of the same value (a drained batch shares one clock read).
    pub fn record_n(&self, kind: LatencyKind, d: Duration, n: u64) {
        if !self.enabled.get() {
            return;
        }
        self.hists[kind as usize]
            .borrow_mut()
            .saturating_record_n(micros(d, kind), n);
    }

    /// A recorder for many samples of one kind with a single `RefCell` borrow (the writer
    /// records every frame one `sendmsg` completed); `None` when recording is off. Drop it before
    /// the next [`publish`](Self::publish).
    pub fn recorder(&self, kind: LatencyKind) -> Option<Recorder<'_>> {
        self.enabled.get().then(|| Recorder {
            hist: self.hists[kind as usize].borrow_mut(),
            kind,
            run: None,
        })
    }

    /// Move everything recorded since the last call into `shared` (skipped when empty, so an
    /// idle shard never takes the lock).
    pub fn publish(&self, shared: &SharedLatency) {
        for kind in LatencyKind::ALL {
            let mut local = self.hists[kind as usize].borrow_mut();
            if local.is_empty() {
                continue;
            }
            let mut total = shared.lock(kind);
            // Same bounds on both sides, so adding cannot fail.
            let _ = total.add(&*local);
            local.reset();
        }
    }
}

/// Records samples of one kind while it holds the shard-local histogram borrowed.
pub struct Recorder<'a> {
    hist: RefMut<'a, Histogram<u64>>,
    kind: LatencyKind,
    /// [`record_since`](Recorder::record_since)'s run of samples with the same start: (now,
    /// start, count), recorded when the start changes or the recorder is dropped.
    run: Option<(Instant, Instant, u64)>,
}

impl Recorder<'_> {
    /// Record one sample.
    pub fn record(&mut self, d: Duration) {
        self.hist.saturating_record(micros(d, self.kind));
    }

    /// Record `now - start` (saturating at zero). Consecutive samples with the same `now` and
    /// `start` are recorded as one run (`n` samples of one value: exactly what recording each
    /// does): the frames a send completes were often published in one turn, which stamps them
    /// all with that turn's clock reading, so a run costs one subtraction and one histogram
    /// update instead of one per frame.
    pub fn record_since(&mut self, now: Instant, start: Instant) {
        match &mut self.run {
            Some((n, s, count)) if *n == now && *s == start => *count += 1,
            run => {
                if let Some((n, s, count)) = run.replace((now, start, 1)) {
                    let d = micros(n.saturating_duration_since(s), self.kind);
                    self.hist.saturating_record_n(d, count);
                }
            }
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if let Some((n, s, count)) = self.run.take() {
            let d = micros(n.saturating_duration_since(s), self.kind);
            self.hist.saturating_record_n(d, count);
        }
    }
}

/// Cumulative histograms since start, readable from other threads.
#[derive(Debug)]
pub struct SharedLatency {
    hists: [Mutex<Histogram<u64>>; KINDS],
}

impl Default for SharedLatency {
    fn default() -> Self {
        SharedLatency {
            hists: new_histograms().map(Mutex::new),
        }
    }
}

impl SharedLatency {
    /// Lock one histogram (poisoning is ignored: a histogram is always valid).
    pub fn lock(&self, kind: LatencyKind) -> MutexGuard<'_, Histogram<u64>> {
        self.hists[kind as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of one histogram, so the lock is held only for the copy.
    pub fn clone_of(&self, kind: LatencyKind) -> Histogram<u64> {
        self.lock(kind).clone()
    }

    /// The summary of one histogram.
    pub fn summary(&self, kind: LatencyKind) -> Summary {
        Summary::of(&self.clone_of(kind))
    }
}

/// The summary of `kind` over several shards' histograms merged (empty ones are skipped: adding
/// walks the whole counts array).
pub fn merged_summary<'a>(
    kind: LatencyKind,
    hists: impl IntoIterator<Item = &'a Histogram<u64>>,
) -> Summary {
    let mut total = new_histogram(kind);
    for h in hists.into_iter().filter(|h| !h.is_empty()) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = total.add(h);
    }
    Summary::of(&total)
}

/// Quantiles of one histogram, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Summary {
    /// The quantiles exposed by /stats and /metrics, with their Prometheus label values.
    pub fn quantiles(&self) -> [(&'static str, u64); 5] {
        [
            ("0.5", self.p50),
            ("0.9", self.p90),
            ("0.99", self.p99),
            ("0.999", self.p999),
            ("1", self.max),
        ]
    }

    /// Summarize `h`.
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        // One scan for the four quantiles instead of one each (the admin thread summarizes
        // every kind of every shard per request).
        let mut q = h.value_at_quantiles([0.5, 0.9, 0.99, 0.999]);
        let mut next = || q.next().unwrap_or(0);
        Summary {
            count: h.len(),
            p50: next(),
            p90: next(),
            p99: next(),
            p999: next(),
            mean: h.mean(),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_start_record_what_each_sample_would() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // (now, start): runs, a start after `now` (saturates), a new `now` with the same start.
        let samples = [
            (ms(50), ms(10)),
            (ms(50), ms(10)),
            (ms(50), ms(10)),
            (ms(50), ms(20)),
            (ms(50), ms(10)),
            (ms(50), ms(60)),
            (ms(80), ms(10)),
            (ms(80), ms(10)),
        ];
        let (runs, each) = (LocalLatency::default(), LocalLatency::default());
        {
            let mut r = runs.recorder(LatencyKind::Broadcast).unwrap();
            let mut e = each.recorder(LatencyKind::Broadcast).unwrap();
            for (now, start) in samples {
                r.record_since(now, start);
                e.record(now.saturating_duration_since(start));
            }
        }
        let k = LatencyKind::Broadcast as usize;
        let (a, b) = (runs.hists[k].borrow(), each.hists[k].borrow());
        assert_eq!(
            a.len(),
            samples.len() as u64,
            "the last run is recorded on drop"
        );
        assert!(*a == *b, "the same histogram");
        assert_eq!(a.count_at(40_000), 4);
        assert_eq!(a.count_at(70_000), 2);
    }

    #[test]
    fn publish_moves_samples_and_clamps() {
        let local = LocalLatency::default();
        let shared = SharedLatency::default();
        for us in 1..=1000 {
            local.record(LatencyKind::Handshake, Duration::from_micros(us));
        }
        local.record_n(LatencyKind::RingTransit, Duration::from_secs(3600), 3);
        local.publish(&shared);
        local.publish(&shared);
        let s = shared.summary(LatencyKind::Handshake);
        assert_eq!(s.count, 1000, "published once, not twice");
        assert!((495..=505).contains(&s.p50), "{s:?}");
        assert!((985..=1000).contains(&s.p99), "{s:?}");
        let r = shared.summary(LatencyKind::RingTransit);
        assert_eq!(r.count, 3);
        assert!(r.max >= MAX_US * 99 / 100, "clamped near the top: {r:?}");
        // Broadcast latency and eviction stalls keep up to an hour.
        local.record(LatencyKind::Broadcast, Duration::from_secs(600));
        local.record(LatencyKind::EvictionStall, Duration::from_secs(100_000));
        local.publish(&shared);
        let b = shared.summary(LatencyKind::Broadcast);
        assert!((594_000_000..=606_000_000).contains(&b.max), "{b:?}");
        let e = shared.summary(LatencyKind::EvictionStall);
        assert!(e.max >= MAX_LONG_US * 99 / 100 && e.count == 1, "{e:?}");
        for (i, k) in LatencyKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
            assert_eq!(LatencyKind::from_name(k.name()), Some(k));
        }
        assert_eq!(LatencyKind::from_name("x"), None);
    }

    #[test]
    fn recorder_records_into_the_local_histogram_and_respects_off() {
        let local = LocalLatency::default();
        let shared = SharedLatency::default();
        {
            let mut r = local.recorder(LatencyKind::Broadcast).unwrap();
            r.record(Duration::from_micros(70));
            r.record(Duration::from_secs(7200));
        }
        local.set_recording(Recording::Off);
        assert!(local.recorder(LatencyKind::Broadcast).is_none());
        local.publish(&shared);
        let b = shared.summary(LatencyKind::Broadcast);
        assert_eq!(b.count, 2);
        assert!(b.p50 >= 69 && b.p50 <= 71, "{b:?}");
        assert!(b.max >= MAX_LONG_US * 99 / 100, "clamped: {b:?}");
    }

    #[test]
    fn off_records_nothing_and_pending_feeds_intervals() {
        let local = LocalLatency::default();
        local.set_recording(Recording::Off);
        local.record(LatencyKind::Handshake, Duration::from_micros(5));
        assert!(!local.is_recording());
        let mut interval = new_histograms();
        local.add_pending_to(&mut interval);
        assert!(interval[0].is_empty());
        local.set_recording(Recording::On);
        local.record_n(LatencyKind::RingTransit, Duration::from_micros(40), 4);
        local.add_pending_to(&mut interval);
        assert_eq!(interval[1].len(), 4);
        assert_eq!(interval[0].len(), 0);
    }
}
