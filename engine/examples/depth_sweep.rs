//! What the once-per-second queue depth sample costs a shard: a shard core with N upgraded
//! connections (default 100,000; 2% of them with frames queued); a whole pass (`SLICES` slices)
//! and one tick's slice timed over 21 runs each. The numbers docs/ENGINE.md quotes come from
//! here.
//!
//!   cargo run --release -p shardcast --example depth_sweep [-- CONNECTIONS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast::obs::depth::SLICES;
use shardcast::obs::stats::ShardStats;
use shardcast::runtime::driver::Admit;
use shardcast::shard::Core;
use shardcast_proto::MessageKind;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("CONNECTIONS is a number"))
        .unwrap_or(100_000);
    let config = shardcast::config::Overrides::default()
        .resolve()
        .expect("default config");
    let stats: Arc<[ShardStats]> = vec![ShardStats::default()].into();
    let link = shardcast::mesh::mesh(1, 4).pop().expect("one link");
    let now = Instant::now();
    let mut core = Core::new(0, Arc::new(config), stats, link, Default::default(), now);
    core.handle_time(now);
    let peer = "127.0.0.1:1".parse().expect("an address");
    for i in 0..n {
        let Admit::Accept(id) = core.handle_accepted(peer) else {
            panic!("refused")
        };
        let topic = if i % 50 == 0 { "slow" } else { "idle" };
        let mut req = format!(
            "GET /ws/{topic} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        core.handle_received(id, &mut req);
    }
    for _ in 0..10 {
        core.publish(&Arc::from("slow"), MessageKind::Binary, &[0; 100]);
    }
    let mut time = |f: &mut dyn FnMut(&mut Core)| {
        let mut runs: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                f(&mut core);
                t.elapsed()
            })
            .collect();
        runs.sort();
        (runs[0], runs[runs.len() / 2], runs[runs.len() - 1])
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (min, median, max) = time(&mut |c| {
        for _ in 0..SLICES {
            c.sample_depth_slice();
        }
    });
    println!(
        "{n} connections, whole pass: min {:.2} ms, median {:.2} ms, max {:.2} ms ({:.1} ns per connection)",
        ms(min),
        ms(median),
        ms(max),
        median.as_nanos() as f64 / n as f64,
    );
    let (min, median, max) = time(&mut |c| c.sample_depth_slice());
    println!(
        "one tick's slice (1/{SLICES} of the slab): min {:.3} ms, median {:.3} ms, max {:.3} ms",
        ms(min),
        ms(median),
        ms(max),
    );
}
