//! Facts about this host and process that sizing and start-up depend on: rlimits, somaxconn,
//! the kernel release, whether io_uring can be set up, and the memory limit (one home for its
//! detection: the queue ceiling and the preflight report read the same number). Reading the host
//! happens only in [`HostFacts::gather`] and [`detect_memory_limit`]; the parsers are pure.

use crate::runtime::rlimit;

/// Parse "major.minor" from a kernel release such as "6.8.0-45-generic".
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The soft limit named `name` ("Max locked memory") from /proc/self/limits; `u64::MAX` for
/// "unlimited".
pub fn parse_proc_limit(limits: &str, name: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Where the memory limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// memory.max of this process's cgroup (v2) or an ancestor.
    Cgroup,
    /// MemTotal from /proc/meminfo: no cgroup limit is set.
    MemTotal,
}

/// The memory this process may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// Origin.
    pub source: MemorySource,
}

/// Cgroup v2 directories (relative to the cgroup2 mount) from this process's cgroup up to the
/// root, given /proc/self/cgroup; empty when there is no v2 ("0::") entry.
pub fn cgroup_v2_dirs(proc_self_cgroup: &str) -> Vec<String> {
    let Some(path) = proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    let mut dir = path.trim().trim_matches('/').to_owned();
    loop {
        dirs.push(dir.clone());
        match dir.rfind('/') {
            Some(i) => dir.truncate(i),
            None if !dir.is_empty() => dir.clear(),
            None => break,
        }
    }
    dirs
}

/// The tightest of the cgroup `memory.max` contents ("max" means none) and MemTotal from
/// /proc/meminfo text.
pub fn memory_limit(memory_max: &[String], meminfo: &str) -> Option<MemoryLimit> {
    let cgroup = memory_max
        .iter()
        .filter_map(|m| m.trim().parse::<u64>().ok())
        .min()
        .map(|bytes| MemoryLimit {
            bytes,
            source: MemorySource::Cgroup,
        });
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| MemoryLimit {
            bytes: kb * 1024,
            source: MemorySource::MemTotal,
        });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(if c.bytes <= t.bytes { c } else { t }),
        (c, t) => c.or(t),
    }
}

/// This process's memory limit, read from /proc/self/cgroup, every cgroup v2 ancestor's
/// memory.max and /proc/meminfo; `None` when none of them is readable.
pub fn detect_memory_limit() -> Option<MemoryLimit> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let memory_max: Vec<String> = read("/proc/self/cgroup")
        .map(|c| cgroup_v2_dirs(&c))
        .unwrap_or_default()
        .iter()
        .filter_map(|d| read(&format!("/sys/fs/cgroup/{d}/memory.max")))
        .collect();
    memory_limit(&memory_max, &read("/proc/meminfo").unwrap_or_default())
}

/// Everything the checks read from the host.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// RLIMIT_NOFILE soft/hard, after the start-up raise.
    pub nofile: Option<rlimit::NofileLimit>,
    /// /proc/sys/net/core/somaxconn.
    pub somaxconn: Option<u64>,
    /// Soft RLIMIT_MEMLOCK in bytes (`u64::MAX` = unlimited).
    pub memlock: Option<u64>,
    /// Kernel (major, minor).
    pub kernel: Option<(u32, u32)>,
    /// Why io_uring cannot be set up here (`None`: it can), from a real set-up attempt.
    pub uring_error: Option<String>,
    /// The environment variable refusing io_uring on purpose, if one is set.
    pub uring_refused_by: Option<String>,
    /// Memory limit of this process.
    pub memory: Option<MemoryLimit>,
}

impl HostFacts {
    /// Read the facts of this host and process.
    pub fn gather() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        HostFacts {
            nofile: rlimit::nofile().ok(),
            somaxconn: read("/proc/sys/net/core/somaxconn").and_then(|s| s.trim().parse().ok()),
            memlock: read("/proc/self/limits")
                .and_then(|l| parse_proc_limit(&l, "Max locked memory")),
            kernel: read("/proc/sys/kernel/osrelease").and_then(|r| parse_kernel_release(&r)),
            uring_error: crate::runtime::uring::probe().err().map(|e| e.to_string()),
            uring_refused_by: crate::runtime::select::refusing_env(),
            memory: detect_memory_limit(),
        }
    }
}

/// The memory limit when none is configured, and where it came from ("cgroup" or "meminfo");
/// 1 GiB when neither the cgroup nor /proc/meminfo is readable.
pub fn memory_limit_or_default() -> (u64, &'static str) {
    match detect_memory_limit() {
        Some(MemoryLimit {
            bytes,
            source: MemorySource::Cgroup,
        }) => (bytes, "cgroup"),
        Some(MemoryLimit { bytes, .. }) => (bytes, "meminfo"),
        None => (1 << 30, "meminfo"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_and_limits() {
        assert_eq!(parse_kernel_release("6.8.0-45-generic\n"), Some((6, 8)));
        assert_eq!(parse_kernel_release("5.4.17"), Some((5, 4)));
        assert_eq!(parse_kernel_release("6.18-rc1"), Some((6, 18)));
        assert_eq!(parse_kernel_release("garbage"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n\
                      Max locked memory         8388608              unlimited            bytes\n";
        assert_eq!(
            parse_proc_limit(limits, "Max locked memory"),
            Some(8_388_608)
        );
        assert_eq!(parse_proc_limit(limits, "Max open files"), Some(1024));
        let unlimited =
            "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(
            parse_proc_limit(unlimited, "Max locked memory"),
            Some(u64::MAX)
        );
        assert_eq!(parse_proc_limit(limits, "Max processes"), None);
    }

    #[test]
    fn cgroup_dirs_walk_up_to_the_root() {
        let v2 = "0::/system.slice/shardcast.service\n";
        assert_eq!(
            cgroup_v2_dirs(v2),
            ["system.slice/shardcast.service", "system.slice", ""]
        );
        assert_eq!(cgroup_v2_dirs("0::/\n"), [""]);
        // cgroup v1 only: no unified hierarchy entry.
        assert!(cgroup_v2_dirs("4:memory:/docker/abc\n1:cpu:/\n").is_empty());
    }

    #[test]
    fn memory_limit_takes_the_tightest() {
        let meminfo = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n";
        let total = memory_limit(&[], meminfo).unwrap();
        assert_eq!(total.bytes, 16_384_000 * 1024);
        assert_eq!(total.source, MemorySource::MemTotal);
        let limits = [
            "max\n".to_owned(),
            "2147483648\n".into(),
            "4294967296\n".into(),
        ];
        assert_eq!(
            memory_limit(&limits, meminfo),
            Some(MemoryLimit {
                bytes: 2 << 30,
                source: MemorySource::Cgroup
            })
        );
        // A cgroup limit above the RAM is no limit at all.
        let huge = ["1099511627776".to_owned()];
        assert_eq!(
            memory_limit(&huge, meminfo).unwrap().source,
            MemorySource::MemTotal
        );
        assert_eq!(memory_limit(&["max".to_owned()], ""), None);
        assert_eq!(memory_limit(&["junk".to_owned()], ""), None);
        assert!(detect_memory_limit().is_some_and(|m| m.bytes > 0));
    }
}
