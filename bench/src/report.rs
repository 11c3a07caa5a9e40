//! Measurement windows (wall clock, generator CPU, server CPU) and the JSON/human output.

use crate::process::{self, CpuTimes};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// Above this share of its cores the generator, not the server, may be the bottleneck.
pub const CLIENT_BOUND_SHARE: f64 = 0.9;

/// The start of a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    wall: Instant,
    own: CpuTimes,
    server: Option<CpuTimes>,
    server_pid: Option<u32>,
}

/// CPU spent in a window by one process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// User-mode CPU, µs.
    pub user_us: u64,
    /// Kernel CPU, µs.
    pub sys_us: u64,
    /// CPU time / wall time: how many cores were busy on average.
    pub cores_busy: f64,
}

impl CpuUse {
    fn new(t: CpuTimes, wall_s: f64) -> Self {
        CpuUse {
            user_us: t.user_us,
            sys_us: t.sys_us,
            cores_busy: t.total_us() as f64 / 1e6 / wall_s.max(1e-9),
        }
    }

    /// User + system µs.
    pub fn total_us(&self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// What a finished window measured.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Wall time of the window, seconds.
    pub wall_s: f64,
    /// The generator's CPU use.
    pub generator_cpu: CpuUse,
    /// CPUs the generator ran on.
    pub generator_cores: usize,
    /// The generator's I/O driver: `io_uring`, or `epoll` where io_uring is unavailable.
    pub generator_driver: &'static str,
    /// The server's CPU use (when its pid is known).
    pub server_cpu: Option<CpuUse>,
    /// The generator was busy for more than 90% of its cores: numbers are a client limit.
    pub client_bound: bool,
}

impl Meter {
    /// Starts a window now.
    pub fn start(server_pid: Option<u32>) -> Self {
        Meter {
            wall: Instant::now(),
            own: process::self_cpu(),
            server: server_pid.and_then(|p| process::proc_cpu(p).ok()),
            server_pid,
        }
    }

    /// Ends the window now, for a generator running on `cores` CPUs.
    pub fn finish(&self, cores: usize) -> Window {
        let wall_s = self.wall.elapsed().as_secs_f64();
        let own = process::self_cpu().since(self.own);
        let server = match (self.server, self.server_pid) {
            (Some(before), Some(pid)) => process::proc_cpu(pid).ok().map(|a| a.since(before)),
            _ => None,
        };
        let generator_cpu = CpuUse::new(own, wall_s);
        Window {
            wall_s,
            client_bound: is_client_bound(generator_cpu.cores_busy, cores),
            generator_cpu,
            generator_cores: cores,
            // monoio's fusion driver falls back to epoll when forced to or when io_uring fails.
            generator_driver: if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_none()
                && monoio::utils::detect_uring()
            {
                "io_uring"
            } else {
                "epoll"
            },
            server_cpu: server.map(|s| CpuUse::new(s, wall_s)),
        }
    }
}

/// Whether a generator busy on `cores_busy` of its `cores` CPUs may have limited the run.
pub fn is_client_bound(cores_busy: f64, cores: usize) -> bool {
    cores_busy > CLIENT_BOUND_SHARE * cores as f64
}

/// Latency percentiles in µs from a histogram recorded in ns.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Percentiles and extremes, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest sample, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl Latency {
    /// Summarises `h` (ns samples).
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// A histogram for ns latencies up to 100 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Writes `h` (ns samples) as CSV `percentile,latency_us`, percentiles in [0, 100], from the
/// histogram's own quantile steps (denser towards the tail), ending at the maximum.
pub fn write_percentiles(h: &Histogram<u64>, path: &Path) -> std::io::Result<()> {
    let mut out = String::from("percentile,latency_us\n");
    if !h.is_empty() {
        for v in h.iter_quantiles(4) {
            let q = v.quantile_iterated_to();
            out.push_str(&format!(
                "{},{}\n",
                q * 100.0,
                v.value_iterated_to() as f64 / 1000.0
            ));
        }
    }
    std::fs::write(path, out)
}

/// Writes the JSON result to `file` or stdout, and warns on stderr if the run was client-bound.
pub fn emit(result: &Value, file: Option<&Path>) -> std::io::Result<()> {
    if result.get("client_bound").and_then(Value::as_bool) == Some(true) {
        eprintln!(
            "CLIENT-BOUND: the generator used more than {:.0}% of its cores; these numbers \
             measure the generator, not the server",
            CLIENT_BOUND_SHARE * 100.0
        );
    }
    let text = serde_json::to_string_pretty(result).expect("serialisable result");
    match file {
        Some(path) => std::fs::write(path, text + "\n"),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

/// One line for the human summary: server and generator CPU of a window.
pub fn cpu_line(w: &Window) -> String {
    let server = w
        .server_cpu
        .map_or("server CPU unknown (no --server-pid)".to_string(), |s| {
            format!(
                "server CPU {:.2} cores (user {:.2}s, sys {:.2}s)",
                s.cores_busy,
                s.user_us as f64 / 1e6,
                s.sys_us as f64 / 1e6
            )
        });
    format!(
        "{server}; generator CPU {:.2}/{} cores (user {:.2}s, sys {:.2}s){}",
        w.generator_cpu.cores_busy,
        w.generator_cores,
        w.generator_cpu.user_us as f64 / 1e6,
        w.generator_cpu.sys_us as f64 / 1e6,
        if w.client_bound { " CLIENT-BOUND" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_measures_own_cpu() {
        let m = Meter::start(Some(std::process::id()));
        let start = process::self_cpu();
        let t = Instant::now();
        // Spin until this process has burnt 20 ms of CPU (bounded, in case of starvation).
        while process::self_cpu().since(start).total_us() < 20_000 && t.elapsed().as_secs() < 10 {
            std::hint::black_box(1u64);
        }
        let w = m.finish(1);
        assert!(w.generator_cpu.total_us() >= 20_000);
        assert!(w.generator_cpu.cores_busy > 0.0);
        assert!(w.server_cpu.is_some());
    }

    #[test]
    fn client_bound_threshold() {
        assert!(is_client_bound(0.95, 1));
        assert!(!is_client_bound(0.85, 1));
        assert!(!is_client_bound(1.5, 2));
        assert!(is_client_bound(1.9, 2));
    }

    #[test]
    fn latency_summary() {
        let mut h = latency_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Latency::from_hist(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 2.0);
        assert!((l.p99_us - 990.0).abs() < 2.0);
    }
}
