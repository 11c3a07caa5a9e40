//! The request head, decided: a WebSocket upgrade with its route, an HTTP publish waiting for
//! its body, or a refusal with its status and counter. Pure: the shard supplies the one piece of
//! its state that matters (whether publishing to a topic is stopped by back-pressure) and
//! applies the decision.
//!
//! Order of checks (each refusal answers and counts): routing (404/400/405), then for
//! `POST /publish/<topic>` access (401/403: `access::Access::admit`), back-pressure (503 +
//! `Retry-After`), `Content-Length` (400 when missing or invalid) and its limit (413); for an
//! upgrade its validation (400/405/426), then access for what the route subscribes to and
//! publishes into (the grants and token expiry travel with the upgrade).

use std::net::IpAddr;

use shardcast_proto::deflate::Agreed;
use shardcast_proto::handshake::{validate_upgrade, write_rejection, write_switching_protocols};
use shardcast_proto::http::{write_response, HttpError, Request, Status};

use crate::access::grants::Grants;
use crate::access::stats::AccessRefusal;
use crate::access::{Access, Denied, Want};
use crate::config::Config;
use crate::conn::route::{self, Route};
use crate::obs::stats::Refusal;

/// What to do with a complete request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this response (counted under this reason) and close.
    Refuse(Refusal, Vec<u8>),
    /// Answer with this response, uncounted (a granted CORS preflight), and close.
    Answer(Vec<u8>),
    /// HTTP publish: read `length` body bytes after the head, then [`finish_publish`].
    Publish {
        /// CORS headers for the answer (a listed `Origin`).
        cors: Option<Vec<(&'static str, String)>>,
        /// The topic.
        topic: String,
        /// Text (`text/*` or `application/json`) rather than binary.
        text: bool,
        /// The body length.
        length: usize,
    },
    /// Write this `101` and serve `route` as a WebSocket, with what the upgrade was admitted
    /// with (access grants, permessage-deflate).
    Upgrade(Route, Vec<u8>, Admission),
    /// Access refused the request: answer (counted under both reasons) and close.
    Deny(Refusal, AccessRefusal, Vec<u8>),
}

/// What an upgrade was admitted with: the grants the connection keeps for in-band SUBSCRIBE
/// (`None`: public topics only), its token's expiry (Unix s), and the permessage-deflate
/// parameters agreed (`None`: uncompressed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The grants.
    pub grants: Option<std::rc::Rc<Grants>>,
    /// `exp` of the token that admitted it.
    pub expires: Option<u64>,
    /// permessage-deflate, if agreed (`crate::deflate`).
    pub deflate: Option<Agreed>,
}

/// Why publishing to a topic is stopped right now, if it is: the refusal and the 503 body.
pub type Stopped = Option<(Refusal, &'static [u8])>;

/// Decide a complete request head from `peer` on shard `shard` under `access` at Unix time
/// `unix_s`. `stopped(topic)` says whether back-pressure stops publishing to `topic` now.
pub fn decide(
    request: &Request<'_>,
    peer: IpAddr,
    cfg: &Config,
    (access, unix_s): (&Access, u64),
    shard: usize,
    stopped: impl Fn(&str) -> Stopped,
) -> Decision {
    let route = match route::route(
        request.method(),
        request.path(),
        request.query(),
        cfg.max_topics_per_connection,
    ) {
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
    if let Route::Preflight(_) = route {
        return match access.preflight(request) {
            Ok(headers) => {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let mut out = Vec::new();
                write_response(&mut out, Status::NoContent, &headers, "", b"");
                Decision::Answer(out)
            }
            Err(d) => deny(&d),
        };
    }
    if let Route::HttpPublish(topic) = route {
        let want = Want {
            subscribe: &[],
            publish: Some(&topic),
        };
        if let Err(d) = access.admit(request, std::iter::empty(), peer, want, unix_s) {
            return deny(&d);
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
            Err(e) => return refuse(refusal_of(e.status), e),
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
            cors: access.cors_headers(request),
            topic,
            text,
            length: length as usize,
        };
    }
    let upgrade = match validate_upgrade(request) {
        Ok(u) => u,
        Err(e) => return refuse(refusal_of(e.status), e),
    };
    let want = Want {
        subscribe: route.subscribes(),
        publish: route.publishes(),
    };
    let admitted = match access.admit(request, upgrade.protocols(), peer, want, unix_s) {
        Ok(a) => a,
        Err(d) => return deny(&d),
    };
    let mut out = Vec::new();
    let shard = shard.to_string();
    // permessage-deflate: answer the client's offer, if any (`crate::deflate`).
    let deflate = crate::deflate::negotiate(
        cfg.compression.is_on(),
        request.headers_named("sec-websocket-extensions"),
    );
    let extensions = deflate.map(|a| a.response());
    let mut headers = vec![("X-Shardcast-Shard", shard.as_str())];
    if let Some(e) = &extensions {
        headers.push(("Sec-WebSocket-Extensions", e));
    }
    write_switching_protocols(&mut out, &upgrade.accept_key(), admitted.protocol, &headers);
    let admission = Admission {
        grants: admitted.grants,
        expires: admitted.expires,
        deflate,
    };
    Decision::Upgrade(route, out, admission)
}

/// The answer to a request the access layer refused: 401 with `WWW-Authenticate`, or 403.
fn deny(d: &Denied) -> Decision {
    let (why, headers): (Refusal, &[(&str, &str)]) = if d.status == Status::Unauthorized {
        (
            Refusal::Unauthorized,
            &[("WWW-Authenticate", "Bearer realm=\"shardcast\"")],
        )
    } else {
        (Refusal::Forbidden, &[])
    };
    let mut out = Vec::new();
    write_response(
        &mut out,
        d.status,
        headers,
        "text/plain; charset=utf-8",
        d.message.as_bytes(),
    );
    Decision::Deny(why, d.reason, out)
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

/// The answer to an accepted HTTP publish (with its CORS headers, if any).
pub fn published(cors: Option<&[(&'static str, String)]>) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = cors
        .unwrap_or_default()
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let mut out = Vec::new();
    write_response(&mut out, Status::NoContent, &headers, "", b"");
    out
}

/// The answer to a request that did not complete within `handshake_timeout_ms`.
pub fn timed_out() -> Vec<u8> {
    rejection(HttpError::new(Status::RequestTimeout, "handshake timeout"))
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
    refuse(refusal_of(e.status), e)
}

/// The answer to an upgrade naming more topics than the shard's share of `max_subscriptions`
/// leaves room for (isolation: subscriptions are bounded).
pub fn no_subscription_room() -> Decision {
    refuse(
        Refusal::Subscriptions,
        HttpError::new(
            Status::ServiceUnavailable,
            "server subscription limit reached (max_subscriptions)",
        ),
    )
}

/// The answer to a request whose unfinished body would take the shard over its share of the
/// memory ceiling.
pub fn no_memory() -> Vec<u8> {
    rejection(HttpError::new(
        Status::ServiceUnavailable,
        "server memory ceiling reached",
    ))
}

/// The answer to a client accepted through the reserve descriptor when the process is out
/// of descriptors.
pub fn out_of_descriptors() -> Vec<u8> {
    rejection(HttpError::new(
        Status::ServiceUnavailable,
        "server out of descriptors",
    ))
}

/// Topics an upgrade to `route` subscribes at once (at most `max_topics` of a stream).
pub fn topics_named(route: &Route, max_topics: usize) -> usize {
    route.subscribes().len().min(max_topics)
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
    Decision::Refuse(why, rejection(err))
}

/// The error response for `err`.
fn rejection(err: HttpError) -> Vec<u8> {
    let mut out = Vec::new();
    write_rejection(&mut out, &err);
    out
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
    Refusal::for_status(status.code())
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
        let access = Access::new(&cfg).unwrap();
        decide(
            &request,
            peer.parse().unwrap(),
            &cfg,
            (&access, 0),
            3,
            |_| stopped,
        )
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn status(d: &Decision) -> (Refusal, u16) {
        let (Decision::Refuse(why, out) | Decision::Deny(why, _, out)) = d else {
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
        let Decision::Upgrade(route, out, admission) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            route,
            Route::Subscribe {
                topics: vec!["t".into()],
                combined: false
            }
        );
        assert_eq!(admission, Admission::default(), "public topic, no token");
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
                cors: None,
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
        assert!(String::from_utf8(published(None))
            .unwrap()
            .starts_with("HTTP/1.1 204"));
        assert!(String::from_utf8(timed_out())
            .unwrap()
            .starts_with("HTTP/1.1 408"));
    }
}
