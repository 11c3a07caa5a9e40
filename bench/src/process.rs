//! What the generator learns about processes: its own and the server's CPU time, the server's
//! memory, and the open-file limit it needs for many connections.

use std::io;

/// User and system CPU time of a process, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time in user mode.
    pub user_us: u64,
    /// Time in the kernel on the process's behalf.
    pub sys_us: u64,
}

impl CpuTimes {
    /// `self - earlier`, saturating (per-thread accounting can jitter by a tick).
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
        }
    }

    /// User + system.
    pub fn total_us(self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// CPU time used so far by this process (all threads), from `getrusage(RUSAGE_SELF)`.
pub fn self_cpu() -> CpuTimes {
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    debug_assert_eq!(rc, 0);
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    CpuTimes {
        user_us: us(ru.ru_utime),
        sys_us: us(ru.ru_stime),
    }
}

/// CPU time of another process from `/proc/<pid>/stat` (utime, stime: clock ticks, so the
/// resolution is 1/CLK_TCK, usually 10 ms; runs are seconds long).
pub fn proc_cpu(pid: u32) -> io::Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat, clock_ticks()).ok_or_else(|| io::Error::other("malformed /proc/pid/stat"))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Parses utime and stime (fields 14 and 15) from a stat line; the command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last ')'.
fn parse_stat(stat: &str, ticks_per_s: u64) -> Option<CpuTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let to_us = |t: u64| t * 1_000_000 / ticks_per_s;
    Some(CpuTimes {
        user_us: to_us(utime),
        sys_us: to_us(stime),
    })
}

/// Memory of a process from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// Resident set size (VmRSS).
    pub rss: u64,
    /// Anonymous resident memory (RssAnon): heap and stacks, without mapped files.
    pub rss_anon: u64,
}

/// Reads VmRSS and RssAnon of `pid`.
pub fn proc_memory(pid: u32) -> io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_status(&status))
}

fn parse_status(status: &str) -> Memory {
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_ascii_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |v| v * 1024)
    };
    Memory {
        rss: kb("VmRSS:"),
        rss_anon: kb("RssAnon:"),
    }
}

/// Kernel memory held by every TCP socket of the host (`/proc/net/sockstat` TCP `mem`, in
/// pages, times the page size), in bytes: socket buffers no process's RSS shows.
pub fn kernel_tcp_memory() -> io::Result<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat")?;
    let pages = parse_sockstat_tcp_mem(&s)
        .ok_or_else(|| io::Error::other("no TCP mem in /proc/net/sockstat"))?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(1) as u64)
}

/// The `mem` field (pages) of the `TCP:` line of `/proc/net/sockstat`.
fn parse_sockstat_tcp_mem(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_ascii_whitespace();
    it.find(|w| *w == "mem")?;
    it.next()?.parse().ok()
}

/// Bytes the kernel holds in the send and receive queues of every TCP socket whose local port
/// is `port` (`/proc/net/tcp` and `tcp6`): the server's side of its connections, which the
/// host-wide sockstat figure mixes with the generator's and everyone else's. Data bytes, not
/// truesize (the kernel memory behind them is up to ~1.4× on loopback).
/// With `remotes` non-empty, only the connections to those remote ports (for instance the
/// slow clients' sockets).
pub fn port_tcp_queues(port: u16, remotes: &[u16]) -> io::Result<(u64, u64)> {
    let mut total = (0, 0);
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let (tx, rx) = sum_port_queues(&text, port, remotes);
        total = (total.0 + tx, total.1 + rx);
    }
    Ok(total)
}

fn sum_port_queues(text: &str, port: u16, remotes: &[u16]) -> (u64, u64) {
    let port_of = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut total = (0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let (Some(local), Some(remote), Some(queues)) = (f.get(1), f.get(2), f.get(4)) else {
            continue;
        };
        if port_of(local) != Some(port) {
            continue;
        }
        if !remotes.is_empty() && !port_of(remote).is_some_and(|r| remotes.contains(&r)) {
            continue;
        }
        if let Some((tx, rx)) = queues.split_once(':') {
            total.0 += u64::from_str_radix(tx, 16).unwrap_or(0);
            total.1 += u64::from_str_radix(rx, 16).unwrap_or(0);
        }
    }
    total
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain old data.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// A second descriptor for the socket `fd`, owned by the caller. Scenarios shut their receivers'
/// sockets down through such duplicates: a receiver that ended early has closed its own
/// descriptor, and that number may already belong to another socket (a /stats fetch, a stalled
/// client), which a shutdown by the bare number would cut.
pub fn dup_socket(fd: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: the caller passes a descriptor it holds open for the duration of this call; the
    // borrow ends before return and only fcntl(F_DUPFD_CLOEXEC) acts on it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// Shuts a socket down in both directions so a read pending on it (io_uring or epoll) returns
/// end-of-stream: how a scenario stops receivers without a timer on every read.
pub fn shutdown_socket(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) only acts on the descriptor number; a stale number fails with EBADF
    // or ENOTSOCK and touches no memory.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn port_queues_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:1F90 0100007F:C350 01 00000010:00000002 00:00000000 00000000 0 0 1\n\
   1: 0100007F:C350 0100007F:1F90 01 00000100:00000000 00:00000000 00000000 0 0 2\n\
   2: 0100007F:1F90 0100007F:C351 01 00000001:00000000 00:00000000 00000000 0 0 3\n";
        assert_eq!(sum_port_queues(text, 8080, &[]), (17, 2));
        assert_eq!(sum_port_queues(text, 8080, &[0xC351]), (1, 0));
        assert!(port_tcp_queues(1, &[]).is_ok());
    }

    #[test]
    fn sockstat_tcp_mem() {
        let s =
            "sockets: used 292\nTCP: inuse 9 orphan 0 tw 3 alloc 12 mem 41\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem(s), Some(41));
        assert_eq!(parse_sockstat_tcp_mem("UDP: inuse 1 mem 2\n"), None);
        assert!(kernel_tcp_memory().is_ok());
    }

    #[test]
    fn stat_fields_after_command_name() {
        let line = "42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(line, 100),
            Some(CpuTimes {
                user_us: 2_500_000,
                sys_us: 500_000
            })
        );
        assert_eq!(parse_stat("garbage", 100), None);
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tx\nVmRSS:\t  1000 kB\nRssAnon:\t 600 kB\n";
        assert_eq!(
            parse_status(s),
            Memory {
                rss: 1_024_000,
                rss_anon: 614_400
            }
        );
    }

    #[test]
    fn own_process_readings() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let me = self_cpu();
        assert!(me.total_us() > 0);
        let pid = std::process::id();
        assert!(proc_cpu(pid).is_ok());
        assert!(proc_memory(pid).unwrap().rss > 0);
        let soft = raise_nofile_limit().unwrap();
        assert!(soft >= 1);
    }

    #[test]
    fn shutdown_through_a_duplicate_outlives_the_original() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let dup = dup_socket(c.as_raw_fd()).unwrap();
        assert_ne!(dup.as_raw_fd(), c.as_raw_fd());
        drop(c);
        // The socket is still open through `dup`; shutting it down reaches the peer as EOF.
        shutdown_socket(dup.as_raw_fd());
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        assert_eq!(s.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn shutdown_ends_a_blocked_read() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let fd = c.as_raw_fd();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            shutdown_socket(fd);
        });
        let mut b = [0u8; 8];
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(c.read(&mut b).unwrap(), 0);
        t.join().unwrap();
    }
}
