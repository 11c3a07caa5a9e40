//! Start-up refuses to share a port silently: a second instance on a data port another process
//! listens on exits with the address in its message (SO_REUSEPORT alone would let it start and
//! take a share of new connections), unless `--reuse-port-handover` asks for exactly that; an
//! admin port in use is named too.
mod common;

use common::*;

#[test]
fn a_second_instance_on_the_same_port_refuses_to_start() {
    let first = Server::start(&[]);
    let addr = first.addr.to_string();
    let second = run_to_exit(
        &[
            "--listen",
            &addr,
            "--admin-listen",
            "127.0.0.1:0",
            "--shards",
            "2",
        ],
        &[],
    );
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stdout.is_empty(),
        "must not claim to listen: {}",
        second.stdout
    );
    assert!(
        second.stderr.contains(&format!(
            "cannot listen on {addr}: another process already listens on it"
        )),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("--reuse-port-handover"),
        "{}",
        second.stderr
    );
    // The first instance still serves every new connection.
    for _ in 0..20 {
        first.ws("/ws/t");
    }
}

#[test]
fn handover_joins_the_port_on_purpose() {
    let first = Server::start(&[]);
    let addr = first.addr.to_string();
    let second = Server::start(&["--listen", &addr, "--reuse-port-handover"]);
    assert_eq!(second.addr, first.addr);
    // Both take connections now: poll until each has accepted one (the kernel hashes the
    // 4-tuple, so a few dozen connections reach both with near certainty, bounded here).
    let (a, b) = (first.admin.unwrap(), second.admin.unwrap());
    let accepted = |admin| stats(admin)["totals"]["accepted"].as_u64().unwrap();
    let end = deadline();
    while accepted(a) == 0 || accepted(b) == 0 {
        assert!(
            std::time::Instant::now() < end,
            "one instance never accepted"
        );
        first.ws("/ws/t");
    }
    // A plain listener that never set SO_REUSEPORT cannot be joined even with the flag.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap().to_string();
    let refused = run_to_exit(
        &[
            "--listen",
            &plain_addr,
            "--admin-listen",
            "off",
            "--reuse-port-handover",
        ],
        &[],
    );
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains(&plain_addr), "{}", refused.stderr);
}

#[test]
fn an_admin_port_in_use_is_named() {
    let first = Server::start(&[]);
    let admin = first.admin.unwrap().to_string();
    let second = run_to_exit(&["--listen", "127.0.0.1:0", "--admin-listen", &admin], &[]);
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("cannot bind the admin listener {admin}")),
        "{}",
        second.stderr
    );
}
