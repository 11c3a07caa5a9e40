//! Thread per core: one pinned monoio runtime per CPU the generator may use.

use std::future::Future;

/// Parses a CPU list such as `1`, `0,2` or `0-3`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| x.parse::<usize>().map_err(|_| format!("bad CPU list: {s}"));
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(num(a)?..=num(b)?),
            None => cpus.push(num(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list: {s:?}"));
    }
    Ok(cpus)
}

/// The CPUs to run on: the given list, else every CPU in this process's affinity mask.
pub fn choose_cpus(list: Option<&str>) -> Result<Vec<usize>, String> {
    match list {
        Some(s) => parse_cpu_list(s),
        None => Ok(core_affinity::get_core_ids()
            .filter(|ids| !ids.is_empty())
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_else(|| vec![0])),
    }
}

/// Runs `task(worker_index)` on one thread per CPU in `cpus`, each pinned to its CPU and
/// driving its own monoio runtime (io_uring, or epoll where io_uring is unavailable); returns
/// the results in worker order.
pub fn run<R, F, Fut>(cpus: &[usize], task: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + 'static,
{
    let handles: Vec<_> = cpus
        .iter()
        .enumerate()
        .map(|(i, &cpu)| {
            let task = task.clone();
            std::thread::Builder::new()
                .name(format!("gen-{i}"))
                .spawn(move || {
                    // Pinning can fail in a restricted container; the run still counts, only
                    // less reproducibly, so do not abort.
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        eprintln!("warning: could not pin worker {i} to CPU {cpu}");
                    }
                    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .with_entries(4096)
                        .enable_timer()
                        .build()
                        .expect("build monoio runtime");
                    rt.block_on(task(i))
                })
                .expect("spawn worker thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(!choose_cpus(None).unwrap().is_empty());
    }

    #[test]
    fn runs_one_task_per_worker() {
        let cpus = choose_cpus(None).unwrap();
        let out = run(&cpus, |i| async move {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            i * 10
        });
        assert_eq!(out, (0..cpus.len()).map(|i| i * 10).collect::<Vec<_>>());
    }
}
