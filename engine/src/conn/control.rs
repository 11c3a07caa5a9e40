//! The Binance spot stream control protocol on subscriber connections (binance-spot-api-docs,
//! web-socket-streams.md): `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY` and
//! `GET_PROPERTY` (`combined`), plus the `serverShutdown` event.
//!
//! Contract: [`handle`] takes one text message and the connection's [`Subscriptions`] and
//! returns the reply to send; it never panics and a request that fails changes nothing
//! (every topic is checked before the first is subscribed). Cost is linear in the message and
//! in the reply: parameters are de-duplicated with a set, membership is asked of the
//! connection (O(1) each), and the `LIST_SUBSCRIPTIONS` reply is written straight into one
//! buffer of its exact size, at most `max_topics` × 131 bytes (topic names need no escaping).
//!
//! Replies: `{"result":…,"id":…}` on success, `{"error":{"code":N,"msg":"…"},"id":…}` on
//! failure. `id` must be a 64-bit signed integer, an alphanumeric string of at most 36
//! characters, or `null`, and is echoed. Codes and messages are Binance's:
//! 0 `Unknown property`, 1 `Invalid value type: expected Boolean`, 2 `Invalid request: …`
//! (bad `id`, unknown `method` or missing field with serde's position, `too many parameters`,
//! `property name must be a string`), 3 `Invalid JSON: …`. shardcast's own:
//! [`TOO_MANY_SUBSCRIPTIONS`] (4: this connection's `max_topics_per_connection`, or the
//! server's `max_subscriptions`), [`INVALID_STREAM`] (5), [`NOT_PERMITTED`] (6).

use std::collections::HashSet;
use std::fmt::Write;

use serde::Deserialize;
use serde_json::Value;

use crate::flow::topic;

/// `SET_PROPERTY`/`GET_PROPERTY` with a property other than `combined`.
pub const UNKNOWN_PROPERTY: i32 = 0;
/// `SET_PROPERTY` with a value that is not a boolean.
pub const INVALID_VALUE_TYPE: i32 = 1;
/// A request of the wrong shape (bad id, unknown method, missing field, bad parameters).
pub const INVALID_REQUEST: i32 = 2;
/// Not JSON.
pub const INVALID_JSON: i32 = 3;
/// shardcast: more than `max_topics_per_connection` subscriptions.
pub const TOO_MANY_SUBSCRIPTIONS: i32 = 4;
/// shardcast: a stream name that is not a valid topic (1–128 bytes of `A–Z a–z 0–9 . _ - : @`).
pub const INVALID_STREAM: i32 = 5;
/// shardcast: the connection's credential does not grant a stream (see `--public-topics`).
pub const NOT_PERMITTED: i32 = 6;

/// Methods, named exactly as on the wire (serde's "unknown variant" message lists them).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms, non_camel_case_types)]
enum Method {
    SUBSCRIBE,
    UNSUBSCRIBE,
    LIST_SUBSCRIPTIONS,
    SET_PROPERTY,
    GET_PROPERTY,
}

#[derive(Deserialize)]
struct Shape {
    method: Method,
}

/// What a control message may do to its connection.
pub trait Subscriptions {
    /// Number of subscribed topics.
    fn count(&self) -> usize;
    /// Call `f` with every subscribed topic, in subscription order.
    fn for_each(&self, f: &mut dyn FnMut(&str));
    /// True if `topic` is subscribed.
    fn contains(&self, topic: &str) -> bool;
    /// Subscribe to `topic` (not yet subscribed).
    fn subscribe(&mut self, topic: &str);
    /// Unsubscribe from `topic` (subscribed).
    fn unsubscribe(&mut self, topic: &str);
    /// New subscriptions the server still takes (its `max_subscriptions`); unlimited by
    /// default.
    fn room(&self) -> usize {
        usize::MAX
    }
    /// May this connection subscribe to `topic`?
    fn may_subscribe(&self, topic: &str) -> bool;
    /// The `combined` property: text messages arrive wrapped as `{"stream":…,"data":…}`.
    fn combined(&self) -> bool;
    /// Set the `combined` property.
    fn set_combined(&mut self, on: bool);
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

/// The reply to one control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// JSON text to send.
    pub text: String,
    /// A SUBSCRIBE was refused because a topic was not granted (counted).
    pub denied: bool,
}

fn id_text(id: &Value) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| "null".to_owned())
}

fn error(code: i32, msg: &str, id: &Value) -> Reply {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".to_owned());
    Reply {
        text: format!(
            "{{\"error\":{{\"code\":{code},\"msg\":{msg}}},\"id\":{}}}",
            id_text(id)
        ),
        denied: false,
    }
}

fn result(result: &str, id: &Value) -> Reply {
    Reply {
        text: format!("{{\"result\":{result},\"id\":{}}}", id_text(id)),
        denied: false,
    }
}

/// Binance's accepted ids: int64, alphanumeric string of at most 36 characters, or null.
fn valid_id(id: &Value) -> bool {
    match id {
        Value::Null => true,
        Value::Number(n) => n.is_i64(),
        Value::String(s) => s.len() <= 36 && s.bytes().all(|b| b.is_ascii_alphanumeric()),
        _ => false,
    }
}

/// The event sent to every connection before a graceful shutdown closes it.
pub fn server_shutdown_event(unix_ms: u64) -> String {
    format!("{{\"e\":\"serverShutdown\",\"E\":{unix_ms}}}")
}

/// Handle one text control message (`max_topics`: subscriptions allowed per connection).
pub fn handle(text: &[u8], subs: &mut impl Subscriptions, max_topics: usize) -> Reply {
    let value: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => return error(INVALID_JSON, &format!("Invalid JSON: {e}"), &Value::Null),
    };
    let id = value.get("id");
    let echo = id.filter(|id| valid_id(id)).cloned().unwrap_or(Value::Null);
    let method = match serde_json::from_slice::<Shape>(text) {
        Ok(s) => s.method,
        Err(e) => return error(INVALID_REQUEST, &format!("Invalid request: {e}"), &echo),
    };
    if !id.is_some_and(valid_id) {
        return error(
            INVALID_REQUEST,
            "Invalid request: request ID must be an unsigned integer",
            &Value::Null,
        );
    }
    let params = match value.get("params") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) if matches!(method, Method::SET_PROPERTY | Method::GET_PROPERTY) => {
            return error(
                INVALID_REQUEST,
                "Invalid request: property name must be a string",
                &echo,
            )
        }
        Some(_) => {
            return error(
                INVALID_REQUEST,
                "Invalid request: params must be an array of stream names",
                &echo,
            )
        }
    };
    match method {
        Method::SUBSCRIBE => subscribe(&value, params, subs, max_topics, &echo),
        Method::UNSUBSCRIBE => match streams(params, &echo) {
            Err(reply) => reply,
            Ok(list) => {
                for t in list {
                    if subs.contains(t) {
                        subs.unsubscribe(t);
                    }
                }
                result("null", &echo)
            }
        },
        Method::LIST_SUBSCRIPTIONS => {
            if !params.is_empty() {
                return error(
                    INVALID_REQUEST,
                    "Invalid request: too many parameters",
                    &echo,
                );
            }
            result(&list(subs), &echo)
        }
        Method::SET_PROPERTY | Method::GET_PROPERTY => {
            let set = method == Method::SET_PROPERTY;
            if params.len() > if set { 2 } else { 1 } {
                return error(
                    INVALID_REQUEST,
                    "Invalid request: too many parameters",
                    &echo,
                );
            }
            let Some(Value::String(name)) = params.first() else {
                return error(
                    INVALID_REQUEST,
                    "Invalid request: property name must be a string",
                    &echo,
                );
            };
            if name != "combined" {
                return error(UNKNOWN_PROPERTY, "Unknown property", &echo);
            }
            if !set {
                return result(if subs.combined() { "true" } else { "false" }, &echo);
            }
            match params.get(1) {
                Some(Value::Bool(on)) => {
                    subs.set_combined(*on);
                    result("null", &echo)
                }
                _ => error(
                    INVALID_VALUE_TYPE,
                    "Invalid value type: expected Boolean",
                    &echo,
                ),
            }
        }
    }
}

/// The stream names of SUBSCRIBE/UNSUBSCRIBE params, validated and de-duplicated (linear).
fn streams<'a>(params: &'a [Value], id: &Value) -> Result<Vec<&'a str>, Reply> {
    let mut seen = HashSet::with_capacity(params.len());
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        let Value::String(t) = p else {
            return Err(error(
                INVALID_REQUEST,
                "Invalid request: params must be an array of stream names",
                id,
            ));
        };
        if let Err(why) = topic::validate(t) {
            return Err(error(
                INVALID_STREAM,
                &format!("Invalid stream name {t:?}: {why}"),
                id,
            ));
        }
        if seen.insert(t.as_str()) {
            out.push(t.as_str());
        }
    }
    Ok(out)
}

/// SUBSCRIBE: `msg` is the whole request (continuity reads its `since`/`epoch` members).
fn subscribe(
    msg: &Value,
    params: &[Value],
    subs: &mut impl Subscriptions,
    max_topics: usize,
    id: &Value,
) -> Reply {
    let list = match streams(params, id) {
        Ok(l) => l,
        Err(reply) => return reply,
    };
    if let Some(t) = list.iter().find(|t| !subs.may_subscribe(t)) {
        let mut r = error(NOT_PERMITTED, &format!("Not permitted: {t}"), id);
        r.denied = true;
        return r;
    }
    let new = list.iter().filter(|t| !subs.contains(t)).count();
    let have = subs.count();
    if have + new > max_topics {
        return error(
            TOO_MANY_SUBSCRIPTIONS,
            &format!("Too many subscriptions: {have} + {new} > {max_topics}"),
            id,
        );
    }
    if new > subs.room() {
        return error(
            TOO_MANY_SUBSCRIPTIONS,
            "Server subscription limit reached (max_subscriptions), try later",
            id,
        );
    }
    // Continuity: `since`/`epoch` members, checked before anything changes.
    let since = match crate::continuity::params::from_subscribe(msg, &list, subs.sequenced()) {
        Ok(s) => s,
        Err(why) => return error(INVALID_REQUEST, &format!("Invalid request: {why}"), id),
    };
    for t in list {
        if !subs.contains(t) {
            let at = since.iter().find(|(s, _)| s == t).map(|&(_, p)| p);
            subs.subscribe_since(t, at);
        }
    }
    result("null", id)
}

/// `["a","b"]` of the subscribed topics, written once into a buffer of its exact size.
fn list(subs: &impl Subscriptions) -> String {
    // `[` + `]` + each quoted name + the commas between them.
    let mut len = 1;
    subs.for_each(&mut |t| len += t.len() + 3);
    let mut out = String::with_capacity(len.max(2));
    out.push('[');
    subs.for_each(&mut |t| {
        if out.len() > 1 {
            out.push(',');
        }
        // Topic names are ASCII letters, digits and `._:@-`: nothing to escape.
        let _ = write!(out, "\"{t}\"");
    });
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Default)]
    struct Model {
        topics: Vec<String>,
        combined: bool,
        denied_prefix: Option<&'static str>,
    }

    impl Subscriptions for Model {
        fn count(&self) -> usize {
            self.topics.len()
        }
        fn for_each(&self, f: &mut dyn FnMut(&str)) {
            self.topics.iter().for_each(|t| f(t));
        }
        fn contains(&self, t: &str) -> bool {
            self.topics.iter().any(|x| x == t)
        }
        fn subscribe(&mut self, t: &str) {
            self.topics.push(t.to_owned());
        }
        fn unsubscribe(&mut self, t: &str) {
            self.topics.retain(|x| x != t);
        }
        fn may_subscribe(&self, t: &str) -> bool {
            self.denied_prefix.is_none_or(|p| !t.starts_with(p))
        }
        fn combined(&self) -> bool {
            self.combined
        }
        fn set_combined(&mut self, on: bool) {
            self.combined = on;
        }
    }

    fn run(m: &mut Model, s: &str) -> Value {
        serde_json::from_str(&handle(s.as_bytes(), m, 3).text).unwrap()
    }

    fn err(v: &Value) -> (i64, String) {
        (
            v["error"]["code"].as_i64().unwrap(),
            v["error"]["msg"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn subscribe_list_unsubscribe() {
        let mut m = Model::default();
        let r = handle(
            br#"{"method":"SUBSCRIBE","params":["a","b","a"],"id":1}"#,
            &mut m,
            3,
        );
        assert_eq!(r.text, r#"{"result":null,"id":1}"#, "Binance's field order");
        let r = handle(br#"{"method":"LIST_SUBSCRIPTIONS","id":"x"}"#, &mut m, 3);
        assert_eq!(r.text, r#"{"result":["a","b"],"id":"x"}"#);
        run(&mut m, r#"{"method":"SUBSCRIBE","params":["b"],"id":2}"#);
        assert_eq!(m.topics, ["a", "b"], "idempotent");
        let r = run(
            &mut m,
            r#"{"method":"UNSUBSCRIBE","params":["a","zzz"],"id":3}"#,
        );
        assert_eq!(r, json!({"result": null, "id": 3}));
        assert_eq!(m.topics, ["b"]);
        let r = handle(
            br#"{"method":"LIST_SUBSCRIPTIONS","id":null}"#,
            &mut Model::default(),
            3,
        );
        assert_eq!(r.text, r#"{"result":[],"id":null}"#);
    }

    #[test]
    fn properties() {
        let mut m = Model::default();
        let r = run(
            &mut m,
            r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#,
        );
        assert_eq!(r, json!({"result": false, "id": 2}));
        let r = run(
            &mut m,
            r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#,
        );
        assert_eq!(r, json!({"result": null, "id": 5}));
        assert!(m.combined);
        let r = run(
            &mut m,
            r#"{"method":"GET_PROPERTY","params":["combined"],"id":6}"#,
        );
        assert_eq!(r["result"], true);
        let cases = [
            (
                r#"{"method":"SET_PROPERTY","params":["speed",true],"id":7}"#,
                0,
                "Unknown property",
            ),
            (
                r#"{"method":"GET_PROPERTY","params":["speed"],"id":7}"#,
                0,
                "Unknown property",
            ),
            (
                r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":7}"#,
                1,
                "Invalid value type: expected Boolean",
            ),
            (
                r#"{"method":"SET_PROPERTY","params":["combined"],"id":7}"#,
                1,
                "Invalid value type: expected Boolean",
            ),
            (
                r#"{"method":"SET_PROPERTY","params":[1,true],"id":7}"#,
                2,
                "Invalid request: property name must be a string",
            ),
            (
                r#"{"method":"SET_PROPERTY","params":[],"id":7}"#,
                2,
                "Invalid request: property name must be a string",
            ),
            (
                r#"{"method":"GET_PROPERTY","id":7}"#,
                2,
                "Invalid request: property name must be a string",
            ),
            (
                r#"{"method":"SET_PROPERTY","params":["combined",true,1],"id":7}"#,
                2,
                "Invalid request: too many parameters",
            ),
            (
                r#"{"method":"GET_PROPERTY","params":["combined",1],"id":7}"#,
                2,
                "Invalid request: too many parameters",
            ),
            (
                r#"{"method":"LIST_SUBSCRIPTIONS","params":["x"],"id":7}"#,
                2,
                "Invalid request: too many parameters",
            ),
        ];
        for (req, code, msg) in cases {
            let r = run(&mut m, req);
            assert_eq!(err(&r), (code, msg.to_owned()), "{req}");
            assert_eq!(r["id"], 7, "{req}");
        }
        assert!(m.combined, "failed requests changed nothing");
    }

    #[test]
    fn ids_as_binance_accepts_them() {
        let mut m = Model::default();
        for id in [
            "1",
            "-9223372036854775808",
            "9223372036854775807",
            "\"abc123\"",
            "null",
            &format!("\"{}\"", "a".repeat(36)),
        ] {
            let r = run(
                &mut m,
                &format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#),
            );
            assert_eq!(r["result"], json!([]), "{id}");
            assert_eq!(r["id"], serde_json::from_str::<Value>(id).unwrap());
        }
        for id in [
            "1.5",
            "9223372036854775808",
            "\"a-b\"",
            "\"\u{e9}\"",
            "[1]",
            "{}",
            "true",
            &format!("\"{}\"", "a".repeat(37)),
        ] {
            let r = run(
                &mut m,
                &format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#),
            );
            assert_eq!(
                err(&r),
                (
                    2,
                    "Invalid request: request ID must be an unsigned integer".to_owned()
                ),
                "{id}"
            );
            assert_eq!(r["id"], Value::Null);
        }
        let r = run(&mut m, r#"{"method":"LIST_SUBSCRIPTIONS"}"#);
        assert_eq!(err(&r).0, 2, "id must be provided");
    }

    #[test]
    fn binance_error_messages() {
        let mut m = Model::default();
        let r = run(&mut m, "not json");
        assert_eq!(
            err(&r),
            (
                3,
                "Invalid JSON: expected ident at line 1 column 2".to_owned()
            )
        );
        assert_eq!(r["id"], Value::Null);
        let r = run(&mut m, "");
        assert_eq!(
            err(&r),
            (
                3,
                "Invalid JSON: EOF while parsing a value at line 1 column 0".to_owned()
            )
        );
        let r = run(&mut m, r#"{"method":"SUBSCRIPTION","params":[],"id":4}"#);
        assert_eq!(
            err(&r),
            (
                2,
                "Invalid request: unknown variant `SUBSCRIPTION`, expected one of `SUBSCRIBE`, \
                 `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column 24"
                    .to_owned()
            )
        );
        assert_eq!(r["id"], 4, "a valid id is echoed");
        let r = run(&mut m, r#"{"params":[],"id":5}"#);
        assert_eq!(
            err(&r),
            (
                2,
                "Invalid request: missing field `method` at line 1 column 20".to_owned()
            )
        );
        let r = run(&mut m, r#"{"method":"SUBSCRIBE","params":"a","id":7}"#);
        assert_eq!(err(&r).0, INVALID_REQUEST as i64);
        let r = run(&mut m, r#"{"method":"SUBSCRIBE","params":["ok",1],"id":7}"#);
        assert_eq!(err(&r).0, INVALID_REQUEST as i64);
        let r = run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["ok","bad/topic"],"id":8}"#,
        );
        assert_eq!(err(&r).0, INVALID_STREAM as i64);
        assert!(err(&r).1.contains("bad/topic"));
        assert!(m.topics.is_empty(), "nothing subscribed on error");
    }

    #[test]
    fn limits_and_grants_change_nothing_on_failure() {
        let mut m = Model {
            denied_prefix: Some("private."),
            ..Model::default()
        };
        let r = handle(
            br#"{"method":"SUBSCRIBE","params":["a","private.x"],"id":1}"#,
            &mut m,
            3,
        );
        assert!(r.denied);
        let v: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(
            err(&v),
            (NOT_PERMITTED as i64, "Not permitted: private.x".to_owned())
        );
        assert!(m.topics.is_empty());
        let r = run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["a","b","c","d"],"id":9}"#,
        );
        assert_eq!(err(&r).0, TOO_MANY_SUBSCRIPTIONS as i64);
        assert!(m.topics.is_empty());
        run(
            &mut m,
            r#"{"method":"SUBSCRIBE","params":["a","b","c"],"id":10}"#,
        );
        assert_eq!(m.topics.len(), 3);
        let r = run(&mut m, r#"{"method":"SUBSCRIBE","params":["a"],"id":11}"#);
        assert_eq!(
            r["result"],
            Value::Null,
            "re-subscribing does not count against the limit"
        );
    }

    #[test]
    fn list_reply_is_exact_and_linear_in_size() {
        let mut m = Model::default();
        let names: Vec<String> = (0..1024).map(|i| format!("{:0>128}", i)).collect();
        m.topics = names.clone();
        let out = list(&m);
        assert_eq!(
            out.len(),
            out.capacity(),
            "one allocation of the exact size"
        );
        assert_eq!(out.len(), 2 + 1024 * 130 + 1023);
        let back: Vec<String> = serde_json::from_str(&out).unwrap();
        assert_eq!(back, names);
    }

    #[test]
    fn shutdown_event() {
        let v: Value = serde_json::from_str(&server_shutdown_event(1770123456789)).unwrap();
        assert_eq!(v, json!({"e": "serverShutdown", "E": 1770123456789u64}));
    }
}
