//! Options every scenario shares, and the connection helpers built on them.

use crate::dial::{self, Target, WsConn};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Flags shared by every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Server URL, `ws://IP:PORT` or `wss://IP:PORT` (then `--ca` is required).
    #[arg(long)]
    pub url: String,
    /// wss://: PEM file of the root certificate(s) to trust (the server's CA).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// wss://: resume TLS sessions (connections share one client session cache, so handshakes
    /// after the first ones present a ticket); without it every handshake is a full one.
    #[arg(long)]
    pub resume: bool,
    /// CPUs to run generator threads on (e.g. `1`, `1-3`); default: the affinity mask.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.N (> 28k connections).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u32,
    /// The server's pid, for its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Connections opened at once during set-up, per generator thread.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Topic name.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Upper bound on the whole run, seconds (set-up, load and drain).
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

impl CommonArgs {
    /// The server address and source-address policy.
    pub fn target(&self) -> Result<Target, String> {
        Target::from_url(&self.url, self.source_addrs)?.with_tls(self.ca.as_deref(), self.resume)
    }

    /// Generator CPUs.
    pub fn cpus(&self) -> Result<Vec<usize>, String> {
        crate::workers::choose_cpus(self.cpus.as_deref())
    }
}

/// Indices `worker, worker + workers, ...` below `n`: this worker's share of `n` connections.
pub fn share(n: usize, worker: usize, workers: usize) -> Vec<u64> {
    (worker..n).step_by(workers).map(|i| i as u64).collect()
}

/// Opens a connection for each id on `path`, `concurrency` at a time, each bounded by `limit`;
/// returns the connections (in completion order, with their ids) and the failure count.
pub async fn connect_all(
    target: &Target,
    ids: Vec<u64>,
    path: &str,
    concurrency: usize,
    limit: Duration,
) -> (Vec<(u64, WsConn)>, usize) {
    let queue = Rc::new(RefCell::new(ids.into_iter()));
    let done = Rc::new(RefCell::new((Vec::new(), 0usize)));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (queue, done, target, path) = (
                queue.clone(),
                done.clone(),
                target.clone(),
                path.to_string(),
            );
            monoio::spawn(async move {
                loop {
                    let Some(id) = queue.borrow_mut().next() else {
                        break;
                    };
                    match monoio::time::timeout(limit, dial::connect(&target, id, &path)).await {
                        Ok(Ok(c)) => done.borrow_mut().0.push((id, c)),
                        Ok(Err(e)) => {
                            report_first_error(&e.to_string());
                            done.borrow_mut().1 += 1;
                        }
                        Err(_) => {
                            report_first_error("connect timed out");
                            done.borrow_mut().1 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let (conns, failed) = std::mem::take(&mut *done.borrow_mut());
    (conns, failed)
}

/// Worker `worker` of `workers`: opens its share of `n` connections on `path` (each bounded by
/// 10 s, `connect_concurrency` at a time) and adds them to `connected` and the failures to
/// `failed`; returns the connections with their ids.
#[allow(clippy::too_many_arguments)]
pub async fn connect_share(
    target: &Target,
    common: &CommonArgs,
    path: &str,
    n: usize,
    worker: usize,
    workers: usize,
    connected: &AtomicUsize,
    failed: &AtomicUsize,
) -> Vec<(u64, WsConn)> {
    let ids = share(n, worker, workers);
    let limit = Duration::from_secs(10);
    let (conns, lost) = connect_all(target, ids, path, common.connect_concurrency, limit).await;
    connected.fetch_add(conns.len(), Ordering::AcqRel);
    failed.fetch_add(lost, Ordering::AcqRel);
    conns
}

/// Prints the first connection error only: a storm of identical lines helps nobody.
pub fn report_first_error(msg: &str) {
    static SEEN: AtomicBool = AtomicBool::new(false);
    if !SEEN.swap(true, Ordering::Relaxed) {
        eprintln!("connection error (first of possibly many): {msg}");
    }
}

/// Sleeps in small steps until `cond` holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while !cond() {
        if std::time::Instant::now() >= end {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        let mut all: Vec<u64> = (0..3).flat_map(|w| share(10, w, 3)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
