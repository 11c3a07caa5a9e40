//! The attack suite: hostile clients against the real binary on a loopback port, each test
//! asserting that the server stays within its stated memory bound (RSS ≤ base + ceiling +
//! connections × allowance + slack), that well-behaved subscribers lose nothing and are never
//! late by 100 ms, that every socket the server gives up on is released within 2 s, and that
//! the counters say what happened. CI runs it under both drivers (the default, then with
//! `MONOIO_FORCE_LEGACY_DRIVER=1`).
mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::hostile::*;
use common::*;

/// One attack at a time: the good subscribers' 100 ms bound assumes the machine is not also
/// running another attack.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Good subscribers are never later than this.
const STALL: Duration = Duration::from_millis(100);

/// How long the server may take to release a socket it gave up on.
const RELEASE: Duration = Duration::from_secs(2);

/// RSS slack of a debug build: allocator and runtime pools, thread stacks touched.
const SLACK: u64 = 16 << 20;

/// Memory limit the attacks run with: a 3.2 MiB ceiling (5%).
const MEMORY_LIMIT: u64 = 64 << 20;

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Subscribers that never read (4 KiB receive buffers) are evicted with 1013; the close cannot
/// flush, so each is reset within close_flush_timeout: the server's end of every socket is gone
/// within 2 s, `active_connections` drops, `aborts.close_timeout` counts them, and the good
/// subscribers on the same topic get every message on time.
#[test]
fn never_reading_subscribers_are_released_within_two_seconds() {
    let _serial = serial();
    const SLOW: usize = 8;
    const N: u64 = 400;
    let server = Server::start(&["--memory-limit", &MEMORY_LIMIT.to_string()]);
    let admin = server.admin.unwrap();
    let base = rss(server.pid());
    let good = GoodSubscribers::start(&server, "/ws/t", 10, N as usize);
    let slow: Vec<_> = (0..SLOW)
        .map(|_| raw_subscriber(server.addr, "/ws/t").0)
        .collect();
    let ports: Vec<u16> = slow.iter().map(port_of).collect();
    // 16 KiB at 200/s: each slow client crosses the 1 MiB mark (plus its kernel buffers)
    // within a few hundred ms.
    let publisher = publish_paced(&server, "t", N, 16 * 1024, Duration::from_millis(5));
    let s = stats_until(admin, |s| {
        u(&s["totals"]["evictions"]["high_water"]) == SLOW as u64
    });
    assert_eq!(u(&s["totals"]["evictions"]["ceiling"]), 0, "{s:#}");
    let took = wait_server_ends_gone(server.addr.port(), &ports, RELEASE);
    eprintln!("slow sockets released {took:?} after the last eviction was seen");
    let _publisher = publisher.join().unwrap();
    let _good = good.assert_all(N, STALL);
    // 10 good subscribers and the publisher are left.
    let s = stats_until(admin, |s| u(&s["totals"]["active_connections"]) == 11);
    assert_eq!(
        u(&s["totals"]["aborts"]["close_timeout"]),
        SLOW as u64,
        "{s:#}"
    );
    assert_rss_within(
        server.pid(),
        base,
        MEMORY_LIMIT / 20,
        11 + SLOW as u64,
        SLACK,
    );
    drop(slow);
}
