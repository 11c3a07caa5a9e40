//! Driver selection through the real binary: io_uring refused the way Docker's default seccomp
//! profile refuses it (`io_uring_setup` failing with EPERM, forced by `SHARDCAST_URING_REFUSE`),
//! `--driver auto` falls back to epoll and serves (`--driver uring` failing start-up is
//! `shutdown.rs`'s test, through the alias); and where the kernel allows io_uring, `auto` runs on
//! it.
mod common;

use common::*;
use tungstenite::Message;

/// Start with `--driver CHOICE`, `env` set and the variables that refuse io_uring cleared
/// otherwise (the suite's second pass sets one for the whole process tree).
fn start(choice: &str, env: &[(&'static str, &'static str)]) -> Server {
    let mut all = vec![
        ("SHARDCAST_URING_REFUSE", ""),
        ("MONOIO_FORCE_LEGACY_DRIVER", ""),
    ];
    for e in env {
        all.retain(|(k, _)| *k != e.0);
        all.push(*e);
    }
    Server::start_with_env(&["--driver", choice], &all)
}

fn drivers(server: &Server) -> Vec<String> {
    let s = stats(server.admin.unwrap());
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh["driver"].as_str().unwrap().to_owned())
        .collect()
}

fn echo_works(server: &Server) {
    let (mut ws, _) = server.ws("/echo");
    ws.send(Message::text("still serving")).unwrap();
    assert_eq!(next_text(&mut ws), "still serving");
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    for value in ["1", "enosys"] {
        let server = start("auto", &[("SHARDCAST_URING_REFUSE", value)]);
        assert_eq!(drivers(&server), ["epoll", "epoll"], "{value}");
        echo_works(&server);
    }
}

/// Where io_uring works (this kernel and sandbox allow it), `auto` uses it and `epoll` is
/// honoured; where it does not, `auto` must have fallen back (the test above covers it).
#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let server = start("auto", &[]);
    let got = drivers(&server);
    // On a thread of its own: tearing a ring down queues task work that can interrupt the next
    // blocking socket call of the same thread (EINTR with SO_RCVTIMEO), i.e. this test's client.
    let usable = std::thread::spawn(|| shardcast::runtime::uring::probe_kernel().is_ok())
        .join()
        .unwrap();
    let want = if usable { "io_uring" } else { "epoll" };
    assert_eq!(got, [want, want]);
    echo_works(&server);
    let server = start("epoll", &[]);
    assert_eq!(drivers(&server), ["epoll", "epoll"]);
    echo_works(&server);
}
