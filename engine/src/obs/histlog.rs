//! `--histogram-log DIR`: every shard writes its latency histograms as HdrHistogram V2 interval
//! logs, one file per shard and kind (`DIR/shard-N.KIND.hlog`), one interval histogram (the
//! samples since the previous one) every `histogram_log_interval_ms`.
//!
//! The shard only accumulates and hands over: on its tick it adds the not-yet-published samples
//! into its interval histograms ([`ShardLog::on_tick`]); when an interval ends it moves them into
//! a bounded channel with `try_send`. A per-shard writer thread encodes and appends them. Why a
//! thread and not a write from the tick: a `write(2)` to a full, remounted or network disk can
//! block for seconds, and a shard must never block; the encode (deflate) also stays off the shard.
//! If the writer falls behind by [`QUEUE`] intervals, further intervals are dropped and logged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::obs::latency::{new_histogram, new_histograms, LatencyKind, LocalLatency, KINDS};

/// A log file is rotated once it reaches this size.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Files kept per shard and kind: the current one plus the rotated `.1` … `.3`.
pub const KEEP_FILES: usize = 4;

/// Intervals that may wait for the writer thread before new ones are dropped.
pub const QUEUE: usize = 16;

/// Where and how one shard logs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Directory of the log files (created if missing).
    pub dir: PathBuf,
    /// Length of one interval.
    pub interval: Duration,
    /// Rotate a file once it is this large.
    pub max_file_bytes: u64,
    /// Files kept per shard and kind, the current one included (at least 1).
    pub keep_files: usize,
}

impl Settings {
    /// `dir` and `interval` with the default rotation.
    pub fn new(dir: &Path, interval: Duration) -> Settings {
        Settings {
            dir: dir.to_owned(),
            interval,
            max_file_bytes: MAX_FILE_BYTES,
            keep_files: KEEP_FILES,
        }
    }
}

/// The current log file of `shard` and `kind` in `dir`; rotated file `n` (1 = newest) when
/// `generation` is `n > 0`.
pub fn log_path(dir: &Path, shard: usize, kind: LatencyKind, generation: usize) -> PathBuf {
    match generation {
        0 => dir.join(format!("shard-{shard}.{}.hlog", kind.name())),
        n => dir.join(format!("shard-{shard}.{}.{n}.hlog", kind.name())),
    }
}

/// One finished interval on its way to the writer.
struct Interval {
    kind: LatencyKind,
    hist: Histogram<u64>,
    start: SystemTime,
    end: SystemTime,
}

/// The shard's side: interval accumulators and the channel to its writer thread.
pub struct ShardLog {
    interval: Duration,
    pending: [Histogram<u64>; KINDS],
    started: Instant,
    started_wall: SystemTime,
    tx: SyncSender<Interval>,
    dropped: u64,
    _writer: JoinHandle<()>,
}

impl ShardLog {
    /// Create the directory and start the writer thread `histlog-<shard>`.
    pub fn start(shard: usize, settings: Settings) -> io::Result<ShardLog> {
        fs::create_dir_all(&settings.dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let base = SystemTime::now();
        let interval = settings.interval;
        let writer = std::thread::Builder::new()
            .name(format!("histlog-{shard}"))
            .spawn(move || write_loop(shard, &settings, base, rx))?;
        Ok(ShardLog {
            interval,
            pending: new_histograms(),
            started: Instant::now(),
            started_wall: base,
            tx,
            dropped: 0,
            _writer: writer,
        })
    }

    /// Called by the shard's tick before [`LocalLatency::publish`]: take the new samples, and
    /// hand the intervals over when one is complete. Cost on the shard: one histogram add per
    /// kind per tick, one copy per kind per interval.
    pub fn on_tick(&mut self, latency: &LocalLatency, now: Instant) {
        latency.add_pending_to(&mut self.pending);
        if now.duration_since(self.started) < self.interval {
            return;
        }
        let end = self.started_wall + now.duration_since(self.started);
        for kind in LatencyKind::ALL {
            let hist = std::mem::replace(&mut self.pending[kind as usize], new_histogram(kind));
            let record = Interval {
                kind,
                hist,
                start: self.started_wall,
                end,
            };
            match self.tx.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped += 1;
                    tracing::warn!(
                        dropped = self.dropped,
                        "histogram log writer is behind; interval dropped"
                    );
                }
                // The writer gave up (its error was logged); keep the shard running.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        self.started = now;
        self.started_wall = end;
    }
}

/// One open log file.
struct Open {
    file: File,
    size: u64,
}

fn write_loop(shard: usize, settings: &Settings, base: SystemTime, rx: Receiver<Interval>) {
    let mut files: [Option<Open>; KINDS] = Default::default();
    let mut serializer = V2DeflateSerializer::new();
    for rec in rx {
        let slot = &mut files[rec.kind as usize];
        if let Err(e) = append(shard, settings, base, slot, &mut serializer, &rec) {
            tracing::warn!(shard, kind = rec.kind.name(), error = %e, "histogram log write failed");
            // Reopen on the next interval (the directory may have come back).
            *slot = None;
        }
    }
}

fn append(
    shard: usize,
    settings: &Settings,
    base: SystemTime,
    slot: &mut Option<Open>,
    serializer: &mut V2DeflateSerializer,
    rec: &Interval,
) -> io::Result<()> {
    let path = log_path(&settings.dir, shard, rec.kind, 0);
    if slot
        .as_ref()
        .is_some_and(|o| o.size >= settings.max_file_bytes)
    {
        *slot = None;
        rotate(&settings.dir, shard, rec.kind, settings.keep_files)?;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut builder = IntervalLogWriterBuilder::new();
    if slot.is_none() {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        *slot = Some(Open { file, size });
        // Every file this process opens starts with its own headers (also when appending after
        // a restart), so timestamps below are always relative to this process's BaseTime.
        builder
            .add_comment(&format!(
                "shardcast shard {shard} {}, values in microseconds",
                rec.kind.name()
            ))
            .with_start_time(rec.start)
            .with_base_time(base);
    }
    let tag = format!("shard{shard}_{}", rec.kind.name());
    builder
        .begin_log_with(&mut buf, serializer)?
        .write_histogram(
            &rec.hist,
            rec.start.duration_since(base).unwrap_or_default(),
            rec.end.duration_since(rec.start).unwrap_or_default(),
            Tag::new(&tag),
        )
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    let open = slot.as_mut().expect("opened above");
    open.file.write_all(&buf)?;
    open.size += buf.len() as u64;
    Ok(())
}

/// Shift `.1` … `.(keep-2)` up by one (the oldest is overwritten), then the current file to `.1`.
fn rotate(dir: &Path, shard: usize, kind: LatencyKind, keep: usize) -> io::Result<()> {
    let current = log_path(dir, shard, kind, 0);
    if keep <= 1 {
        return fs::remove_file(current);
    }
    for n in (1..keep - 1).rev() {
        match fs::rename(
            log_path(dir, shard, kind, n),
            log_path(dir, shard, kind, n + 1),
        ) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(current, log_path(dir, shard, kind, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn intervals(path: &Path) -> Vec<(u64, u64)> {
        let text = fs::read(path).unwrap();
        IntervalLogIterator::new(&text)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => {
                    let bytes = base64_decode(i.encoded_histogram());
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .unwrap();
                    Some((h.len(), h.max()))
                }
                _ => None,
            })
            .collect()
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn wait_for(f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "writer never caught up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn intervals_hold_only_new_samples_and_files_rotate() {
        let dir = std::env::temp_dir().join(format!("shardcast-histlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let settings = Settings {
            dir: dir.clone(),
            interval: Duration::from_millis(10),
            max_file_bytes: 1,
            keep_files: 3,
        };
        let mut log = ShardLog::start(7, settings).unwrap();
        let latency = LocalLatency::default();
        let t0 = log.started;
        let shared = crate::obs::latency::SharedLatency::default();
        let tick = |log: &mut ShardLog, ms: u64| {
            log.on_tick(&latency, t0 + Duration::from_millis(ms));
            latency.publish(&shared);
        };
        // Interval 1: 100 samples of 50 µs over two ticks; interval 2: one 900 µs sample.
        latency.record_n(LatencyKind::Handshake, Duration::from_micros(50), 60);
        tick(&mut log, 1);
        latency.record_n(LatencyKind::Handshake, Duration::from_micros(50), 40);
        tick(&mut log, 10);
        latency.record(LatencyKind::Handshake, Duration::from_micros(900));
        tick(&mut log, 20);
        // Interval 3 with max_file_bytes = 1: every write rotates, keep_files = 3 keeps .1 and .2.
        tick(&mut log, 30);
        let p = |n| log_path(&dir, 7, LatencyKind::Handshake, n);
        wait_for(|| p(2).exists() && p(0).exists());
        wait_for(|| intervals(&p(0)).len() == 1);
        assert_eq!(
            intervals(&p(2)),
            vec![(100, 50)],
            "first interval, oldest file"
        );
        let second = intervals(&p(1));
        assert_eq!(second.len(), 1);
        assert_eq!(
            second[0].0, 1,
            "only the sample recorded after the first interval"
        );
        assert!((895..=905).contains(&second[0].1), "{second:?}");
        assert_eq!(
            intervals(&p(0)),
            vec![(0, 0)],
            "empty interval still written"
        );
        assert!(!p(3).exists(), "keep_files bounds the rotated files");
        for kind in LatencyKind::ALL {
            assert!(log_path(&dir, 7, kind, 0).exists(), "{kind:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
