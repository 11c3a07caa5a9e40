//! Request routing: path + query → [`Route`]. Who may take a route is `access`'s business.

use std::collections::HashSet;

use shardcast_proto::http::query_param;

use crate::flow::topic;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws/<topic>` (one topic), bare `GET /ws` (none yet: SUBSCRIBE in-band), or
    /// `GET /stream[?streams=a/b/c]` (`combined`: text arrives as `{"stream":…,"data":…}`).
    Subscribe {
        /// Topics to subscribe at once (deduplicated, in order).
        topics: Vec<String>,
        /// Wrap text messages with their topic.
        combined: bool,
    },
    /// `GET /pub/<topic>`: WebSocket publisher.
    Publisher(String),
    /// `GET /room/<topic>`: subscriber that may publish into its topic.
    Room(String),
    /// `GET /echo`: echo every message.
    Echo,
    /// `POST /publish/<topic>`: HTTP publish.
    HttpPublish(String),
    /// `OPTIONS /publish/<topic>`: a browser's CORS preflight for a publish (`access::cors`).
    Preflight(String),
}

impl Route {
    /// The topic this route publishes into, if any.
    pub fn publishes(&self) -> Option<&str> {
        match self {
            Route::Publisher(t) | Route::Room(t) | Route::HttpPublish(t) => Some(t),
            _ => None,
        }
    }

    /// The topics this route subscribes to at once.
    pub fn subscribes(&self) -> &[String] {
        match self {
            Route::Subscribe { topics, .. } => topics,
            Route::Room(t) => std::slice::from_ref(t),
            _ => &[],
        }
    }

    /// True for routes served over a WebSocket upgrade (everything but HTTP publish and its
    /// preflight).
    pub fn is_websocket(&self) -> bool {
        !matches!(self, Route::HttpPublish(_) | Route::Preflight(_))
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

/// Route a request by method, path (without query) and query; `/stream` may name at most
/// `max_topics` distinct topics (de-duplicated in linear time).
pub fn route(
    method: &str,
    path: &str,
    query: Option<&str>,
    max_topics: usize,
) -> Result<Route, RouteError> {
    let (route, want) = if path == "/ws" || path == "/ws/" {
        (
            Route::Subscribe {
                topics: Vec::new(),
                combined: false,
            },
            "GET",
        )
    } else if let Some(t) = path.strip_prefix("/ws/") {
        (
            Route::Subscribe {
                topics: vec![topic_of(t)?],
                combined: false,
            },
            "GET",
        )
    } else if path == "/stream" || path == "/stream/" {
        let list = query_param(query, "streams").unwrap_or("");
        let mut seen = HashSet::new();
        let mut topics: Vec<String> = Vec::new();
        for t in list.split('/').filter(|_| !list.is_empty()) {
            topic::validate(t).map_err(|why| err(400, why))?;
            if seen.insert(t) {
                topics.push(t.to_owned());
            }
            if topics.len() > max_topics {
                return Err(err(
                    400,
                    format!("more than {max_topics} streams (max_topics_per_connection)"),
                ));
            }
        }
        (
            Route::Subscribe {
                topics,
                combined: true,
            },
            "GET",
        )
    } else if let Some(t) = path.strip_prefix("/pub/") {
        (Route::Publisher(topic_of(t)?), "GET")
    } else if let Some(t) = path.strip_prefix("/room/") {
        (Route::Room(topic_of(t)?), "GET")
    } else if path == "/echo" {
        (Route::Echo, "GET")
    } else if let Some(t) = path.strip_prefix("/publish/") {
        if method == "OPTIONS" {
            return Ok(Route::Preflight(topic_of(t)?));
        }
        (Route::HttpPublish(topic_of(t)?), "POST")
    } else {
        return Err(err(404, format!("no route for {path}")));
    };
    if method != want {
        return Err(err(405, format!("{path} accepts {want} only")));
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
        super::route(method, path, query, 1024)
    }

    fn sub(topics: &[&str], combined: bool) -> Result<Route, RouteError> {
        Ok(Route::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            combined,
        })
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET", "/ws/btc@trade", None),
            sub(&["btc@trade"], false)
        );
        assert_eq!(route("GET", "/ws", None), sub(&[], false));
        assert_eq!(route("GET", "/ws/", None), sub(&[], false));
        assert_eq!(
            route("GET", "/stream", Some("x=1&streams=a/b/a")),
            sub(&["a", "b"], true)
        );
        assert_eq!(route("GET", "/stream", None), sub(&[], true));
        assert_eq!(route("GET", "/stream", Some("streams=")), sub(&[], true));
        assert_eq!(
            route("GET", "/stream/", Some("streams=a")),
            sub(&["a"], true)
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
        assert_eq!(
            route("POST", "/publish/t", None).unwrap().publishes(),
            Some("t")
        );
        assert!(!route("POST", "/publish/t", None).unwrap().is_websocket());
        assert_eq!(
            route("OPTIONS", "/publish/t", None),
            Ok(Route::Preflight("t".into()))
        );
        assert!(!route("OPTIONS", "/publish/t", None).unwrap().is_websocket());
        assert_eq!(route("OPTIONS", "/ws/t", None).unwrap_err().status, 405);
        assert_eq!(route("GET", "/ws/a", None).unwrap().publishes(), None);
        assert_eq!(route("GET", "/room/r", None).unwrap().subscribes(), ["r"]);
        assert!(route("GET", "/pub/r", None)
            .unwrap()
            .subscribes()
            .is_empty());
    }

    #[test]
    fn stream_dedup_is_linear_and_bounded() {
        // 2,678 distinct topics plus repeats: one pass with a set, not a scan per topic.
        let names: Vec<String> = (0..2678).map(|i| format!("t{i}")).collect();
        let list = format!("streams={}/{}", names.join("/"), names.join("/"));
        let r = super::route("GET", "/stream", Some(&list), 5000).unwrap();
        assert_eq!(r.subscribes().len(), 2678);
        assert_eq!(r.subscribes()[2677], "t2677");
        let e = super::route("GET", "/stream", Some(&list), 1024).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("1024"), "{}", e.reason);
        // Exactly at the limit is fine, repeats included.
        let at = format!("streams={}/t0", names[..1024].join("/"));
        assert_eq!(
            super::route("GET", "/stream", Some(&at), 1024)
                .unwrap()
                .subscribes()
                .len(),
            1024
        );
    }

    #[test]
    fn route_errors() {
        assert_eq!(route("GET", "/nope", None).unwrap_err().status, 404);
        assert_eq!(route("GET", "/", None).unwrap_err().status, 404);
        let e = route("GET", "/ws/a%20b", None).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("'%'"), "{}", e.reason);
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
}
