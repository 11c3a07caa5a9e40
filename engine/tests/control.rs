//! In-band SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS through the real binary.
mod common;

use common::*;
use serde_json::json;
use tungstenite::Message;

#[test]
fn subscribe_unsubscribe_list() {
    let server = Server::start(&["--max-topics-per-connection", "3"]);
    let (mut s, _) = server.ws("/ws/a");
    assert_eq!(
        control(&mut s, r#"{"method":"LIST_SUBSCRIPTIONS","id":1}"#),
        json!({"result":["a"],"id":1})
    );
    assert_eq!(
        control(
            &mut s,
            r#"{"method":"SUBSCRIBE","params":["b","c"],"id":2}"#
        ),
        json!({"result":null,"id":2})
    );
    assert_eq!(server.post("c", "text/plain", b"to-c", ""), 204);
    assert_eq!(next_text(&mut s), "to-c");
    let r = control(&mut s, r#"{"method":"SUBSCRIBE","params":["d"],"id":3}"#);
    assert_eq!(r["error"]["code"], 4, "{r}");
    assert_eq!(r["id"], 3);
    assert_eq!(
        control(
            &mut s,
            r#"{"method":"UNSUBSCRIBE","params":["a","c"],"id":4}"#
        ),
        json!({"result":null,"id":4})
    );
    assert_eq!(
        control(&mut s, r#"{"method":"LIST_SUBSCRIPTIONS","id":5}"#),
        json!({"result":["b"],"id":5})
    );
    // Unsubscribed topics no longer deliver: the next message seen is the one on "b".
    assert_eq!(server.post("a", "text/plain", b"to-a", ""), 204);
    assert_eq!(server.post("b", "text/plain", b"to-b", ""), 204);
    assert_eq!(next_text(&mut s), "to-b");
}

#[test]
fn control_errors() {
    let server = Server::start(&[]);
    let (mut s, _) = server.ws("/stream?streams=x");
    // Binance's codes: 3 invalid JSON, 2 invalid request; shardcast's 5 invalid stream name.
    let r = control(&mut s, "{nope");
    assert_eq!(r["error"]["code"], 3, "{r}");
    let r = control(&mut s, r#"{"method":"DANCE","id":7}"#);
    assert_eq!(
        (r["error"]["code"].clone(), r["id"].clone()),
        (json!(2), json!(7))
    );
    let r = control(
        &mut s,
        r#"{"method":"SUBSCRIBE","params":["bad topic"],"id":8}"#,
    );
    assert_eq!(r["error"]["code"], 5);
    assert!(
        r["error"]["msg"].as_str().unwrap().contains("bad topic"),
        "{r}"
    );
    let r = control(&mut s, r#"{"method":"SUBSCRIBE","params":[1],"id":9}"#);
    assert_eq!(r["error"]["code"], 2);
    assert_eq!(
        control(&mut s, r#"{"method":"LIST_SUBSCRIPTIONS","id":10}"#)["result"],
        json!(["x"])
    );
    // Binary messages from subscribers are ignored, the connection stays usable.
    s.send(Message::binary(vec![1u8])).unwrap();
    assert_eq!(
        control(&mut s, r#"{"method":"LIST_SUBSCRIPTIONS","id":11}"#)["id"],
        11
    );
}
