//! Startup preflight: compare the host's limits with what the configuration needs and say, per
//! shortfall, the command that fixes it. The server logs every shortfall once at start;
//! `shardcast --preflight` prints the same report and exits.
//!
//! Each check is a pure function of its inputs, so the tests feed it values instead of reading the
//! host; [`HostFacts::gather`] is the only part that reads `/proc`, `/sys` and rlimits.

use std::fmt;

use crate::config::{Config, Driver};
use crate::obs::stats::DriverKind;
pub use crate::ops::capacity::{
    default_max_connections, memory_required, nofile_required, KERNEL_BYTES_PER_CONNECTION,
    NOFILE_HEADROOM, NOFILE_PER_SHARD, QUEUE_CEILING_PERCENT, USER_BYTES_PER_CONNECTION,
};
use crate::ops::host::{HostFacts, MemoryLimit, MemorySource};
use crate::runtime::select::resolve;

/// Locked memory one shard's io_uring needs on kernels that charge it to RLIMIT_MEMLOCK: 4096
/// SQEs of 64 B, 8192 CQEs of 16 B, the 4-byte SQ index array and a page of ring headers.
pub const URING_MEMLOCK_BYTES_PER_SHARD: u64 = 4096 * 64 + 8192 * 16 + 4096 * 4 + 4096;
/// First kernel that charges io_uring memory to the memory cgroup instead of RLIMIT_MEMLOCK.
pub const URING_MEMCG_KERNEL: (u32, u32) = (5, 12);

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Requirement met.
    Ok,
    /// The server runs but below what the configuration asks for.
    Warn,
    /// The server cannot start with this configuration.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short name: nofile, somaxconn, memlock, driver, memory.
    pub name: &'static str,
    /// Outcome.
    pub level: Level,
    /// What the host has.
    pub value: String,
    /// What the configuration needs.
    pub required: String,
    /// Command or setting that fixes a shortfall ("-" when there is none).
    pub fix: String,
}

impl Check {
    fn new(name: &'static str, level: Level, value: String, required: String, fix: String) -> Self {
        let fix = if level == Level::Ok { "-".into() } else { fix };
        Check {
            name,
            level,
            value,
            required,
            fix,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {:<9} value={}; required={}; fix={}",
            self.level.label(),
            self.name,
            self.value,
            self.required,
            self.fix
        )
    }
}

/// RLIMIT_NOFILE (soft, after the start-up raise to the hard limit) against what
/// `max_connections` over `shards` need.
pub fn check_nofile(soft: u64, hard: u64, max_connections: usize, shards: usize) -> Check {
    let required = nofile_required(max_connections, shards);
    let headroom = required - max_connections as u64;
    let level = if soft >= required {
        Level::Ok
    } else {
        Level::Warn
    };
    Check::new(
        "nofile",
        level,
        format!("{soft} (hard {hard})"),
        format!(">= {required} (max_connections + {headroom})"),
        format!(
            "LimitNOFILE={required} in shardcast.service, or `ulimit -n {required}` as root before \
             starting (fs.nr_open must allow it: sudo scripts/tune apply --profile c1m), or lower \
             --max-connections to {}",
            soft.saturating_sub(headroom)
        ),
    )
}

/// net.core.somaxconn against `listen_backlog`: listen(2) silently truncates the backlog to it.
pub fn check_somaxconn(somaxconn: Option<u64>, listen_backlog: u32) -> Check {
    let backlog = u64::from(listen_backlog);
    let profile = if backlog <= 4096 { "default" } else { "c1m" };
    let fix = format!(
        "sudo scripts/tune apply --profile {profile} (net.core.somaxconn >= {backlog}), or lower \
         --listen-backlog"
    );
    match somaxconn {
        Some(v) => Check::new(
            "somaxconn",
            if v >= backlog { Level::Ok } else { Level::Warn },
            v.to_string(),
            format!(">= {backlog} (listen_backlog)"),
            fix,
        ),
        None => Check::new(
            "somaxconn",
            Level::Warn,
            "unreadable".into(),
            format!(">= {backlog} (listen_backlog)"),
            "check /proc/sys/net/core/somaxconn is readable".into(),
        ),
    }
}

/// Which driver will run; FAIL when `--driver uring` cannot have io_uring. `uring_error`:
/// why io_uring cannot be set up (`None`: it can); `refused_by`: the environment variable that
/// refuses it on purpose, if any.
pub fn check_driver(driver: Driver, uring_error: Option<&str>, refused_by: Option<&str>) -> Check {
    let why = match (refused_by, uring_error) {
        (Some(var), _) => format!("io_uring disabled by {var}"),
        (None, Some(e)) => format!("io_uring unusable: {e}"),
        (None, None) => String::new(),
    };
    let enable = match refused_by {
        Some(var) => format!("unset {var}"),
        None => "run a kernel >= 6.0 with io_uring allowed (sysctl kernel.io_uring_disabled=0; a \
                 container's seccomp profile must allow io_uring_setup)"
            .to_owned(),
    };
    let required = format!("{driver:?}").to_lowercase();
    let err = uring_error.map(std::io::Error::other);
    match (
        resolve(driver, err.as_ref().map_or(Ok(()), Err)).ok(),
        driver,
    ) {
        (Some(DriverKind::Uring), _) => Check::new(
            "driver",
            Level::Ok,
            "io_uring".into(),
            required,
            String::new(),
        ),
        (Some(_), Driver::Epoll) => Check::new(
            "driver",
            Level::Ok,
            "epoll (configured)".into(),
            required,
            String::new(),
        ),
        (Some(_), _) => Check::new(
            "driver",
            Level::Warn,
            format!("epoll ({why})"),
            "auto (io_uring preferred)".into(),
            format!("{enable}; epoll works, io_uring batches syscalls"),
        ),
        (None, _) => Check::new(
            "driver",
            Level::Fail,
            format!("none ({why})"),
            "uring".into(),
            format!("{enable}, or start with --driver auto / --driver epoll"),
        ),
    }
}

/// RLIMIT_MEMLOCK against what io_uring rings lock, which only matters before kernel 5.12.
pub fn check_memlock(
    memlock: Option<u64>,
    kernel: Option<(u32, u32)>,
    driver: Option<DriverKind>,
    shards: usize,
) -> Check {
    let required = URING_MEMLOCK_BYTES_PER_SHARD * shards as u64;
    let shown = memlock.map_or("unknown".into(), |v| {
        if v == u64::MAX {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    });
    let fix = "LimitMEMLOCK=infinity in shardcast.service or `ulimit -l unlimited`, or \
               --driver epoll"
        .to_owned();
    if driver != Some(DriverKind::Uring) {
        return Check::new(
            "memlock",
            Level::Ok,
            shown,
            "none (epoll driver)".into(),
            fix,
        );
    }
    if let Some(k) = kernel.filter(|k| *k >= URING_MEMCG_KERNEL) {
        return Check::new(
            "memlock",
            Level::Ok,
            shown,
            format!(
                "none (kernel {}.{} >= 5.12 charges io_uring to the memory cgroup)",
                k.0, k.1
            ),
            fix,
        );
    }
    let level = match memlock {
        Some(v) if v >= required => Level::Ok,
        _ => Level::Warn,
    };
    let kernel = kernel.map_or("unknown".into(), |k| format!("{}.{}", k.0, k.1));
    Check::new(
        "memlock",
        level,
        shown,
        format!(">= {required} bytes (io_uring rings, kernel {kernel} < 5.12)"),
        fix,
    )
}

/// The memory limit against `max_connections`.
pub fn check_memory(limit: Option<MemoryLimit>, max_connections: usize) -> Check {
    let required = memory_required(max_connections);
    let per = KERNEL_BYTES_PER_CONNECTION + USER_BYTES_PER_CONNECTION;
    let required_text = format!(
        ">= {} MiB ({max_connections} x {per} B idle + {QUEUE_CEILING_PERCENT}% queue ceiling)",
        required >> 20
    );
    let Some(limit) = limit else {
        return Check::new(
            "memory",
            Level::Warn,
            "unknown".into(),
            required_text,
            "check /proc/meminfo and the cgroup's memory.max are readable".into(),
        );
    };
    let source = match limit.source {
        MemorySource::Cgroup => "cgroup memory.max",
        MemorySource::MemTotal => "MemTotal",
    };
    let fits = limit.bytes * (100 - QUEUE_CEILING_PERCENT) / 100 / per;
    Check::new(
        "memory",
        if limit.bytes >= required {
            Level::Ok
        } else {
            Level::Warn
        },
        format!("{} MiB ({source})", limit.bytes >> 20),
        required_text,
        format!(
            "lower --max-connections to {fits}, or raise the limit (MemoryMax= in \
             shardcast.service / the container's memory limit, or more RAM)"
        ),
    )
}

/// Every check of `config` against `host`, in report order.
pub fn run(config: &Config, host: &HostFacts) -> Vec<Check> {
    let nofile = match host.nofile {
        Some(n) => check_nofile(n.soft, n.hard, config.max_connections, config.shards),
        None => Check::new(
            "nofile",
            Level::Warn,
            "unknown".into(),
            format!(
                ">= {}",
                nofile_required(config.max_connections, config.shards)
            ),
            "getrlimit(RLIMIT_NOFILE) failed".into(),
        ),
    };
    vec![
        nofile,
        check_somaxconn(host.somaxconn, config.listen_backlog),
        check_memlock(
            host.memlock,
            host.kernel,
            resolve(
                config.driver,
                host.uring_error
                    .as_deref()
                    .map(std::io::Error::other)
                    .as_ref()
                    .map_or(Ok(()), Err),
            )
            .ok(),
            config.shards,
        ),
        check_driver(
            config.driver,
            host.uring_error.as_deref(),
            host.uring_refused_by.as_deref(),
        ),
        check_memory(host.memory, config.max_connections),
    ]
}

/// True when a check failed, i.e. the server cannot start.
pub fn has_failure(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// Log every shortfall once (warn), with its fix.
pub fn log(checks: &[Check]) {
    for c in checks.iter().filter(|c| c.level != Level::Ok) {
        tracing::warn!(
            check = c.name,
            level = c.level.label(),
            value = %c.value,
            required = %c.required,
            fix = %c.fix,
            "preflight"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        crate::config::Overrides::try_parse_from(
            std::iter::once("shardcast").chain(args.iter().copied()),
        )
        .unwrap()
        .resolve()
        .unwrap()
    }

    #[test]
    fn nofile_needs_connections_plus_headroom() {
        assert_eq!(nofile_required(1000, 2), 1000 + 64 + 16);
        let ok = check_nofile(1080, 4096, 1000, 2);
        assert_eq!(ok.level, Level::Ok);
        assert_eq!(ok.fix, "-");
        let short = check_nofile(1079, 4096, 1000, 2);
        assert_eq!(short.level, Level::Warn);
        assert_eq!(short.required, ">= 1080 (max_connections + 80)");
        assert!(short.fix.contains("LimitNOFILE=1080"), "{}", short.fix);
        assert!(short.fix.contains("ulimit -n 1080"), "{}", short.fix);
        assert!(
            short.fix.ends_with("--max-connections to 999"),
            "{}",
            short.fix
        );
    }

    #[test]
    fn default_max_connections_fits_both_limits_so_the_checks_pass() {
        let gib = 1u64 << 30;
        // The unit's LimitNOFILE on a 24 GiB host: descriptors bound it.
        let (n, why) = default_max_connections(Some(1_048_576), 8, 24 * gib);
        assert_eq!((n, why), (1_048_576 - 64 - 64, "nofile"));
        assert_eq!(check_nofile(1_048_576, 1_048_576, n, 8).level, Level::Ok);
        // The same on a 2 GiB host: memory bounds it.
        let two = MemoryLimit {
            bytes: 2 * gib,
            source: MemorySource::MemTotal,
        };
        let (n, why) = default_max_connections(Some(1_048_576), 8, two.bytes);
        assert_eq!(why, "memory");
        assert_eq!(check_memory(Some(two), n).level, Level::Ok);
        assert_eq!(check_memory(Some(two), n + 2).level, Level::Warn);
        // An unlimited or unknown descriptor limit leaves memory; a tiny one still gives 1.
        assert_eq!(default_max_connections(Some(u64::MAX), 2, two.bytes).0, n);
        assert_eq!(default_max_connections(None, 2, two.bytes).0, n);
        assert_eq!(
            default_max_connections(Some(20), 2, two.bytes),
            (1, "nofile")
        );
    }

    #[test]
    fn somaxconn_truncates_backlog() {
        assert_eq!(check_somaxconn(Some(4096), 4096).level, Level::Ok);
        let low = check_somaxconn(Some(128), 4096);
        assert_eq!(low.level, Level::Warn);
        assert!(low.fix.contains("scripts/tune apply --profile default"));
        let big = check_somaxconn(Some(4096), 65535);
        assert!(big.fix.contains("--profile c1m"), "{}", big.fix);
        assert_eq!(check_somaxconn(None, 1).level, Level::Warn);
    }

    #[test]
    fn memlock_matters_only_for_io_uring_before_5_12() {
        let uring = Some(DriverKind::Uring);
        let need = URING_MEMLOCK_BYTES_PER_SHARD * 4;
        let new = check_memlock(Some(65536), Some((5, 12)), uring, 4);
        assert_eq!(new.level, Level::Ok);
        assert!(new.required.contains("memory cgroup"), "{}", new.required);
        let epoll = check_memlock(Some(0), Some((5, 4)), Some(DriverKind::Epoll), 4);
        assert_eq!(epoll.level, Level::Ok);
        let old = check_memlock(Some(65536), Some((5, 11)), uring, 4);
        assert_eq!(old.level, Level::Warn);
        assert!(old.required.starts_with(&format!(">= {need} bytes")));
        assert!(old.fix.contains("LimitMEMLOCK=infinity"));
        assert_eq!(
            check_memlock(Some(need), Some((4, 19)), uring, 4).level,
            Level::Ok
        );
        assert_eq!(
            check_memlock(Some(u64::MAX), None, uring, 4).value,
            "unlimited"
        );
        assert_eq!(check_memlock(None, None, uring, 1).level, Level::Warn);
    }

    #[test]
    fn driver_resolution_and_failure() {
        assert_eq!(check_driver(Driver::Auto, None, None).value, "io_uring");
        assert_eq!(check_driver(Driver::Epoll, None, None).level, Level::Ok);
        let refused = Some("Operation not permitted (os error 1)");
        let var = Some("SHARDCAST_URING_REFUSE");
        let fallback = check_driver(Driver::Auto, refused, var);
        assert_eq!(fallback.level, Level::Warn);
        assert!(fallback.value.contains("SHARDCAST_URING_REFUSE"));
        assert!(fallback.fix.contains("unset SHARDCAST_URING_REFUSE"));
        let fail = check_driver(Driver::Uring, refused, None);
        assert_eq!(fail.level, Level::Fail);
        assert!(fail.value.contains("not permitted"), "{}", fail.value);
        assert!(fail.fix.contains("--driver epoll"), "{}", fail.fix);
    }

    #[test]
    fn memory_sized_per_connection_plus_queue_ceiling() {
        let per = KERNEL_BYTES_PER_CONNECTION + USER_BYTES_PER_CONNECTION;
        assert_eq!(memory_required(1_000_000), 1_000_000 * per * 100 / 95);
        let limit = |bytes| {
            Some(MemoryLimit {
                bytes,
                source: MemorySource::Cgroup,
            })
        };
        let need = memory_required(1_000_000);
        assert_eq!(check_memory(limit(need), 1_000_000).level, Level::Ok);
        let short = check_memory(limit(1 << 30), 1_000_000);
        assert_eq!(short.level, Level::Warn);
        assert!(short.value.contains("cgroup memory.max"));
        let fits = (1u64 << 30) * 95 / 100 / per;
        assert!(short.fix.contains(&format!("--max-connections to {fits}")));
        assert_eq!(check_memory(None, 1).level, Level::Warn);
    }

    #[test]
    fn report_has_one_line_per_check_and_fails_only_on_fail() {
        let host = HostFacts {
            nofile: Some(crate::runtime::rlimit::NofileLimit {
                soft: 1024,
                hard: 1024,
            }),
            somaxconn: Some(4096),
            memlock: Some(8 << 20),
            kernel: Some((6, 1)),
            uring_error: Some("refused".into()),
            uring_refused_by: Some("MONOIO_FORCE_LEGACY_DRIVER".into()),
            memory: crate::ops::host::memory_limit(&[], "MemTotal: 8000000 kB\n"),
        };
        let checks = run(
            &config(&["--shards", "2", "--max-connections", "100"]),
            &host,
        );
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["nofile", "somaxconn", "memlock", "driver", "memory"]
        );
        assert!(!has_failure(&checks));
        assert_eq!(checks[3].level, Level::Warn, "auto falls back to epoll");
        let line = checks[0].to_string();
        assert!(
            line.starts_with(
                "OK   nofile    value=1024 (hard 1024); required=>= 180 (max_connections + 80)"
            ),
            "{line}"
        );
        assert!(line.ends_with("; fix=-"), "{line}");
        let forced = run(&config(&["--shards", "2", "--driver", "uring"]), &host);
        assert!(has_failure(&forced));
        assert!(forced[0].to_string().starts_with("WARN nofile"));
    }
}
