//! Refused requests and publish authorization, over raw TCP and tungstenite.
mod common;

use common::*;

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn malformed_upgrades_get_the_right_status() {
    let server = Server::start(&["--handshake-timeout-ms", "300"]);
    let ok = server.http(upgrade("/ws/t", KEY).as_bytes());
    assert_eq!(status(&ok), 101, "{ok}");
    assert!(ok.contains("X-Shardcast-Shard: "), "{ok}");
    assert_eq!(
        status(&server.http(upgrade("/ws/t", "").as_bytes())),
        400,
        "missing key"
    );
    let v12 = upgrade("/ws/t", KEY).replace("Version: 13", "Version: 12");
    let r = server.http(v12.as_bytes());
    assert_eq!(status(&r), 426, "{r}");
    assert!(r.contains("Sec-WebSocket-Version: 13"));
    assert_eq!(
        status(&server.http(upgrade("/nowhere", KEY).as_bytes())),
        404
    );
    assert_eq!(
        status(&server.http(upgrade("/ws/bad%20topic", KEY).as_bytes())),
        400
    );
    assert_eq!(status(&server.http(b"GARBAGE\r\n\r\n")), 400);
    let big = upgrade("/ws/t", &format!("{KEY}X-Big: {}\r\n", "y".repeat(9000)));
    assert_eq!(status(&server.http(big.as_bytes())), 431);
    // Slowloris: an incomplete head is answered with 408 after the handshake timeout.
    let start = std::time::Instant::now();
    let r = server.http(b"GET /ws/t HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(status(&r), 408, "{r}");
    assert!(start.elapsed() < TIMEOUT);
}

#[test]
fn publish_needs_the_token_when_one_is_configured() {
    let server = Server::start(&["--publish-token", "s3cret"]);
    assert_eq!(server.post("t", "text/plain", b"x", ""), 401);
    assert_eq!(
        server.post("t", "text/plain", b"x", "Authorization: Bearer wrong\r\n"),
        403
    );
    assert_eq!(
        server.post("t", "text/plain", b"x", "Authorization: Basic abc\r\n"),
        401
    );
    assert_eq!(
        server.post("t", "text/plain", b"x", "Authorization: Bearer s3cret\r\n"),
        204
    );
    assert_eq!(status(&server.http(upgrade("/pub/t", KEY).as_bytes())), 401);
    let wrong = upgrade("/pub/t", &format!("{KEY}Authorization: Bearer nope\r\n"));
    assert_eq!(status(&server.http(wrong.as_bytes())), 403);
    assert_eq!(
        status(&server.http(upgrade("/pub/t?token=nope", KEY).as_bytes())),
        403
    );
    assert_eq!(
        status(&server.http(upgrade("/room/t", KEY).as_bytes())),
        401
    );
    // Subscribing needs no token.
    assert_eq!(status(&server.http(upgrade("/ws/t", KEY).as_bytes())), 101);
    // Correct tokens work through a real client, in the header and in the query.
    server.ws_with("/pub/t", &[("authorization", "Bearer s3cret")]);
    server.ws("/pub/t?token=s3cret");
    match server.try_ws("/pub/t", &[]) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, s)| s)),
    }
}

#[test]
fn over_max_connections_gets_503() {
    let server = Server::start(&["--max-connections", "2", "--max-connections-per-shard", "2"]);
    let a = server.ws("/ws/t");
    let b = server.ws("/ws/t");
    let r = server.http(upgrade("/ws/t", KEY).as_bytes());
    assert_eq!(status(&r), 503, "{r}");
    drop((a, b));
}

#[test]
fn each_refusal_status_is_counted_under_its_own_reason() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    let post_ws = upgrade("/ws/t", KEY).replacen("GET", "POST", 1);
    assert_eq!(status(&server.http(post_ws.as_bytes())), 405);
    let v12 = upgrade("/ws/t", KEY).replace("Version: 13", "Version: 12");
    assert_eq!(status(&server.http(v12.as_bytes())), 426);
    let big = upgrade("/ws/t", &format!("{KEY}X-Big: {}\r\n", "y".repeat(9000)));
    assert_eq!(status(&server.http(big.as_bytes())), 431);
    let chunked = b"POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status(&server.http(chunked)), 501);
    assert_eq!(status(&server.http(upgrade("/ws/t", "").as_bytes())), 400);
    let want = [
        ("method_not_allowed", 1),
        ("upgrade_required", 1),
        ("headers_too_large", 1),
        ("not_implemented", 1),
        ("bad_request", 1),
    ];
    let s = stats_until(admin, |s| {
        want.iter().all(|(r, n)| s["totals"]["refused"][r] == *n)
    });
    // /metrics has the same breakdown.
    let (_, metrics) = common::admin(admin, "GET", "/metrics");
    for (reason, _) in want {
        let series =
            format!("shardcast_connections_refused_total{{shard=\"0\",reason=\"{reason}\"}}");
        assert!(metrics.contains(&series), "{series} missing");
    }
    assert_eq!(s["totals"]["refused"]["max_connections"], 0);
}

/// Connect `/ws/t` clients, keeping only those on shard 0 (the others are closed, and their
/// close awaited in /stats, so they never count against the limit), until `n` are kept.
fn all_on_shard_0(server: &Server, n: usize) -> Vec<Ws> {
    let admin = server.admin.unwrap();
    let mut kept = Vec::new();
    for _ in 0..500 {
        if kept.len() == n {
            return kept;
        }
        let (ws, shard) = server.ws("/ws/t");
        if shard == 0 {
            kept.push(ws);
        } else {
            drop(ws);
            let k = kept.len() as u64;
            stats_until(admin, |s| s["totals"]["active_connections"] == k);
        }
    }
    panic!("never got {n} connections on shard 0");
}

#[test]
fn max_connections_is_global_whatever_the_shard() {
    // Two shards, a limit of 3: all three on one shard are admitted (a per-shard share of
    // 3 / 2 would refuse the third), the fourth anywhere is refused.
    let server = Server::start(&["--max-connections", "3"]);
    let admin = server.admin.unwrap();
    let held = all_on_shard_0(&server, 3);
    let r = server.http(upgrade("/ws/t", KEY).as_bytes());
    assert_eq!(status(&r), 503, "{r}");
    stats_until(admin, |s| s["totals"]["refused"]["max_connections"] == 1);
    drop(held);
    stats_until(admin, |s| s["totals"]["active_connections"] == 0);
    // An explicit per-shard limit still applies on top.
    let server = Server::start(&[
        "--max-connections",
        "10",
        "--max-connections-per-shard",
        "1",
    ]);
    let _one = all_on_shard_0(&server, 1);
    let admin = server.admin.unwrap();
    for _ in 0..500 {
        let r = server.http(upgrade("/ws/t", KEY).as_bytes());
        if status(&r) == 503 {
            // Far below the global 10: a per-shard refusal — on shard 0, or on shard 1 while an
            // earlier upgrade there was still closing.
            stats_until(admin, |s| s["totals"]["refused"]["max_connections"] == 1);
            return;
        }
    }
    panic!("the per-shard limit never refused");
}
