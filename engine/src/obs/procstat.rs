//! The standard Prometheus `process_*` metrics, read from /proc for this process.
//!
//! Parsing is separate from reading (pure functions over the files' text), so the tests feed
//! fixed text. Costs per scrape: three small file reads, one `getrlimit`, and one listing of
//! `/proc/self/fd` (one entry per open descriptor, i.e. per connection: ~50 ms at a million).

/// The process figures /metrics exports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Open descriptors (`None` when /proc/self/fd is unreadable).
    pub open_fds: Option<u64>,
    /// Soft RLIMIT_NOFILE.
    pub max_fds: Option<u64>,
}

/// Fields of `/proc/<pid>/stat` (after the parenthesised command name, which may itself hold
/// spaces and parentheses): `clk_tck` ticks per second, `page_size` bytes, `btime` boot time in
/// seconds since the epoch (from /proc/stat).
pub fn parse_stat(stat: &str, clk_tck: u64, page_size: u64, btime: u64) -> Option<ProcessStats> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command; proc(5) numbers fields from 1.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = clk_tck.max(1) as f64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        open_fds: None,
        max_fds: None,
    })
}

/// `btime` (boot time, seconds since the epoch) from /proc/stat.
pub fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// This process's figures; `None` when /proc is not readable.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf only reads configuration values.
    let (clk_tck, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut p = parse_stat(&stat, clk_tck.max(1) as u64, page_size.max(1) as u64, btime)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    p.max_fds = crate::rlimit::nofile().ok().map(|n| n.soft);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_command_name() {
        // Fields 14/15 utime/stime 250/50 ticks, 20 threads 7, 22 starttime 1000 ticks,
        // 23 vsize, 24 rss 300 pages.
        let stat = "4242 (shard (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let p = parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(
            (p.virtual_bytes, p.resident_bytes),
            (123_456_789, 300 * 4096)
        );
        assert_eq!(parse_stat("garbage", 100, 4096, 0), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn reads_this_process() {
        let p = read().expect("/proc is readable here");
        assert!(p.threads >= 1 && p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds.unwrap() >= 3 && p.max_fds.unwrap() >= p.open_fds.unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0);
    }
}
