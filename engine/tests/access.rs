//! Access control through the real binary, on raw sockets and tungstenite: implicit trust,
//! tokens with grants (header, query, subprotocol), expiry on a live connection, the Origin
//! allow-list, the inbound rate limits and the per-address limits. Every refusal is checked
//! by status and by its counter in /stats.
mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn refused(s: &Value, reason: &str) -> u64 {
    s["totals"]["access"]["refused"][reason].as_u64().unwrap()
}

fn post_with(server: &Server, topic: &str, headers: &str) -> u16 {
    server.post(topic, "text/plain", b"x", headers)
}

#[test]
fn loopback_is_trusted_only_without_browser_or_proxy_headers() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    // The README tour: plain curl from loopback publishes.
    assert_eq!(post_with(&server, "t", ""), 204);
    // A page in a browser (Origin, Sec-Fetch-*), or anyone behind a same-host proxy, is not.
    for h in [
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Mode: no-cors\r\n",
        "X-Forwarded-For: 203.0.113.9\r\n",
        "Forwarded: for=203.0.113.9\r\n",
        "X-Real-IP: 203.0.113.9\r\n",
        "Via: 1.1 proxy\r\n",
    ] {
        assert_eq!(post_with(&server, "t", h), 403, "{h}");
    }
    let r = server.http(upgrade_request("/pub/t", "Origin: http://evil.example\r\n").as_bytes());
    assert_eq!(status(&r), 403, "{r}");
    let r = server.http(upgrade_request("/room/t", "X-Forwarded-For: 1.2.3.4\r\n").as_bytes());
    assert_eq!(status(&r), 403, "{r}");
    // Subscribing stays open to everyone (no JWT key: every topic is public).
    let r = server.http(upgrade_request("/ws/t", "Origin: http://evil.example\r\n").as_bytes());
    assert_eq!(status(&r), 101, "{r}");
    let s = stats_until(admin, |s| refused(s, "untrusted") == 9);
    assert_eq!(s["totals"]["refused"]["forbidden"], 9);

    // --trust-loopback off: nothing publishes without a credential, plain loopback included.
    let server = Server::start(&["--trust-loopback", "off"]);
    assert_eq!(post_with(&server, "t", ""), 403);
    let r = server.http(upgrade_request("/pub/t", "").as_bytes());
    assert_eq!(status(&r), 403, "{r}");
}

#[test]
fn jwt_grants_decide_subscribe_and_publish_everywhere() {
    let secret = "integration-secret";
    let server = Server::start(&["--jwt-secret", secret, "--public-topics", "pub.*"]);
    let admin = server.admin.unwrap();
    let exp = unix_now() + 3600;
    let reader = hs256(json!({"exp": exp, "subscribe": ["md.*"]}), secret);
    let writer = hs256(
        json!({"exp": exp, "subscribe": ["chat.*"], "publish": ["chat.*"]}),
        secret,
    );
    // Public topics need nothing; everything else needs a token that grants it.
    server.ws("/ws/pub.news");
    let r = server.http(upgrade_request("/ws/md.btc", "").as_bytes());
    assert_eq!(status(&r), 401, "{r}");
    assert!(r.contains("WWW-Authenticate: Bearer"), "{r}");
    let r = server.http(
        upgrade_request("/ws/chat.1", &format!("Authorization: Bearer {reader}\r\n")).as_bytes(),
    );
    assert_eq!(status(&r), 403, "{r}");
    // The token in the header, the query, or the subprotocol (echoing `shardcast`).
    let (mut md, _) = server.ws_with(
        "/ws/md.btc",
        &[("authorization", &format!("Bearer {reader}"))],
    );
    server.ws(&format!("/stream?streams=md.a/pub.b&token={reader}"));
    let r = server.http(
        upgrade_request(
            "/ws/md.eth",
            &format!("Sec-WebSocket-Protocol: shardcast, shardcast.token.{reader}\r\n"),
        )
        .as_bytes(),
    );
    assert_eq!(status(&r), 101, "{r}");
    assert!(r.contains("Sec-WebSocket-Protocol: shardcast\r\n"), "{r}");
    // In-band SUBSCRIBE is checked against the same grants: nothing changes on refusal.
    let r = control(
        &mut md,
        r#"{"method":"SUBSCRIBE","params":["md.eth","secret.x"],"id":1}"#,
    );
    assert_eq!(r["error"]["code"], 6, "{r}");
    let r = control(
        &mut md,
        r#"{"method":"SUBSCRIBE","params":["md.eth","pub.y"],"id":2}"#,
    );
    assert_eq!(r, json!({"result": null, "id": 2}));
    let r = control(&mut md, r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#);
    assert_eq!(r["result"], json!(["md.btc", "md.eth", "pub.y"]));
    // Publishing: the writer's grant, over WebSocket and HTTP; never the reader's.
    let mut chat = server
        .ws_with(
            "/room/chat.1",
            &[("authorization", &format!("Bearer {writer}"))],
        )
        .0;
    sync_room(&mut chat);
    match server.try_ws(&format!("/pub/md.btc?token={writer}"), &[]) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, s)| s)),
    }
    assert_eq!(
        post_with(
            &server,
            "md.btc",
            &format!("Authorization: Bearer {reader}\r\n")
        ),
        403
    );
    assert_eq!(
        post_with(&server, "md.btc", ""),
        401,
        "loopback is not trusted next to a JWT key"
    );
    assert_eq!(
        post_with(
            &server,
            "chat.1",
            &format!("Authorization: Bearer {writer}\r\n")
        ),
        204
    );
    assert_eq!(next_text(&mut chat), "x");
    // Expired and forged tokens.
    let old = hs256(
        json!({"exp": unix_now() - 1, "subscribe": ["md.*"]}),
        secret,
    );
    let r = server.http(upgrade_request(&format!("/ws/md.btc?token={old}"), "").as_bytes());
    assert_eq!(status(&r), 401, "{r}");
    let forged = hs256(json!({"exp": exp, "publish": ["*"]}), "guessed");
    assert_eq!(
        post_with(
            &server,
            "md.btc",
            &format!("Authorization: Bearer {forged}\r\n")
        ),
        401
    );
    let s = stats_until(admin, |s| refused(s, "bad_token") == 1);
    assert_eq!(refused(&s, "no_token"), 2);
    assert_eq!(refused(&s, "not_granted"), 3);
    assert_eq!(refused(&s, "expired_token"), 1);
    assert_eq!(s["totals"]["access"]["subscribe_denied"], 1);
    assert_eq!(s["totals"]["refused"]["unauthorized"], 4);
}

/// A room connection's subscription is registered once its own message comes back.
fn sync_room(room: &mut Ws) {
    room.send(Message::text("x")).unwrap();
    assert_eq!(next_text(room), "x");
}

#[test]
fn token_expiry_closes_a_live_connection_with_1008() {
    let secret = "k";
    // 1 s of grace past exp; the token lives 2 s: the close comes 3 s after connecting.
    let server = Server::start(&["--jwt-secret", secret, "--token-expiry-grace-ms", "1000"]);
    let short = hs256(json!({"exp": unix_now() + 2, "subscribe": ["*"]}), secret);
    let long = hs256(
        json!({"exp": unix_now() + 3600, "subscribe": ["*"]}),
        secret,
    );
    let (mut doomed, _) = server.ws(&format!("/ws/a?token={short}"));
    let (mut lasting, _) = server.ws(&format!("/ws/a?token={long}"));
    assert_eq!(
        close_of(&mut doomed),
        (1008, "token expired".to_owned()),
        "closed by the sweep"
    );
    drop(doomed);
    stats_until(server.admin.unwrap(), |s| {
        s["totals"]["access"]["token_expired_closes"] == 1 && s["totals"]["active_connections"] == 1
    });
    sync(&mut lasting);
}

#[test]
fn origin_allow_list_refuses_upgrades_and_posts_from_other_origins() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://app.example,http://localhost:*",
    ]);
    let ok = |origin: &str| {
        let r = server.http(upgrade_request("/ws/t", &format!("Origin: {origin}\r\n")).as_bytes());
        status(&r)
    };
    assert_eq!(ok("https://app.example"), 101);
    assert_eq!(ok("http://localhost:5173"), 101);
    assert_eq!(ok("https://evil.example"), 403);
    assert_eq!(ok("https://app.example.evil.net"), 403);
    assert_eq!(
        status(&server.http(upgrade_request("/ws/t", "").as_bytes())),
        101,
        "no Origin"
    );
    assert_eq!(
        post_with(&server, "t", "Origin: https://evil.example\r\n"),
        403
    );
    // An allowed origin still is a browser: no implicit trust for publishing.
    assert_eq!(
        post_with(&server, "t", "Origin: https://app.example\r\n"),
        403
    );
    let s = stats_until(server.admin.unwrap(), |s| refused(s, "origin") == 3);
    assert_eq!(refused(&s, "untrusted"), 1);
}

#[test]
fn subscribers_over_5_frames_a_second_are_closed_1008() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    // Within the burst (10): fine, whatever the frames are.
    let (mut polite, _) = server.ws("/ws/t");
    for _ in 0..4 {
        polite.send(Message::Ping(Default::default())).unwrap();
    }
    sync(&mut polite);
    // Pings, pongs and control messages all count: 20 at once is over.
    let (mut rude, _) = server.ws("/ws/t");
    for i in 0..20 {
        let m = match i % 3 {
            0 => Message::Ping(Default::default()),
            1 => Message::Pong(Default::default()),
            _ => Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#),
        };
        if rude.send(m).is_err() {
            break;
        }
    }
    assert_eq!(close_of(&mut rude), (1008, "too many requests".to_owned()));
    stats_until(admin, |s| s["totals"]["access"]["rate_limited_closes"] == 1);
    sync(&mut polite);
}

#[test]
fn publishers_have_their_own_limit() {
    let server = Server::start(&["--publisher-rate", "50", "--publisher-burst", "20"]);
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    let (mut p, _) = server.ws("/pub/t");
    for i in 0..20 {
        p.send(Message::text(format!("m{i}"))).unwrap();
    }
    for i in 0..20 {
        assert_eq!(next_text(&mut sub), format!("m{i}"));
    }
    for i in 0..100 {
        if p.send(Message::text(format!("n{i}"))).is_err() {
            break;
        }
    }
    assert_eq!(close_of(&mut p), (1008, "too many requests".to_owned()));
}

#[test]
fn per_address_attempts_get_429_with_retry_after() {
    let server = Server::start(&[
        "--ip-connect-limit",
        "3",
        "--ip-connect-window-ms",
        "60000",
        "--ip-limit-loopback",
        "on",
    ]);
    let admin = server.admin.unwrap();
    let _held: Vec<Ws> = (0..3).map(|_| server.ws("/ws/t").0).collect();
    let r = server.http(upgrade_request("/ws/t", "").as_bytes());
    assert_eq!(status(&r), 429, "{r}");
    let retry: u64 = r
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // HTTP publishes are connection attempts too.
    assert_eq!(post_with(&server, "t", ""), 429);
    let s = stats_until(admin, |s| refused(s, "ip_attempts") == 2);
    assert_eq!(s["totals"]["refused"]["too_many_requests"], 2);
}

#[test]
fn loopback_is_exempt_from_per_address_limits_by_default() {
    let server = Server::start(&["--ip-connect-limit", "2", "--ip-max-connections", "1"]);
    let held: Vec<Ws> = (0..5).map(|_| server.ws("/ws/t").0).collect();
    assert_eq!(held.len(), 5);
}

#[test]
fn per_address_concurrent_connections() {
    let server = Server::start(&[
        "--ip-max-connections",
        "2",
        "--ip-connect-limit",
        "0",
        "--ip-limit-loopback",
        "on",
    ]);
    let admin = server.admin.unwrap();
    let a = server.ws("/ws/t").0;
    let _b = server.ws("/ws/t").0;
    let r = server.http(upgrade_request("/ws/t", "").as_bytes());
    assert_eq!(status(&r), 429, "{r}");
    assert!(r.contains("Retry-After: 1\r\n"), "{r}");
    // Closing one frees its place (once the server saw the close).
    drop(a);
    stats_until(admin, |s| s["totals"]["active_connections"] == 1);
    server.ws("/ws/t");
    let s = stats(admin);
    assert_eq!(refused(&s, "ip_concurrent"), 1);
}

#[test]
fn oversized_stream_lists_are_refused() {
    let server = Server::start(&["--max-topics-per-connection", "4"]);
    let r = server.http(upgrade_request("/stream?streams=a/b/c/d/e", "").as_bytes());
    assert_eq!(status(&r), 400, "{r}");
    let r = server.http(upgrade_request("/stream?streams=a/b/c/d/a/b", "").as_bytes());
    assert_eq!(status(&r), 101, "duplicates do not count: {r}");
}

/// Raw socket: a refused request is answered, then the server closes.
#[test]
fn refusals_close_the_connection() {
    let server = Server::start(&["--jwt-secret", "k"]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(upgrade_request("/ws/private", "").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut tcp, &mut out);
    assert_eq!(status(&out), 401, "{out}");
    assert!(out.contains("Connection: close"));
}

#[test]
fn cors_preflight_for_publish_follows_the_allow_list() {
    let token = "cors-token";
    let server = Server::start(&[
        "--publish-token",
        token,
        "--allowed-origins",
        "https://app.example",
    ]);
    let preflight = |server: &Server, origin: &str| {
        server.http(
            format!(
                "OPTIONS /publish/t HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: authorization,content-type\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let ok = preflight(&server, "https://app.example");
    assert_eq!(status(&ok), 204, "{ok}");
    for header in [
        "Access-Control-Allow-Origin: https://app.example\r\n",
        "Access-Control-Allow-Methods: POST\r\n",
        "Access-Control-Allow-Headers: authorization, content-type\r\n",
        "Access-Control-Max-Age: 600\r\n",
        "Vary: Origin\r\n",
    ] {
        assert!(ok.contains(header), "{header:?} in {ok}");
    }
    let no = preflight(&server, "https://evil.example");
    assert_eq!(status(&no), 403, "{no}");
    assert!(!no.contains("Access-Control-Allow-Origin"), "{no}");
    // Not CORS without Origin: the methods the route takes.
    let plain = server.http(b"OPTIONS /publish/t HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&plain), 204, "{plain}");
    assert!(plain.contains("Allow: POST, OPTIONS\r\n"), "{plain}");
    // The publish itself from the listed origin: checked as always, and readable by the page.
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    let body = b"\"from-page\"";
    let mut req = format!(
        "POST /publish/t HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let r = server.http(&req);
    assert_eq!(status(&r), 204, "{r}");
    assert!(
        r.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{r}"
    );
    assert_eq!(next_text(&mut sub), "\"from-page\"");
    stats_until(server.admin.unwrap(), |s| refused(s, "origin") == 1);
    // Without an allow-list cross-origin publishing is never granted.
    let open = Server::start(&["--publish-token", token]);
    let r = preflight(&open, "https://app.example");
    assert_eq!(status(&r), 403, "{r}");
}

#[test]
fn ipv6_loopback_end_to_end() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("\n\n!!! SKIPPED ipv6_loopback_end_to_end: no IPv6 loopback here !!!\n");
        return;
    }
    let server = Server::start(&[
        "--listen",
        "[::1]:0",
        "--ip-connect-limit",
        "4",
        "--ip-limit-loopback",
        "on",
    ]);
    assert!(server.addr.is_ipv6(), "{}", server.addr);
    let (mut sub, _) = server.ws("/ws/t");
    sync(&mut sub);
    // ::1 is loopback: a plain request is trusted as from 127.0.0.1 (the README tour) ...
    assert_eq!(post_with(&server, "t", ""), 204);
    assert_eq!(next_text(&mut sub), "x");
    // ... but not with a forwarding header (a same-host proxy).
    assert_eq!(
        post_with(&server, "t", "X-Forwarded-For: 203.0.113.9\r\n"),
        403
    );
    // The per-address limits key ::1 by its /64: the 5th attempt is refused.
    let (mut other, _) = server.ws("/ws/t");
    sync(&mut other);
    let r = server.http(upgrade_request("/ws/t", "").as_bytes());
    assert_eq!(status(&r), 429, "{r}");
    assert!(r.contains("Retry-After: "), "{r}");
    let s = stats_until(server.admin.unwrap(), |s| refused(s, "ip_attempts") == 1);
    assert_eq!(refused(&s, "untrusted"), 1);
}
