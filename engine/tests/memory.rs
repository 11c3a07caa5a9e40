//! User-space bytes per idle subscriber connection, measured as the server's RSS growth over
//! 5,000 idle `/ws` subscribers on one shard.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::hostile::rss;
use common::*;

fn open(server: &Server, n: usize) -> Vec<TcpStream> {
    let req = b"GET /ws/idle HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(req).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).unwrap();
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101"));
            s
        })
        .collect()
}

#[test]
fn idle_subscriber_bytes() {
    const N: usize = 5000;
    // Both ends of every connection live in this test process plus the server.
    shardcast::rlimit::raise_nofile().unwrap();
    let server = Server::start(&["--shards", "1"]);
    // Warm up and keep open: the first connections allocate the shard's slab, table, scratch
    // and runtime pools. Nothing is closed, so the measurement is not skewed by reuse of freed
    // memory.
    let warm = open(&server, 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = rss(server.pid());
    let conns = open(&server, N);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = rss(server.pid());
    let per_conn = after.saturating_sub(before) as f64 / N as f64;
    println!("idle subscriber: {per_conn:.0} bytes/connection (RSS {before} -> {after})");
    assert!(per_conn < 4096.0, "{per_conn} bytes per idle connection");
    drop((warm, conns));
}
