//! The request head, decided: a WebSocket upgrade with its route, an HTTP publish waiting for
//! its body, or a refusal with its status and counter. Pure: the shard supplies the one piece of
//! its state that matters (whether publishing to a topic is stopped by back-pressure) and
//! applies the decision.
//!
//! Order of checks (each refusal answers and counts): routing (404/400/405), then for
//! `POST /publish/<topic>` authorization (401/403), back-pressure (503 + `Retry-After`),
//! `Content-Length` (400 when missing or invalid) and its limit (413); for an upgrade its
//! validation (400/405/426), then authorization of publishing routes.

use std::net::IpAddr;

use shardcast_proto::handshake::{validate_upgrade, write_rejection, write_switching_protocols};
use shardcast_proto::http::{write_response, HttpError, Request, Status};

use crate::config::Config;
use crate::conn::route::{self, authorize_publish, AuthError, Route};
use crate::obs::stats::Refusal;

/// What to do with a complete request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this response (counted under this reason) and close.
    Refuse(Refusal, Vec<u8>),
    /// HTTP publish: read `length` body bytes after the head, then [`finish_publish`].
    Publish {
        /// The topic.
        topic: String,
        /// Text (`text/*` or `application/json`) rather than binary.
        text: bool,
        /// The body length.
        length: usize,
    },
    /// Write this `101` and serve `route` as a WebSocket.
    Upgrade(Route, Vec<u8>),
}

/// Why publishing to a topic is stopped right now, if it is: the refusal and the 503 body.
pub type Stopped = Option<(Refusal, &'static [u8])>;

/// Decide a complete request head from `peer` on shard `shard`. `stopped(topic)` says whether
/// back-pressure stops publishing to `topic` now.
pub fn decide(
    request: &Request<'_>,
    peer: IpAddr,
    cfg: &Config,
    shard: usize,
    stopped: impl Fn(&str) -> Stopped,
) -> Decision {
    let route = match route::route(request.method(), request.path(), request.query()) {
        Ok(r) => r,
        Err(e) => {
            let status = status_of(e.status);
            let mut out = Vec::new();
            write_response(
                &mut out,
                status,
                &[],
                "text/plain; charset=utf-8",
                e.reason.as_bytes(),
            );
            return Decision::Refuse(refusal_of(status), out);
        }
    };
    if let Route::HttpPublish(topic) = route {
        if let Err(e) = authorize_publish(
            cfg.publish_token.as_deref(),
            request.header("authorization"),
            request.query_param("token"),
            peer,
        ) {
            return refuse(auth_refusal(e), auth_error(e));
        }
        if let Some(r) = back_pressure(stopped(&topic)) {
            return r;
        }
        let length = match request.content_length() {
            Ok(Some(n)) => n,
            Ok(None) => {
                return refuse(
                    Refusal::BadRequest,
                    HttpError::new(Status::BadRequest, "Content-Length required"),
                )
            }
            Err(e) => return refuse(Refusal::BadRequest, e),
        };
        if length > cfg.max_message_bytes as u64 {
            return refuse(
                Refusal::TooLarge,
                HttpError::new(Status::PayloadTooLarge, "body over max_message_bytes"),
            );
        }
        let content_type = request
            .header("content-type")
            .unwrap_or(b"")
            .to_ascii_lowercase();
        let text =
            content_type.starts_with(b"text/") || content_type.starts_with(b"application/json");
        return Decision::Publish {
            topic,
            text,
            length: length as usize,
        };
    }
    let upgrade = match validate_upgrade(request) {
        Ok(u) => u,
        Err(e) => return refuse(Refusal::BadRequest, e),
    };
    if route.publishes() {
        if let Err(e) = authorize_publish(
            cfg.publish_token.as_deref(),
            upgrade.authorization(),
            request.query_param("token"),
            peer,
        ) {
            return refuse(auth_refusal(e), auth_error(e));
        }
    }
    let mut out = Vec::new();
    let shard = shard.to_string();
    write_switching_protocols(
        &mut out,
        &upgrade.accept_key(),
        None,
        &[("X-Shardcast-Shard", &shard)],
    );
    Decision::Upgrade(route, out)
}

/// The body of an HTTP publish has arrived: its message kind, or the refusal (text that is not
/// UTF-8). `stopped` is asked again: other requests may have filled the backlog meanwhile.
pub fn finish_publish(
    text: bool,
    body: &[u8],
    stopped: Stopped,
) -> Result<shardcast_proto::MessageKind, Decision> {
    if text && std::str::from_utf8(body).is_err() {
        return Err(refuse(
            Refusal::BadRequest,
            HttpError::new(Status::BadRequest, "text body is not UTF-8"),
        ));
    }
    if let Some(r) = back_pressure(stopped) {
        return Err(r);
    }
    Ok(if text {
        shardcast_proto::MessageKind::Text
    } else {
        shardcast_proto::MessageKind::Binary
    })
}

/// The answer to an accepted HTTP publish.
pub fn published() -> Vec<u8> {
    let mut out = Vec::new();
    write_response(&mut out, Status::NoContent, &[], "", b"");
    out
}

/// The answer to a request that did not complete within `handshake_timeout_ms`.
pub fn timed_out() -> Vec<u8> {
    let mut out = Vec::new();
    write_rejection(
        &mut out,
        &HttpError::new(Status::RequestTimeout, "handshake timeout"),
    );
    out
}

/// A request whose parameters are wrong, with a reason made from them (400).
pub fn bad_request(reason: &str) -> Decision {
    let mut out = Vec::new();
    write_response(
        &mut out,
        Status::BadRequest,
        &[],
        "text/plain; charset=utf-8",
        reason.as_bytes(),
    );
    Decision::Refuse(Refusal::BadRequest, out)
}

/// A malformed or over-limit request head.
pub fn malformed(e: HttpError) -> Decision {
    refuse(Refusal::BadRequest, e)
}

fn back_pressure(stopped: Stopped) -> Option<Decision> {
    let (why, body) = stopped?;
    let mut out = Vec::new();
    write_response(
        &mut out,
        Status::ServiceUnavailable,
        &[("Retry-After", "1")],
        "text/plain; charset=utf-8",
        body,
    );
    Some(Decision::Refuse(why, out))
}

fn refuse(why: Refusal, err: HttpError) -> Decision {
    let mut out = Vec::new();
    write_rejection(&mut out, &err);
    Decision::Refuse(why, out)
}

fn status_of(code: u16) -> Status {
    match code {
        401 => Status::Unauthorized,
        403 => Status::Forbidden,
        404 => Status::NotFound,
        405 => Status::MethodNotAllowed,
        413 => Status::PayloadTooLarge,
        _ => Status::BadRequest,
    }
}

fn refusal_of(status: Status) -> Refusal {
    match status {
        Status::NotFound => Refusal::NotFound,
        Status::Unauthorized => Refusal::Unauthorized,
        Status::Forbidden => Refusal::Forbidden,
        Status::PayloadTooLarge => Refusal::TooLarge,
        _ => Refusal::BadRequest,
    }
}

fn auth_refusal(e: AuthError) -> Refusal {
    match e {
        AuthError::Unauthorized => Refusal::Unauthorized,
        AuthError::Forbidden => Refusal::Forbidden,
    }
}

fn auth_error(e: AuthError) -> HttpError {
    match e {
        AuthError::Unauthorized => HttpError::new(Status::Unauthorized, "publishing needs a token"),
        AuthError::Forbidden => HttpError::new(Status::Forbidden, "publishing not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_proto::http::{Parse, RequestParser};

    fn decide_on(raw: &str, peer: &str, stopped: Stopped) -> Decision {
        let cfg = crate::config::Overrides {
            publish_token: None,
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let mut p = RequestParser::default();
        let Ok(Parse::Complete { request, .. }) = p.parse(raw.as_bytes()) else {
            panic!("complete head expected")
        };
        decide(&request, peer.parse().unwrap(), &cfg, 3, |_| stopped)
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn status(d: &Decision) -> (Refusal, u16) {
        let Decision::Refuse(why, out) = d else {
            panic!("{d:?}")
        };
        (
            *why,
            std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap(),
        )
    }

    #[test]
    fn upgrades_carry_the_shard_and_route() {
        let d = decide_on(
            &format!("GET /ws/t HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n"),
            "10.0.0.1",
            None,
        );
        let Decision::Upgrade(route, out) = d else {
            panic!("{d:?}")
        };
        assert_eq!(route, Route::Subscribe("t".into()));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("X-Shardcast-Shard: 3\r\n"), "{text}");
    }

    #[test]
    fn refusals_in_order_with_their_counters() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
        assert_eq!(
            status(&decide_on(&get("/nope"), "127.0.0.1", None)),
            (Refusal::NotFound, 404)
        );
        assert_eq!(
            status(&decide_on(&get("/ws/a%20"), "127.0.0.1", None)),
            (Refusal::BadRequest, 400)
        );
        assert_eq!(
            status(&decide_on(&get("/pub/t"), "10.0.0.1", None)),
            (Refusal::Forbidden, 403),
            "no token configured: only loopback publishes"
        );
        let plain = "GET /ws/t HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            status(&decide_on(plain, "127.0.0.1", None)).0,
            Refusal::BadRequest
        );
        let post = |extra: &str| format!("POST /publish/t HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let paused = Some((Refusal::Paused, &b"paused"[..]));
        assert_eq!(
            status(&decide_on(
                &post("Content-Length: 1\r\n"),
                "127.0.0.1",
                paused
            )),
            (Refusal::Paused, 503)
        );
        assert_eq!(
            status(&decide_on(&post(""), "127.0.0.1", None)),
            (Refusal::BadRequest, 400)
        );
        assert_eq!(
            status(&decide_on(
                &post("Content-Length: 99999999\r\n"),
                "127.0.0.1",
                None
            )),
            (Refusal::TooLarge, 413)
        );
        assert_eq!(
            decide_on(
                &post("Content-Length: 5\r\nContent-Type: application/json\r\n"),
                "::1",
                None
            ),
            Decision::Publish {
                topic: "t".into(),
                text: true,
                length: 5
            }
        );
    }

    #[test]
    fn publish_bodies() {
        assert_eq!(
            finish_publish(true, "é".as_bytes(), None),
            Ok(shardcast_proto::MessageKind::Text)
        );
        assert_eq!(
            finish_publish(false, &[0xff], None),
            Ok(shardcast_proto::MessageKind::Binary)
        );
        assert!(matches!(
            finish_publish(true, &[0xff], None),
            Err(Decision::Refuse(Refusal::BadRequest, _))
        ));
        let backlog = Some((Refusal::MeshBacklog, &b"behind"[..]));
        let Err(d) = finish_publish(false, b"x", backlog) else {
            panic!("refused")
        };
        assert_eq!(status(&d), (Refusal::MeshBacklog, 503));
        assert!(String::from_utf8(published())
            .unwrap()
            .starts_with("HTTP/1.1 204"));
        assert!(String::from_utf8(timed_out())
            .unwrap()
            .starts_with("HTTP/1.1 408"));
    }
}
