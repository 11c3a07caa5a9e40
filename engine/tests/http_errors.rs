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
