//! Access control: who may connect, subscribe and publish, and how fast they may talk.
//!
//! Contract (sans-IO; the connection code calls in, time is always an argument):
//! - [`Access::admit_peer`] once per accepted TCP connection (peer address, monotonic ms):
//!   the per-address limits ([`ipguard`]); a refusal is answered `429` with `Retry-After`.
//! - [`Access::admit`] once per request head (upgrade or HTTP publish), with what the route
//!   wants ([`Want`]) and the Unix time: the `Origin` allow-list ([`origin`]), the presented
//!   credential ([`presented`]: `Authorization: Bearer`, `?token=`, or the subprotocol
//!   `shardcast.token.<token>`), the static publish token or a JWT ([`token`]) with its topic
//!   grants ([`grants`]), public topics, and the implicit-trust rule ([`trust`]). It returns
//!   the grants the connection keeps, the token's expiry and the subprotocol to echo, or a
//!   [`Denied`] with the status (401/403) and the counted reason.
//! - [`Access::may_subscribe`] for each topic of an in-band SUBSCRIBE.
//! - [`Access::limit`] gives the inbound [`rate::Limit`] of a connection; the connection keeps
//!   one [`rate::Bucket`] (8 bytes) and asks it once per received frame.
//! - [`Access::expiry_in_ms`] turns a token's `exp` into the deadline the heartbeat sweep
//!   enforces (close 1008 `token expired`), so a live connection costs no timer of its own.

pub mod config;
pub mod cors;
pub mod grants;
pub mod ipguard;
pub mod origin;
pub mod rate;
pub mod state;
pub mod stats;
pub mod token;
pub mod trust;

use std::net::IpAddr;
use std::rc::Rc;

use shardcast_proto::http::{Request, Status};

use crate::obs::latency::Recording as OnOff;
use grants::{matches_any, Grants};
use ipguard::{Effects, IpGuard, IpLimits, Verdict};
use origin::AllowedOrigins;
use rate::Limit;
use stats::AccessRefusal;
use token::{TokenError, Verifier};
use trust::TrustLoopback;

/// Subprotocol prefix carrying a token (browsers cannot set `Authorization` on a WebSocket).
pub const TOKEN_PROTOCOL_PREFIX: &str = "shardcast.token.";
/// The plain subprotocol: offered next to the token one, it is the one echoed back, so the
/// token does not travel back in the response.
pub const PROTOCOL: &str = "shardcast";

/// What a request asks to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want<'a> {
    /// Topics it subscribes to at once.
    pub subscribe: &'a [String],
    /// Topic it publishes into.
    pub publish: Option<&'a str>,
}

/// An admitted request.
#[derive(Debug)]
pub struct Admitted<'b> {
    /// Grants the connection keeps for in-band SUBSCRIBE (`None`: public topics only).
    pub grants: Option<Rc<Grants>>,
    /// The token's `exp` (Unix seconds), when a JWT admitted it.
    pub expires: Option<u64>,
    /// Subprotocol to echo in the 101.
    pub protocol: Option<&'b str>,
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// 401 or 403.
    pub status: Status,
    /// Counted reason.
    pub reason: AccessRefusal,
    /// Response body.
    pub message: String,
}

fn deny(status: Status, reason: AccessRefusal, message: impl Into<String>) -> Denied {
    Denied {
        status,
        reason,
        message: message.into(),
    }
}

/// A per-address refusal at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRefused {
    /// Counted reason ([`AccessRefusal::IpAttempts`] or [`AccessRefusal::IpConcurrent`]).
    pub reason: AccessRefusal,
    /// Seconds for `Retry-After` (at least 1).
    pub retry_after_s: u64,
}

/// The credential a request presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'b> {
    /// None at all.
    Nothing,
    /// Something unusable: an `Authorization` that is not `Bearer <token>`, or an empty one.
    Malformed,
    /// A token (static publish token or JWT).
    Token(&'b str),
}

/// The credential of a request and the subprotocol to echo: `Authorization: Bearer` first,
/// then `?token=`, then an offered `shardcast.token.<token>` subprotocol. When `shardcast`
/// is offered it is echoed; otherwise a token subprotocol that was used is echoed (RFC 6455:
/// the server picks one of the offered protocols, and browsers fail a connection that offered
/// some and got none).
pub fn presented<'b>(
    authorization: Option<&'b [u8]>,
    query_token: Option<&'b str>,
    protocols: impl Iterator<Item = &'b str> + Clone,
) -> (Presented<'b>, Option<&'b str>) {
    let plain = protocols.clone().find(|p| *p == PROTOCOL);
    let from_protocol = protocols
        .clone()
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX).map(|t| (p, t)));
    let cred = if let Some(h) = authorization {
        let h = h.trim_ascii();
        match h.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                match std::str::from_utf8(h[7..].trim_ascii()) {
                    Ok(t) if !t.is_empty() => Presented::Token(t),
                    _ => Presented::Malformed,
                }
            }
            _ => Presented::Malformed,
        }
    } else if let Some(q) = query_token {
        if q.is_empty() {
            Presented::Malformed
        } else {
            Presented::Token(q)
        }
    } else if let Some((_, t)) = from_protocol {
        if t.is_empty() {
            Presented::Malformed
        } else {
            Presented::Token(t)
        }
    } else {
        Presented::Nothing
    };
    let echo = plain.or(from_protocol.map(|(p, _)| p));
    (cred, echo)
}

/// Compare without an early exit on the first differing byte, so timing does not reveal how
/// much of a guessed token was right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a request is, once its credential is checked.
enum Identity {
    /// No credential (or none usable while nothing is configured), not trusted.
    Anonymous,
    /// Trusted peer or the static publish token: everything.
    All,
    /// A verified JWT.
    Token(Grants, u64),
}

/// The access policy of the whole server (shared by every shard).
#[derive(Debug)]
pub struct Access {
    verifier: Option<Verifier>,
    publish_token: Option<Box<str>>,
    trust: TrustLoopback,
    public_topics: Vec<Box<str>>,
    origins: AllowedOrigins,
    /// Per-address limits, shared by every shard.
    pub ip: IpGuard,
    subscriber: Limit,
    publisher: Limit,
    grace_ms: u64,
}

impl Access {
    /// The policy of `config` (reads the JWT key files).
    pub fn new(config: &crate::config::Config) -> Result<Access, String> {
        let a = &config.access;
        Ok(Access {
            verifier: a.verifier()?,
            publish_token: config.publish_token.as_deref().map(Box::from),
            trust: a.trust_loopback,
            public_topics: a
                .public_topics
                .iter()
                .map(|p| Box::from(p.as_str()))
                .collect(),
            origins: AllowedOrigins::parse(&a.allowed_origins)?,
            ip: IpGuard::new(
                IpLimits {
                    attempts: a.ip_connect_limit,
                    window_ms: a.ip_connect_window_ms,
                    concurrent: a.ip_max_connections,
                },
                a.ip_limit_loopback == OnOff::Off,
                a.ip_table_entries,
            ),
            subscriber: Limit::new(a.subscriber_rate, a.subscriber_burst),
            publisher: Limit::new(a.publisher_rate, a.publisher_burst),
            grace_ms: a.token_expiry_grace_ms,
        })
    }

    /// The answer to a CORS preflight for `POST /publish` ([`cors::preflight`]): its headers,
    /// or the counted 403.
    pub fn preflight(&self, req: &Request<'_>) -> Result<Vec<(&'static str, String)>, Denied> {
        cors::preflight(&self.origins, req.header("origin")).ok_or_else(|| {
            deny(
                Status::Forbidden,
                AccessRefusal::Origin,
                "cross-origin publishing is allowed from --allowed-origins only",
            )
        })
    }

    /// The CORS headers for the response to a publish from a listed origin.
    pub fn cors_headers(&self, req: &Request<'_>) -> Option<Vec<(&'static str, String)>> {
        cors::allow_origin(&self.origins, req.header("origin"))
    }

    /// True when tokens can expire on live connections (the heartbeat sweep must run).
    pub fn tokens_expire(&self) -> bool {
        self.verifier.is_some()
    }

    /// The inbound rate limit of a subscriber (`false`) or a publisher, room or echo
    /// connection (`true`).
    pub fn limit(&self, publisher: bool) -> &Limit {
        if publisher {
            &self.publisher
        } else {
            &self.subscriber
        }
    }

    /// One accepted TCP connection from `peer` at `now_ms` (monotonic): admitted with a ticket
    /// to release at close, or refused. `effects` are the table events to count.
    pub fn admit_peer(&self, peer: IpAddr, now_ms: u64) -> (Result<u64, PeerRefused>, Effects) {
        let (verdict, effects) = self.ip.handle_attempt(peer, now_ms);
        let result = match verdict {
            Verdict::Admit { ticket } => Ok(ticket),
            Verdict::TooManyAttempts { retry_after_ms } => Err(PeerRefused {
                reason: AccessRefusal::IpAttempts,
                retry_after_s: retry_after_ms.div_ceil(1000).max(1),
            }),
            Verdict::TooManyConcurrent => Err(PeerRefused {
                reason: AccessRefusal::IpConcurrent,
                retry_after_s: 1,
            }),
        };
        (result, effects)
    }

    fn is_public(&self, topic: &str) -> bool {
        matches_any(&self.public_topics, topic)
    }

    /// May a connection holding `grants` subscribe to `topic` in-band?
    pub fn may_subscribe(&self, grants: Option<&Grants>, topic: &str) -> bool {
        self.is_public(topic) || grants.is_some_and(|g| g.may_subscribe(topic))
    }

    /// Milliseconds from `now_unix_ms` until a connection admitted by a token expiring at
    /// `exp` (Unix seconds) must close: `exp` plus the grace.
    pub fn expiry_in_ms(&self, exp: u64, now_unix_ms: u64) -> u64 {
        (exp.saturating_mul(1000) + self.grace_ms).saturating_sub(now_unix_ms)
    }

    /// Decide on a request head: `req` (its headers and `?token=`), the subprotocols it
    /// offers, its TCP `peer`, what it wants, at Unix time `now` (seconds).
    pub fn admit<'b>(
        &self,
        req: &Request<'b>,
        protocols: impl Iterator<Item = &'b str> + Clone,
        peer: IpAddr,
        want: Want<'_>,
        now: u64,
    ) -> Result<Admitted<'b>, Denied> {
        if let Some(origin) = req.header("origin") {
            if !self.origins.allows(origin) {
                return Err(deny(
                    Status::Forbidden,
                    AccessRefusal::Origin,
                    "origin not allowed",
                ));
            }
        }
        let configured = self.verifier.is_some() || self.publish_token.is_some();
        let (cred, protocol) = presented(
            req.header("authorization"),
            req.query_param("token"),
            protocols,
        );
        let trusted = || {
            trust::is_trusted(
                self.trust,
                configured,
                peer,
                req.headers().iter().map(|h| h.name),
            )
        };
        let identity = match cred {
            Presented::Malformed if configured => {
                return Err(deny(
                    Status::Unauthorized,
                    AccessRefusal::BadToken,
                    "malformed credential: use Authorization: Bearer <token>",
                ))
            }
            Presented::Token(t) if configured => self.identify(t, now)?,
            _ if trusted() => Identity::All,
            _ => Identity::Anonymous,
        };
        for topic in want.subscribe {
            let ok = self.is_public(topic)
                || match &identity {
                    Identity::Anonymous => false,
                    Identity::All => true,
                    Identity::Token(g, _) => g.may_subscribe(topic),
                };
            if !ok {
                return Err(match identity {
                    Identity::Anonymous => deny(
                        Status::Unauthorized,
                        AccessRefusal::NoToken,
                        format!("subscribing to {topic} needs a token"),
                    ),
                    _ => deny(
                        Status::Forbidden,
                        AccessRefusal::NotGranted,
                        format!("the token does not grant subscribing to {topic}"),
                    ),
                });
            }
        }
        if let Some(topic) = want.publish {
            let ok = match &identity {
                Identity::Anonymous => false,
                Identity::All => true,
                Identity::Token(g, _) => g.may_publish(topic),
            };
            if !ok {
                return Err(match identity {
                    Identity::Anonymous if configured => {
                        deny(Status::Unauthorized, AccessRefusal::NoToken, "publishing needs a token")
                    }
                    Identity::Anonymous => deny(
                        Status::Forbidden,
                        AccessRefusal::Untrusted,
                        "publishing needs a credential: only loopback peers without Origin or forwarding headers are trusted without one",
                    ),
                    _ => deny(
                        Status::Forbidden,
                        AccessRefusal::NotGranted,
                        format!("the token does not grant publishing to {topic}"),
                    ),
                });
            }
        }
        Ok(match identity {
            Identity::Anonymous => Admitted {
                grants: None,
                expires: None,
                protocol,
            },
            Identity::All => Admitted {
                grants: Some(Grants::all()),
                expires: None,
                protocol,
            },
            Identity::Token(g, exp) => Admitted {
                grants: Some(Rc::new(g)),
                expires: Some(exp),
                protocol,
            },
        })
    }

    /// Who presents `token` (credentials are configured).
    fn identify(&self, token: &str, now: u64) -> Result<Identity, Denied> {
        if let Some(expected) = &self.publish_token {
            if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                return Ok(Identity::All);
            }
        }
        let Some(verifier) = &self.verifier else {
            // Only the static token is configured: a wrong one is forbidden (as always was).
            return Err(deny(
                Status::Forbidden,
                AccessRefusal::BadToken,
                "wrong token",
            ));
        };
        match verifier.verify(token, now) {
            Ok(c) => Ok(Identity::Token(c.grants, c.exp)),
            Err(TokenError::Expired) => Err(deny(
                Status::Unauthorized,
                AccessRefusal::ExpiredToken,
                "token expired",
            )),
            Err(TokenError::Invalid(why)) => Err(deny(
                Status::Unauthorized,
                AccessRefusal::BadToken,
                format!("invalid token: {why}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use shardcast_proto::http::{Parse, RequestParser};

    fn access(args: &[&str]) -> Access {
        use clap::Parser;
        let config = crate::config::Overrides::try_parse_from(
            std::iter::once("shardcast").chain(args.iter().copied()),
        )
        .unwrap()
        .resolve()
        .unwrap();
        Access::new(&config).unwrap()
    }

    /// Run `admit` on a request with `headers` for `target` from `peer`.
    fn run(
        a: &Access,
        target: &str,
        headers: &[&str],
        peer: &str,
        want: Want<'_>,
        now: u64,
    ) -> Result<(bool, Option<u64>, Option<String>), Denied> {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let Ok(Parse::Complete { request, .. }) = RequestParser::default().parse(head.as_bytes())
        else {
            panic!("bad test request")
        };
        let protocols: Vec<&str> = request
            .headers_named("sec-websocket-protocol")
            .flat_map(|v| std::str::from_utf8(v).unwrap().split(','))
            .map(str::trim)
            .collect();
        a.admit(
            &request,
            protocols.iter().copied(),
            peer.parse().unwrap(),
            want,
            now,
        )
        .map(|ad| {
            (
                ad.grants.is_some(),
                ad.expires,
                ad.protocol.map(str::to_owned),
            )
        })
    }

    fn reason<T: std::fmt::Debug>(r: Result<T, Denied>) -> (u16, AccessRefusal) {
        let d = r.unwrap_err();
        (d.status.code(), d.reason)
    }

    const LO: &str = "127.0.0.1";
    const FAR: &str = "198.51.100.7";

    fn sub(t: &[String]) -> Want<'_> {
        Want {
            subscribe: t,
            publish: None,
        }
    }

    fn publ(t: &str) -> Want<'_> {
        Want {
            subscribe: &[],
            publish: Some(t),
        }
    }

    #[test]
    fn defaults_trust_only_plain_loopback_to_publish_and_let_anyone_subscribe() {
        let a = access(&[]);
        assert!(run(&a, "/pub/t", &[], LO, publ("t"), 0).is_ok());
        assert!(run(&a, "/pub/t", &["User-Agent: curl"], "::1", publ("t"), 0).is_ok());
        for h in [
            "Origin: http://evil.example",
            "X-Forwarded-For: 1.2.3.4",
            "Sec-Fetch-Mode: no-cors",
        ] {
            assert_eq!(
                reason(run(&a, "/pub/t", &[h], LO, publ("t"), 0)),
                (403, AccessRefusal::Untrusted),
                "{h}"
            );
        }
        assert_eq!(
            reason(run(&a, "/pub/t", &[], FAR, publ("t"), 0)),
            (403, AccessRefusal::Untrusted)
        );
        // Presented tokens are ignored while nothing is configured.
        assert!(run(&a, "/pub/t?token=x", &[], LO, publ("t"), 0).is_ok());
        // Subscribing: everything is public without a JWT key, from anywhere, browsers too.
        let topics = vec!["a".to_owned(), "b".to_owned()];
        let r = run(
            &a,
            "/stream",
            &["Origin: https://any.example"],
            FAR,
            sub(&topics),
            0,
        );
        assert_eq!(r.unwrap(), (false, None, None));
    }

    #[test]
    fn static_publish_token_keeps_its_statuses() {
        let a = access(&["--publish-token", "s3cret"]);
        assert_eq!(
            reason(run(&a, "/pub/t", &[], LO, publ("t"), 0)),
            (401, AccessRefusal::NoToken)
        );
        assert_eq!(
            reason(run(
                &a,
                "/pub/t",
                &["Authorization: Bearer nope"],
                LO,
                publ("t"),
                0
            )),
            (403, AccessRefusal::BadToken)
        );
        assert_eq!(
            reason(run(
                &a,
                "/pub/t",
                &["Authorization: Basic abc"],
                LO,
                publ("t"),
                0
            )),
            (401, AccessRefusal::BadToken)
        );
        assert!(run(
            &a,
            "/pub/t",
            &["Authorization: bearer  s3cret "],
            FAR,
            publ("t"),
            0
        )
        .is_ok());
        assert!(run(&a, "/pub/t?token=s3cret", &[], FAR, publ("t"), 0).is_ok());
        let r = run(
            &a,
            "/pub/t",
            &["Sec-WebSocket-Protocol: shardcast.token.s3cret"],
            FAR,
            publ("t"),
            0,
        );
        assert_eq!(r.unwrap().2.as_deref(), Some("shardcast.token.s3cret"));
        let r = run(
            &a,
            "/pub/t",
            &["Sec-WebSocket-Protocol: shardcast.token.s3cret, shardcast"],
            FAR,
            publ("t"),
            0,
        );
        assert_eq!(
            r.unwrap().2.as_deref(),
            Some("shardcast"),
            "the plain protocol is echoed"
        );
        // trust_loopback=on keeps local publishers working next to a configured token.
        let a = access(&["--publish-token", "s3cret", "--trust-loopback", "on"]);
        assert!(run(&a, "/pub/t", &[], LO, publ("t"), 0).is_ok());
        assert_eq!(
            reason(run(
                &a,
                "/pub/t",
                &["Origin: http://127.0.0.1:9"],
                LO,
                publ("t"),
                0
            )),
            (401, AccessRefusal::NoToken)
        );
        let a = access(&["--trust-loopback", "off"]);
        assert_eq!(
            reason(run(&a, "/pub/t", &[], LO, publ("t"), 0)),
            (403, AccessRefusal::Untrusted)
        );
    }

    #[test]
    fn jwt_grants_public_topics_and_expiry() {
        let a = access(&[
            "--jwt-secret",
            "k",
            "--public-topics",
            "pub.*",
            "--token-expiry-grace-ms",
            "1500",
        ]);
        let tok = token::tests::sign(
            Algorithm::HS256,
            &json!({"exp": 1000, "subscribe": ["md.*"], "publish": ["chat.1"]}),
            b"k",
        );
        let bearer = format!("Authorization: Bearer {tok}");
        let topics = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Public topics need nothing; others need a token.
        assert!(run(&a, "/ws/pub.x", &[], FAR, sub(&topics(&["pub.x"])), 0).is_ok());
        assert_eq!(
            reason(run(&a, "/ws/md.x", &[], FAR, sub(&topics(&["md.x"])), 0)),
            (401, AccessRefusal::NoToken)
        );
        let r = run(
            &a,
            "/stream",
            &[&bearer],
            FAR,
            sub(&topics(&["md.x", "pub.y"])),
            999,
        )
        .unwrap();
        assert_eq!(r, (true, Some(1000), None));
        assert_eq!(
            reason(run(
                &a,
                "/stream",
                &[&bearer],
                FAR,
                sub(&topics(&["md.x", "other"])),
                999
            )),
            (403, AccessRefusal::NotGranted)
        );
        assert!(run(&a, "/pub/chat.1", &[&bearer], FAR, publ("chat.1"), 999).is_ok());
        assert_eq!(
            reason(run(&a, "/pub/chat.2", &[&bearer], FAR, publ("chat.2"), 999)),
            (403, AccessRefusal::NotGranted)
        );
        assert_eq!(
            reason(run(
                &a,
                "/pub/chat.1",
                &[&bearer],
                FAR,
                publ("chat.1"),
                1000
            )),
            (401, AccessRefusal::ExpiredToken)
        );
        assert_eq!(
            reason(run(
                &a,
                "/pub/chat.1?token=x.y.z",
                &[],
                FAR,
                publ("chat.1"),
                1
            )),
            (401, AccessRefusal::BadToken)
        );
        // The token in the query and in the subprotocol.
        assert!(run(
            &a,
            &format!("/ws/md.1?token={tok}"),
            &[],
            FAR,
            sub(&topics(&["md.1"])),
            5
        )
        .is_ok());
        let proto = format!("Sec-WebSocket-Protocol: shardcast, shardcast.token.{tok}");
        let r = run(&a, "/ws/md.1", &[&proto], FAR, sub(&topics(&["md.1"])), 5).unwrap();
        assert_eq!(r.2.as_deref(), Some("shardcast"));
        // In-band checks and the expiry deadline (exp + grace).
        let g = Grants::new(vec!["md.*".into()], vec![]);
        assert!(a.may_subscribe(Some(&g), "md.1") && a.may_subscribe(None, "pub.z"));
        assert!(!a.may_subscribe(None, "md.1") && !a.may_subscribe(Some(&g), "x"));
        assert_eq!(a.expiry_in_ms(1000, 999_000), 2500);
        assert_eq!(a.expiry_in_ms(1000, 5_000_000), 0);
        assert!(a.tokens_expire());
        // Trust is off while credentials are configured (auto), so loopback needs a token too.
        assert_eq!(
            reason(run(&a, "/pub/chat.1", &[], LO, publ("chat.1"), 5)),
            (401, AccessRefusal::NoToken)
        );
    }

    #[test]
    fn origin_allow_list_applies_to_everyone_with_an_origin() {
        let a = access(&[
            "--allowed-origins",
            "https://app.example,http://localhost:*",
        ]);
        let t = vec!["a".to_owned()];
        assert!(run(
            &a,
            "/ws/a",
            &["Origin: https://app.example"],
            FAR,
            sub(&t),
            0
        )
        .is_ok());
        assert!(run(
            &a,
            "/ws/a",
            &["Origin: http://localhost:5173"],
            FAR,
            sub(&t),
            0
        )
        .is_ok());
        assert!(
            run(&a, "/ws/a", &[], FAR, sub(&t), 0).is_ok(),
            "no Origin: unaffected"
        );
        assert_eq!(
            reason(run(
                &a,
                "/ws/a",
                &["Origin: https://evil.example"],
                FAR,
                sub(&t),
                0
            )),
            (403, AccessRefusal::Origin)
        );
        assert_eq!(
            reason(run(
                &a,
                "/pub/a",
                &["Origin: https://evil.example"],
                LO,
                publ("a"),
                0
            )),
            (403, AccessRefusal::Origin)
        );
    }

    #[test]
    fn credential_extraction() {
        let none = std::iter::empty::<&str>();
        assert_eq!(
            presented(None, None, none.clone()),
            (Presented::Nothing, None)
        );
        assert_eq!(
            presented(Some(b"Bearer "), None, none.clone()).0,
            Presented::Malformed
        );
        assert_eq!(
            presented(None, Some(""), none.clone()).0,
            Presented::Malformed
        );
        assert_eq!(
            presented(Some(b"Bearer a"), Some("b"), none.clone()).0,
            Presented::Token("a")
        );
        assert_eq!(
            presented(None, Some("b"), ["shardcast.token.c"].into_iter()).0,
            Presented::Token("b")
        );
        let (c, p) = presented(None, None, ["chat", "shardcast.token.c"].into_iter());
        assert_eq!((c, p), (Presented::Token("c"), Some("shardcast.token.c")));
        let (c, p) = presented(None, None, ["chat"].into_iter());
        assert_eq!((c, p), (Presented::Nothing, None));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn peer_limits_map_to_429s() {
        let a = access(&["--ip-connect-limit", "2", "--ip-connect-window-ms", "10000"]);
        let far: IpAddr = FAR.parse().unwrap();
        assert!(a.admit_peer(far, 0).0.is_ok());
        assert!(a.admit_peer(far, 1).0.is_ok());
        assert_eq!(
            a.admit_peer(far, 2500).0,
            Err(PeerRefused {
                reason: AccessRefusal::IpAttempts,
                retry_after_s: 8
            })
        );
        for _ in 0..10 {
            assert!(
                a.admit_peer(LO.parse().unwrap(), 3).0.is_ok(),
                "loopback exempt"
            );
        }
        let a = access(&["--ip-max-connections", "1", "--ip-limit-loopback", "on"]);
        let lo: IpAddr = LO.parse().unwrap();
        let ticket = a.admit_peer(lo, 0).0.unwrap();
        assert_eq!(
            a.admit_peer(lo, 0).0.unwrap_err().reason,
            AccessRefusal::IpConcurrent
        );
        a.ip.release(ticket);
        assert!(a.admit_peer(lo, 0).0.is_ok());
    }
}
