//! Binance-compatible in-band control messages on subscriber connections:
//! `{"method":"SUBSCRIBE","params":["a","b"],"id":1}` → `{"result":null,"id":1}`,
//! `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS` → `{"result":["a","b"],"id":1}`, and errors as
//! `{"error":{"code":N,"msg":"..."},"id":...}`.
//!
//! Error codes: 1 = unknown method or invalid params/topic, 2 = invalid JSON, 4 = too many
//! subscriptions. A request that fails changes nothing (all topics are validated first).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::flow::topic;

/// Error code for an unknown method or invalid params (including an invalid topic).
pub const INVALID_REQUEST: u32 = 1;
/// Error code for a message that is not the expected JSON object.
pub const INVALID_JSON: u32 = 2;
/// Error code for exceeding `max_topics_per_connection`.
pub const TOO_MANY_SUBSCRIPTIONS: u32 = 4;

#[derive(Deserialize)]
struct Raw {
    method: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    id: Value,
    /// Continuity: resume positions of a SUBSCRIBE (docs/CONTINUITY.md, "Resume").
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    epoch: Option<Value>,
}

/// What the connection must do to its subscriptions.
pub trait Subscriptions {
    /// Topics currently subscribed, in subscription order.
    fn list(&self) -> Vec<String>;
    /// True if `topic` is subscribed.
    fn contains(&self, topic: &str) -> bool;
    /// Subscribe to `topic` (not yet subscribed).
    fn subscribe(&mut self, topic: &str);
    /// Unsubscribe from `topic` (subscribed).
    fn unsubscribe(&mut self, topic: &str);
    /// Continuity: the connection is sequenced (`seq=1`).
    fn sequenced(&self) -> bool {
        false
    }
    /// Continuity: subscribe to `topic` resuming after `since` (not yet subscribed).
    fn subscribe_since(&mut self, topic: &str, since: Option<crate::continuity::Position>) {
        let _ = since;
        self.subscribe(topic);
    }
}

fn error(code: u32, msg: impl Into<String>, id: &Value) -> String {
    json!({"error": {"code": code, "msg": msg.into()}, "id": id}).to_string()
}

fn topics(params: Option<Value>, id: &Value) -> Result<Vec<String>, String> {
    let Some(Value::Array(items)) = params else {
        return Err(error(
            INVALID_REQUEST,
            "params must be an array of topic names",
            id,
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(t) = item else {
            return Err(error(
                INVALID_REQUEST,
                "params must be an array of topic names",
                id,
            ));
        };
        if let Err(why) = topic::validate(&t) {
            return Err(error(
                INVALID_REQUEST,
                format!("invalid topic {t:?}: {why}"),
                id,
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Handle one text control message; returns the JSON reply to send.
pub fn handle(text: &[u8], subs: &mut impl Subscriptions, max_topics: usize) -> String {
    let raw: Raw = match serde_json::from_slice(text) {
        Ok(r) => r,
        Err(e) => {
            // Keep the id when the JSON is valid but the shape is wrong.
            let id = serde_json::from_slice::<Value>(text)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            return error(INVALID_JSON, format!("invalid request: {e}"), &id);
        }
    };
    let id = raw.id;
    match raw.method.as_str() {
        "SUBSCRIBE" => match topics(raw.params, &id) {
            Err(reply) => reply,
            Ok(list) => {
                let new = list.iter().filter(|t| !subs.contains(t)).count();
                let have = subs.list().len();
                if have + new > max_topics {
                    return error(
                        TOO_MANY_SUBSCRIPTIONS,
                        format!("too many subscriptions: {have} + {new} > {max_topics}"),
                        &id,
                    );
                }
                // Continuity: `since`/`epoch` members, checked before anything changes.
                let mut positions = serde_json::Map::new();
                for (k, v) in [("since", raw.since), ("epoch", raw.epoch)] {
                    if let Some(v) = v.filter(|v| !v.is_null()) {
                        positions.insert(k.to_owned(), v);
                    }
                }
                let positions = Value::Object(positions);
                let since = match crate::continuity::params::from_subscribe(
                    &positions,
                    &list,
                    subs.sequenced(),
                ) {
                    Ok(s) => s,
                    Err(msg) => return error(INVALID_REQUEST, msg, &id),
                };
                for t in &list {
                    if !subs.contains(t) {
                        let at = since.iter().find(|(s, _)| s == t).map(|&(_, p)| p);
                        subs.subscribe_since(t, at);
                    }
                }
                json!({"result": null, "id": id}).to_string()
            }
        },
        "UNSUBSCRIBE" => match topics(raw.params, &id) {
            Err(reply) => reply,
            Ok(list) => {
                for t in &list {
                    if subs.contains(t) {
                        subs.unsubscribe(t);
                    }
                }
                json!({"result": null, "id": id}).to_string()
            }
        },
        "LIST_SUBSCRIPTIONS" => json!({"result": subs.list(), "id": id}).to_string(),
        other => error(INVALID_REQUEST, format!("unknown method {other:?}"), &id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Model(Vec<String>);
    impl Subscriptions for Model {
        fn list(&self) -> Vec<String> {
            self.0.clone()
        }
        fn contains(&self, t: &str) -> bool {
            self.0.iter().any(|x| x == t)
        }
        fn subscribe(&mut self, t: &str) {
            self.0.push(t.to_owned());
        }
        fn unsubscribe(&mut self, t: &str) {
            self.0.retain(|x| x != t);
        }
    }

    fn run(m: &mut Model, s: &str) -> Value {
        serde_json::from_str(&handle(s.as_bytes(), m, 3)).unwrap()
    }

    #[test]
    fn subscribe_list_unsubscribe() {
        let mut m = Model::default();
        let r = run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["a","b","a"],"id":1}"#,
        );
        assert_eq!(r, json!({"result": null, "id": 1}));
        let r = run(&mut m, r#"{"method":"LIST_SUBSCRIPTIONS","id":"x"}"#);
        assert_eq!(r, json!({"result": ["a", "b"], "id": "x"}));
        run(&mut m, r#"{"method":"SUBSCRIBE","params":["b"],"id":2}"#);
        assert_eq!(m.0, ["a", "b"], "idempotent");
        let r = run(
            &mut m,
            r#"{"method":"UNSUBSCRIBE","params":["a","zzz"],"id":3}"#,
        );
        assert_eq!(r, json!({"result": null, "id": 3}));
        assert_eq!(m.0, ["b"]);
    }

    #[test]
    fn errors_change_nothing() {
        let mut m = Model::default();
        let r = run(&mut m, "not json");
        assert_eq!(r["error"]["code"], INVALID_JSON);
        assert_eq!(r["id"], Value::Null);
        let r = run(&mut m, r#"{"params":[],"id":5}"#);
        assert_eq!(
            (r["error"]["code"].clone(), r["id"].clone()),
            (json!(INVALID_JSON), json!(5))
        );
        let r = run(&mut m, r#"{"method":"FOO","id":6}"#);
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        assert!(r["error"]["msg"].as_str().unwrap().contains("FOO"));
        let r = run(&mut m, r#"{"method":"SUBSCRIBE","params":"a","id":7}"#);
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        let r = run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["ok","bad/topic"],"id":8}"#,
        );
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        assert!(r["error"]["msg"].as_str().unwrap().contains("bad/topic"));
        assert!(m.0.is_empty(), "nothing subscribed on error");
        let r = run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["a","b","c","d"],"id":9}"#,
        );
        assert_eq!(r["error"]["code"], TOO_MANY_SUBSCRIPTIONS);
        assert!(m.0.is_empty());
        run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["a","b","c"],"id":10}"#,
        );
        assert_eq!(m.0.len(), 3);
        let r = run(&mut m, r#"{"method":"SUBSCRIBE","params":["a"],"id":11}"#);
        assert_eq!(
            r["result"],
            Value::Null,
            "re-subscribing does not count against the limit"
        );
    }
}
