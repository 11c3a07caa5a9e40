//! `--histogram-log DIR` through the real binary: every shard writes interval logs that
//! hdrhistogram reads back, holding the handshakes and broadcast deliveries that happened.
mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

/// Samples in every interval of the log at `path` (0 when it does not exist yet).
fn logged_samples(path: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read(path) else {
        return 0;
    };
    IntervalLogIterator::new(&text)
        .filter_map(|e| match e {
            Ok(LogEntry::Interval(i)) => Some(i),
            _ => None,
        })
        .map(|i| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
            h.len()
        })
        .sum()
}

/// Wait until the log at `path` holds at least `n` samples.
fn wait_for_samples(path: &std::path::Path, n: u64, end: Instant) {
    while logged_samples(path) < n {
        assert!(
            Instant::now() < end,
            "{} never held {n} samples",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shards_write_interval_logs() {
    let dir = std::env::temp_dir().join(format!("shardcast-hlog-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&[
        "--histogram-log",
        dir.to_str().unwrap(),
        "--histogram-log-interval-ms",
        "200",
    ]);
    let clients = fan_out(&server, 6, 4, 0);
    let end = Instant::now() + TIMEOUT;
    for shard in 0..2 {
        let path = dir.join(format!("shard-{shard}.handshake.hlog"));
        wait_for_samples(&path, 3, end);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("#[BaseTime: "), "{text}");
        assert!(
            text.contains(&format!("Tag=shard{shard}_handshake,")),
            "{text}"
        );
        // 3 subscribers per shard × 4 messages: exactly 12 broadcast samples per shard.
        let broadcast = dir.join(format!("shard-{shard}.broadcast.hlog"));
        wait_for_samples(&broadcast, 12, end);
        assert_eq!(logged_samples(&broadcast), 12);
        let text = std::fs::read_to_string(&broadcast).unwrap();
        assert!(
            text.contains(&format!("Tag=shard{shard}_broadcast,")),
            "{text}"
        );
        for kind in ["ring_transit", "eviction_stall"] {
            assert!(dir.join(format!("shard-{shard}.{kind}.hlog")).exists());
        }
    }
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
}
