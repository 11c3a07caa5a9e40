//! The systemd unit's system call filter (`SystemCallFilter=` in sysctl/shardcast.service)
//! allows every system call the server makes: the server runs under `strace -f` through a
//! start, traffic of every kind (subscribers on both shards, publishers, an HTTP publish,
//! refusals, every admin endpoint, histogram logs, the NATS bridge retrying), and a graceful
//! shutdown, on both drivers (io_uring, where the kernel allows it: the run must then have set up
//! its rings, `io_uring_setup`/`io_uring_register`/`io_uring_enter`; and epoll, with io_uring
//! refused by `SHARDCAST_URING_REFUSE` as a seccomp profile would); each system call it made must
//! be in the filter's allow list as `systemd-analyze syscall-filter` expands it. A call outside
//! it would kill the service (SystemCallErrorNumber=EPERM makes it fail instead, which is no
//! better). Only system calls are filtered: what io_uring runs from its SQEs (accept, receive,
//! send) never passes seccomp.
//! Needs strace and systemd-analyze (scripts/test.sh installs them); fails without them.
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sysctl/shardcast.service");
    std::fs::read_to_string(path).unwrap()
}

/// `systemd-analyze syscall-filter GROUP`, with nested groups expanded.
fn expand(group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("systemd-analyze (Debian: apt-get install systemd; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    let mut calls = BTreeSet::new();
    for line in String::from_utf8(out.stdout).unwrap().lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            if seen.insert(name.to_owned()) {
                calls.extend(expand(name, seen));
            }
        } else {
            calls.insert(name.to_owned());
        }
    }
    calls
}

/// The calls the unit's `SystemCallFilter=` lines allow: allow-list lines add, `~` lines
/// remove.
fn allowed_by_unit() -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut any = false;
    for line in unit().lines() {
        let Some(value) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        any = true;
        let (deny, groups) = match value.strip_prefix('~') {
            Some(g) => (true, g),
            None => (false, value),
        };
        for g in groups.split_whitespace() {
            let calls = if g.starts_with('@') {
                expand(g, &mut BTreeSet::new())
            } else {
                BTreeSet::from([g.to_owned()])
            };
            if deny {
                allowed.retain(|c| !calls.contains(c));
            } else {
                allowed.extend(calls);
            }
        }
    }
    assert!(any, "the unit has no SystemCallFilter");
    allowed
}

/// Kills the traced server if the test fails before it exits (strace detaches when killed).
struct Tracee(i32);

impl Drop for Tracee {
    fn drop(&mut self) {
        // SAFETY: a signal to the server process this test started (ESRCH once it exited).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The system calls the server makes with `refuse_uring` (or with io_uring allowed), from
/// `strace -f -c`, and the driver its shards ran on.
fn traced_calls(refuse_uring: bool) -> (BTreeSet<String>, String) {
    let dir = std::env::temp_dir().join(format!(
        "shardcast-sandbox-{}-{}",
        std::process::id(),
        refuse_uring
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let summary = dir.join("strace.txt");
    let hlog = dir.join("hlog");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nats = format!("nats://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-c", "-o"])
        .arg(&summary)
        .arg("--")
        .arg(bin())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--shards", "2", "--log", "debug", "--log-format", "json"])
        .args(["--nats-url", &nats, "--nats-reconnect-max-ms", "50"])
        .arg("--histogram-log")
        .arg(&hlog)
        .args(["--histogram-log-interval-ms", "100"])
        // The suite's second pass refuses io_uring for the whole process tree: set it per run.
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
        .env_remove("SHARDCAST_URING_REFUSE")
        .stderr(Stdio::null());
    if refuse_uring {
        cmd.env("SHARDCAST_URING_REFUSE", "1");
    }
    let mut server = Server::spawn(cmd);
    let strace_pid = server.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
            .expect("strace's child");
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let guard = Tracee(pid);
    let adm = server.admin.unwrap();
    let driver = stats(adm)["shards"][0]["driver"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut subs, mut publisher) = fan_out(&server, 4, 3, 1);
    publisher
        .send(tungstenite::Message::binary(vec![1u8; 100_000]))
        .unwrap();
    for s in &mut subs {
        assert!(matches!(next(s), tungstenite::Message::Binary(_)));
    }
    assert_eq!(server.post("t", "text/plain", b"x", ""), 204);
    assert_eq!(status(&server.http(b"GET /nowhere HTTP/1.1\r\n\r\n")), 404);
    for path in [
        "/health",
        "/stats",
        "/metrics",
        "/dashboard",
        "/histograms?shard=0&kind=broadcast",
    ] {
        assert_eq!(admin(adm, "GET", path).0, 200, "{path}");
    }
    // A histogram log interval written, and the bridge through a few failed attempts.
    stats_until(adm, |s| s["bridge"]["connect_failures"].as_u64() >= Some(3));
    let end = deadline();
    while std::fs::read_dir(&hlog).map_or(0, |d| d.count()) == 0 {
        assert!(std::time::Instant::now() < end, "no histogram log written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop((subs, publisher));
    // SAFETY: a signal to the server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let end = deadline();
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < end,
            "traced server did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "the traced server exited with {status}");
    drop(guard);
    let text = std::fs::read_to_string(&summary).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The summary table: "% time seconds usecs/call calls [errors] syscall", then a total.
    let calls = text
        .lines()
        .skip_while(|l| !l.starts_with("------"))
        .skip(1)
        .take_while(|l| !l.starts_with("------"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (calls, driver)
}

fn require_strace() {
    let out = Command::new("strace").arg("-V").output();
    assert!(
        out.is_ok_and(|o| o.status.success()),
        "strace is missing (Debian: apt-get install strace; scripts/test.sh does)"
    );
}

#[test]
fn every_system_call_the_server_makes_passes_the_units_filter() {
    require_strace();
    let allowed = allowed_by_unit();
    assert!(allowed.contains("io_uring_enter") && !allowed.contains("setuid"));
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "eventfd2",
    ] {
        assert!(allowed.contains(call), "{call}");
    }
    let (mut made, driver) = traced_calls(false);
    assert!(made.len() > 20, "{made:?}");
    // Where the kernel refuses io_uring the first run fell back to epoll (driver.rs covers it).
    if driver == "io_uring" {
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(made.contains(call), "io_uring run without {call}: {made:?}");
        }
    }
    let (epoll, driver) = traced_calls(true);
    assert_eq!(driver, "epoll");
    assert!(
        epoll.contains("epoll_wait") || epoll.contains("epoll_pwait"),
        "{epoll:?}"
    );
    assert!(!epoll.contains("io_uring_enter"), "{epoll:?}");
    made.extend(epoll);
    let refused: Vec<_> = made.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls the unit's filter refuses: {refused:?}"
    );
}
