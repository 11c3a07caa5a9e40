//! What the once-per-second queue depth sample costs a shard: a hub with N registered
//! connections (default 100,000; 2% of them with frames queued), each next to 768 B of other
//! memory as a real connection's task and socket state would be; a whole pass
//! (`DepthSampler::sample`) and one tick's slice (`DepthSampler::on_tick`) timed over 21 runs
//! each. The numbers docs/ENGINE.md quotes come from here.
//!
//!   cargo run --release -p shardcast --example depth_sweep [-- CONNECTIONS]

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast::obs::depth::{DepthSampler, SLICES};
use shardcast::obs::stats::ShardStats;
use shardcast::shard::hub::{Conn, Hub};
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
    let hub = Hub::new(0, Arc::new(config), stats, link, Default::default());
    let mut neighbours = Vec::with_capacity(n);
    for i in 0..n {
        let conn = Rc::new(Conn {
            ledger: hub.ledger().clone(),
            ..Conn::default()
        });
        let id = hub.register(conn.clone());
        let topic = if i % 50 == 0 { "slow" } else { "idle" };
        hub.subscribe(id, &conn, topic);
        neighbours.push(vec![0u8; 768]);
    }
    for _ in 0..10 {
        hub.publish(&Arc::from("slow"), MessageKind::Binary, &[0; 100]);
    }
    let mut sampler = DepthSampler::default();
    let time = |f: &mut dyn FnMut()| {
        let mut runs: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        runs.sort();
        (runs[0], runs[runs.len() / 2], runs[runs.len() - 1])
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (min, median, max) = time(&mut || sampler.sample(&hub));
    let depth = hub.stats().queue_depth.clone_of().summary();
    assert_eq!(depth.connections, n as u64);
    println!(
        "{n} connections, whole pass: min {:.2} ms, median {:.2} ms, max {:.2} ms ({:.1} ns per connection); p99 depth {} frames",
        ms(min),
        ms(median),
        ms(max),
        median.as_nanos() as f64 / n as f64,
        depth.frames[2],
    );
    let (min, median, max) = time(&mut || sampler.on_tick(&hub));
    println!(
        "one tick's slice (1/{SLICES} of the slab): min {:.3} ms, median {:.3} ms, max {:.3} ms",
        ms(min),
        ms(median),
        ms(max),
    );
    drop(neighbours);
}
