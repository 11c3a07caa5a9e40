//! Request routing (path + query → [`Route`]) and the publish authorization check.

use std::net::IpAddr;

use shardcast_proto::http::query_param;

use crate::flow::topic;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws/<topic>`: subscribe to one topic.
    Subscribe(String),
    /// `GET /stream?streams=a/b/c`: combined stream of several topics.
    Stream(Vec<String>),
    /// `GET /pub/<topic>`: WebSocket publisher.
    Publisher(String),
    /// `GET /room/<topic>`: subscriber that may publish into its topic.
    Room(String),
    /// `GET /echo`: echo every message.
    Echo,
    /// `POST /publish/<topic>`: HTTP publish.
    HttpPublish(String),
}

impl Route {
    /// True for routes that publish and so need [`authorize_publish`].
    pub fn publishes(&self) -> bool {
        matches!(
            self,
            Route::Publisher(_) | Route::Room(_) | Route::HttpPublish(_)
        )
    }

    /// True for routes served over a WebSocket upgrade (everything but HTTP publish).
    pub fn is_websocket(&self) -> bool {
        !matches!(self, Route::HttpPublish(_))
    }
}

/// A request that cannot be routed, with the HTTP status to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// 400, 404 or 405.
    pub status: u16,
    /// Human-readable reason, sent as the response body.
    pub reason: String,
}

fn err(status: u16, reason: impl Into<String>) -> RouteError {
    RouteError {
        status,
        reason: reason.into(),
    }
}

fn topic_of(rest: &str) -> Result<String, RouteError> {
    topic::validate(rest).map_err(|why| err(400, why))?;
    Ok(rest.to_owned())
}

/// Route a request by method, path (without query) and query.
pub fn route(method: &str, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let (route, want) = if let Some(t) = path.strip_prefix("/ws/") {
        (Route::Subscribe(topic_of(t)?), "GET")
    } else if path == "/stream" {
        let Some(list) = query_param(query, "streams") else {
            return Err(err(400, "missing streams= query parameter"));
        };
        let mut topics: Vec<String> = Vec::new();
        for t in list.split('/') {
            let t = topic_of(t)?;
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        (Route::Stream(topics), "GET")
    } else if let Some(t) = path.strip_prefix("/pub/") {
        (Route::Publisher(topic_of(t)?), "GET")
    } else if let Some(t) = path.strip_prefix("/room/") {
        (Route::Room(topic_of(t)?), "GET")
    } else if path == "/echo" {
        (Route::Echo, "GET")
    } else if let Some(t) = path.strip_prefix("/publish/") {
        (Route::HttpPublish(topic_of(t)?), "POST")
    } else {
        return Err(err(404, format!("no route for {path}")));
    };
    if method != want {
        return Err(err(405, format!("{path} accepts {want} only")));
    }
    Ok(route)
}

/// Why publishing was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no credentials, or an Authorization header that is not `Bearer <token>`.
    Unauthorized,
    /// 403: wrong token, or no token configured and the peer is not loopback.
    Forbidden,
}

impl AuthError {
    /// HTTP status for the refusal.
    pub fn status(self) -> u16 {
        match self {
            AuthError::Unauthorized => 401,
            AuthError::Forbidden => 403,
        }
    }
}

/// Compare without an early exit on the first differing byte, so timing does not reveal how
/// much of a guessed token was right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Publish is allowed iff the configured token matches `Authorization: Bearer <t>` or
/// `?token=<t>`, or no token is configured and the peer is loopback.
pub fn authorize_publish(
    configured: Option<&str>,
    authorization: Option<&[u8]>,
    query_token: Option<&str>,
    peer: IpAddr,
) -> Result<(), AuthError> {
    let Some(expected) = configured else {
        return if is_loopback(peer) {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        };
    };
    let presented: &[u8] = match (authorization, query_token) {
        (Some(h), _) => {
            let h = h.trim_ascii();
            match h.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => h[7..].trim_ascii(),
                _ => return Err(AuthError::Unauthorized),
            }
        }
        (None, Some(q)) => q.as_bytes(),
        (None, None) => return Err(AuthError::Unauthorized),
    };
    if presented.is_empty() {
        return Err(AuthError::Unauthorized);
    }
    if constant_time_eq(presented, expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET", "/ws/btc@trade", None),
            Ok(Route::Subscribe("btc@trade".into()))
        );
        assert_eq!(
            route("GET", "/stream", Some("x=1&streams=a/b/a")),
            Ok(Route::Stream(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            route("GET", "/pub/t", Some("token=z")),
            Ok(Route::Publisher("t".into()))
        );
        assert_eq!(route("GET", "/room/r", None), Ok(Route::Room("r".into())));
        assert_eq!(route("GET", "/echo", None), Ok(Route::Echo));
        assert_eq!(
            route("POST", "/publish/t", None),
            Ok(Route::HttpPublish("t".into()))
        );
        assert!(route("POST", "/publish/t", None).unwrap().publishes());
        assert!(!route("POST", "/publish/t", None).unwrap().is_websocket());
        assert!(!Route::Subscribe("a".into()).publishes());
    }

    #[test]
    fn route_errors() {
        assert_eq!(route("GET", "/nope", None).unwrap_err().status, 404);
        assert_eq!(route("GET", "/", None).unwrap_err().status, 404);
        assert_eq!(route("GET", "/ws/", None).unwrap_err().status, 400);
        let e = route("GET", "/ws/a%20b", None).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("'%'"), "{}", e.reason);
        assert_eq!(route("GET", "/stream", None).unwrap_err().status, 400);
        assert_eq!(
            route("GET", "/stream", Some("streams=a//b"))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(route("POST", "/ws/a", None).unwrap_err().status, 405);
        assert_eq!(route("GET", "/publish/a", None).unwrap_err().status, 405);
    }

    #[test]
    fn query_params_come_from_proto() {
        assert_eq!(
            query_param(Some("a=1&token=xy&token=z"), "token"),
            Some("xy")
        );
        assert_eq!(query_param(Some("flag"), "flag"), Some(""));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "a"), None);
    }

    #[test]
    fn auth() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(authorize_publish(None, None, None, lo), Ok(()));
        assert_eq!(authorize_publish(None, None, None, lo6), Ok(()));
        assert_eq!(authorize_publish(None, None, None, mapped), Ok(()));
        assert_eq!(
            authorize_publish(None, Some(b"Bearer x"), None, far),
            Err(AuthError::Forbidden)
        );
        let t = Some("sekrit");
        assert_eq!(
            authorize_publish(t, Some(b"Bearer sekrit"), None, far),
            Ok(())
        );
        assert_eq!(
            authorize_publish(t, Some(b"bearer  sekrit "), None, far),
            Ok(())
        );
        assert_eq!(authorize_publish(t, None, Some("sekrit"), far), Ok(()));
        assert_eq!(
            authorize_publish(t, None, None, lo),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            authorize_publish(t, Some(b"Basic abc"), None, far),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            authorize_publish(t, Some(b"Bearer "), None, far),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            authorize_publish(t, Some(b"Bearer sekriT"), None, far),
            Err(AuthError::Forbidden)
        );
        assert_eq!(
            authorize_publish(t, None, Some("nope"), lo),
            Err(AuthError::Forbidden)
        );
        assert_eq!(AuthError::Unauthorized.status(), 401);
        assert_eq!(AuthError::Forbidden.status(), 403);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
