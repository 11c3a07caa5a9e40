//! Shard threads: one OS thread per shard, pinned to the i-th CPU of the affinity mask, each
//! running its own monoio runtime (thread-per-core: no work stealing, no shared run queue).

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use crate::config::Driver;
use crate::obs::stats::DriverKind;

/// io_uring submission queue entries per shard runtime.
const URING_ENTRIES: u32 = 4096;

/// Which driver `driver` resolves to on this host (io_uring needs kernel support and no
/// `MONOIO_FORCE_LEGACY_DRIVER=1`, which `detect_uring` honours).
pub fn resolve_driver(driver: Driver) -> io::Result<DriverKind> {
    match driver {
        Driver::Epoll => Ok(DriverKind::Epoll),
        Driver::Auto if monoio::utils::detect_uring() => Ok(DriverKind::Uring),
        Driver::Auto => Ok(DriverKind::Epoll),
        Driver::Uring if monoio::utils::detect_uring() => Ok(DriverKind::Uring),
        Driver::Uring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "driver=uring but io_uring is unavailable (kernel support or MONOIO_FORCE_LEGACY_DRIVER)",
        )),
    }
}

/// Build a runtime of `kind` (timers enabled) on the current thread and run `fut` to completion.
pub fn block_on<F: Future>(kind: DriverKind, fut: F) -> io::Result<F::Output> {
    match kind {
        DriverKind::Uring => Ok(monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build()?
            .block_on(fut)),
        _ => Ok(monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(fut)),
    }
}

/// Spawn `shards` threads named `shard-<i>`, pinned round-robin over the affinity mask; each
/// builds a `kind` runtime and runs `make(i)`. `make` runs on the shard thread, so the future
/// need not be `Send`.
pub fn spawn<M, F>(
    shards: usize,
    kind: DriverKind,
    make: M,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>>
where
    M: Fn(usize) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = ()> + 'static,
{
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    (0..shards)
        .map(|i| {
            let make = make.clone();
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(shard = i, core = core.id, "could not pin shard thread");
                        }
                    }
                    block_on(kind, make(i))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::mesh;
    use std::sync::mpsc;

    #[test]
    fn epoll_and_auto_runtimes_run_with_timers() {
        for kind in [DriverKind::Epoll, resolve_driver(Driver::Auto).unwrap()] {
            let (tx, rx) = mpsc::channel();
            let handles = spawn(2, kind, move |i| {
                let tx = tx.clone();
                async move {
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                    tx.send((i, std::thread::current().name().unwrap().to_owned()))
                        .unwrap();
                }
            })
            .unwrap();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            let mut got: Vec<_> = rx.try_iter().collect();
            got.sort();
            assert_eq!(
                got,
                vec![(0, "shard-0".to_owned()), (1, "shard-1".to_owned())]
            );
        }
        assert_eq!(resolve_driver(Driver::Epoll).unwrap(), DriverKind::Epoll);
    }

    /// A monoio runtime parked in `poll_drain` is woken by a producer on another thread (needs
    /// monoio's `sync` feature), under both drivers.
    #[test]
    fn mesh_wakes_a_parked_runtime() {
        for kind in [DriverKind::Epoll, resolve_driver(Driver::Auto).unwrap()] {
            let mut links = mesh::<u32>(2, 8);
            let mut consumer = links.pop().unwrap();
            let mut producer = links.pop().unwrap();
            let h = std::thread::spawn(move || {
                block_on(kind, async move {
                    let mut got = Vec::new();
                    while got.len() < 100 {
                        std::future::poll_fn(|cx| consumer.poll_drain(cx, |x| got.push(x))).await;
                    }
                    got
                })
                .unwrap()
            });
            for i in 0..100 {
                producer.send(1, i);
                while producer.flush() > 0 {
                    std::thread::yield_now();
                }
                if i % 10 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            assert_eq!(h.join().unwrap(), (0..100).collect::<Vec<_>>());
        }
    }

    #[test]
    fn uring_request_matches_detection() {
        assert_eq!(
            resolve_driver(Driver::Uring).is_ok(),
            monoio::utils::detect_uring()
        );
    }
}
