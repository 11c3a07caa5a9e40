//! `seq`, `since` and `epoch` in a subscriber's URL and in SUBSCRIBE messages.
//!
//! Contract (docs/CONTINUITY.md, "Asking"):
//! - `seq=1` (or `true`) makes the connection sequenced; `seq=0`, `false` or no `seq` leaves it
//!   plain (byte-identical to a server without continuity). Other values: 400.
//! - `since=ENTRY[,ENTRY…]`, each `TOPIC:SEQ` or `TOPIC:SEQ@EPOCH`, split at the **last** `:`
//!   of the entry (topic names may contain `:` and `@`; numbers and epochs contain neither).
//!   `epoch=E` gives the epoch of every entry without one of its own. Every entry needs an
//!   epoch; a number is 0..=2^53−1; an epoch is 16 hex digits; a topic appears at most once
//!   and must be one the request subscribes to. `since` or `epoch` on a plain connection: 400.
//! - Values may be percent-encoded (`URLSearchParams` writes `:` `,` `@` as `%3A` `%2C` `%40`).
//! - In a SUBSCRIBE message the same appear as members next to `params`:
//!   `"since":"a:17,b:40"` (the URL syntax) or `"since":{"a":17,"b":40}`, and `"epoch":"E"`.
//!   Errors there are control errors (code 1); nothing is subscribed.

use serde_json::Value;

use super::{Epoch, Position, Seq, MAX_SEQ};
use crate::flow::topic;
use shardcast_proto::http::query_param;

/// What a subscriber asked for, continuity-wise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Continuity {
    /// Sequenced connection (`seq=1`).
    pub sequenced: bool,
    /// Positions to resume from, by topic, in the order given.
    pub since: Vec<(String, Position)>,
}

impl Continuity {
    /// The position to resume `topic` from, if one was given.
    pub fn since(&self, topic: &str) -> Option<Position> {
        self.since.iter().find(|(t, _)| t == topic).map(|&(_, p)| p)
    }
}

/// Percent-decode a query value (ASCII result only: every valid value here is ASCII).
fn decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(u8::is_ascii)
                .ok_or_else(|| format!("bad percent-encoding in {v:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("bad percent-encoding in {v:?}"))
}

fn parse_epoch(s: &str) -> Result<Epoch, String> {
    Epoch::parse(s).map_err(|_| format!("epoch {s:?} is not 16 hex digits"))
}

fn parse_seq(s: &str, entry: &str) -> Result<Seq, String> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "since entry {entry:?}: {s:?} is not a sequence number"
        ));
    }
    let n: Seq = s
        .parse()
        .map_err(|_| format!("since entry {entry:?}: bad number"))?;
    if n > MAX_SEQ {
        return Err(format!("since entry {entry:?}: {n} is above 2^53-1"));
    }
    Ok(n)
}

/// Parse a `since` list (already percent-decoded) with `epoch` as the default epoch.
pub fn parse_since(list: &str, epoch: Option<Epoch>) -> Result<Vec<(String, Position)>, String> {
    let mut out: Vec<(String, Position)> = Vec::new();
    for entry in list.split(',') {
        let (topic, rest) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("since entry {entry:?} is not TOPIC:SEQ[@EPOCH]"))?;
        topic::validate(topic).map_err(|why| format!("since entry {entry:?}: {why}"))?;
        let (seq, own) = match rest.split_once('@') {
            Some((seq, e)) => (seq, Some(parse_epoch(e)?)),
            None => (rest, None),
        };
        let seq = parse_seq(seq, entry)?;
        let epoch = own.or(epoch).ok_or_else(|| {
            format!("since entry {entry:?} has no epoch (add @EPOCH or an epoch= parameter)")
        })?;
        if out.iter().any(|(t, _)| t == topic) {
            return Err(format!("since names {topic:?} twice"));
        }
        out.push((topic.to_owned(), Position { epoch, seq }));
    }
    Ok(out)
}

fn check_topics(since: &[(String, Position)], topics: &[impl AsRef<str>]) -> Result<(), String> {
    match since
        .iter()
        .find(|(t, _)| !topics.iter().any(|x| x.as_ref() == t))
    {
        Some((t, _)) => Err(format!(
            "since names {t:?}, which this request does not subscribe"
        )),
        None => Ok(()),
    }
}

/// Read `seq`, `since` and `epoch` from a subscriber's query; `topics` are the topics the
/// request subscribes (the `/ws/<topic>` topic or the `streams=` list). Err: the 400 reason.
pub fn from_query(query: Option<&str>, topics: &[String]) -> Result<Continuity, String> {
    let sequenced = match query_param(query, "seq") {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(v) => return Err(format!("seq={v:?}: use seq=1 (or leave it out)")),
    };
    let since = query_param(query, "since");
    let epoch = query_param(query, "epoch");
    if !sequenced {
        if since.is_some() || epoch.is_some() {
            return Err("since= and epoch= need seq=1".to_owned());
        }
        return Ok(Continuity::default());
    }
    let epoch = epoch
        .map(decode)
        .transpose()?
        .map(|e| parse_epoch(&e))
        .transpose()?;
    let since = match since {
        Some(s) if !s.is_empty() => parse_since(&decode(s)?, epoch)?,
        _ => Vec::new(),
    };
    check_topics(&since, topics)?;
    Ok(Continuity { sequenced, since })
}

/// Read `since` and `epoch` from a SUBSCRIBE message (`msg` is the whole JSON object) whose
/// `params` are `topics`, on a connection that is `sequenced` or not. Err: the control error
/// message.
pub fn from_subscribe(
    msg: &Value,
    topics: &[impl AsRef<str>],
    sequenced: bool,
) -> Result<Vec<(String, Position)>, String> {
    let (since, epoch) = (msg.get("since"), msg.get("epoch"));
    if since.is_none() && epoch.is_none() {
        return Ok(Vec::new());
    }
    if !sequenced {
        return Err("since and epoch need a sequenced connection (seq=1)".to_owned());
    }
    let epoch = match epoch {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(parse_epoch(e)?),
        Some(_) => return Err("epoch must be a string of 16 hex digits".to_owned()),
    };
    let since = match since {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => parse_since(s, epoch)?,
        Some(Value::Object(m)) => {
            let mut out = Vec::with_capacity(m.len());
            for (t, v) in m {
                let seq = v
                    .as_u64()
                    .filter(|&n| n <= MAX_SEQ)
                    .ok_or_else(|| format!("since.{t} must be a number in 0..=2^53-1"))?;
                topic::validate(t).map_err(|why| format!("since names {t:?}: {why}"))?;
                let epoch = epoch.ok_or("since needs an epoch member")?;
                out.push((t.clone(), Position { epoch, seq }));
            }
            out
        }
        Some(_) => return Err("since must be a string (a:17,b:40) or an object".to_owned()),
    };
    check_topics(&since, topics)?;
    Ok(since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const E: &str = "3f9c2a17b4e6d801";
    const F: &str = "00000000000000ff";

    fn e(s: &str) -> Epoch {
        Epoch::parse(s).unwrap()
    }

    fn topics(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn plain_connections_stay_plain() {
        for q in [
            None,
            Some("streams=a"),
            Some("seq=0"),
            Some("seq=false&x=1"),
        ] {
            assert_eq!(
                from_query(q, &topics(&["a"])),
                Ok(Continuity::default()),
                "{q:?}"
            );
        }
        assert!(from_query(Some("seq=2"), &[])
            .unwrap_err()
            .contains("seq=1"));
        assert!(from_query(Some("since=a:1"), &topics(&["a"]))
            .unwrap_err()
            .contains("seq=1"));
        assert!(from_query(Some(&format!("epoch={E}")), &[]).is_err());
    }

    #[test]
    fn since_with_a_shared_and_per_topic_epochs() {
        let q = format!("streams=a/b:c/d@x&seq=1&since=a:17,b:c:40@{F},d@x:0&epoch={E}");
        let c = from_query(Some(&q), &topics(&["a", "b:c", "d@x"])).unwrap();
        assert!(c.sequenced);
        assert_eq!(
            c.since,
            vec![
                (
                    "a".into(),
                    Position {
                        epoch: e(E),
                        seq: 17
                    }
                ),
                (
                    "b:c".into(),
                    Position {
                        epoch: e(F),
                        seq: 40
                    }
                ),
                (
                    "d@x".into(),
                    Position {
                        epoch: e(E),
                        seq: 0
                    }
                ),
            ]
        );
        assert_eq!(c.since("b:c").unwrap().seq, 40);
        assert_eq!(c.since("zzz"), None);
        // Fresh sequenced subscription.
        let c = from_query(Some("seq=1"), &topics(&["a"])).unwrap();
        assert!(c.sequenced && c.since.is_empty());
        let c = from_query(Some("seq=true&since="), &topics(&["a"])).unwrap();
        assert!(c.sequenced && c.since.is_empty());
    }

    #[test]
    fn percent_encoded_values() {
        let q = format!("seq=1&since=a%3A17%2Cb%3A4%40{F}&epoch={E}");
        let c = from_query(Some(&q), &topics(&["a", "b"])).unwrap();
        assert_eq!(
            c.since[0],
            (
                "a".into(),
                Position {
                    epoch: e(E),
                    seq: 17
                }
            )
        );
        assert_eq!(
            c.since[1],
            (
                "b".into(),
                Position {
                    epoch: e(F),
                    seq: 4
                }
            )
        );
        assert!(from_query(Some("seq=1&since=a%3"), &topics(&["a"])).is_err());
        assert!(from_query(Some("seq=1&since=a%C3%A9:1"), &topics(&["a"])).is_err());
    }

    #[test]
    fn since_errors() {
        let t = topics(&["a", "b"]);
        let bad = [
            ("seq=1&since=a:17".to_string(), "no epoch"),
            (format!("seq=1&since=a&epoch={E}"), "TOPIC:SEQ"),
            (
                format!("seq=1&since=a:x&epoch={E}"),
                "not a sequence number",
            ),
            (
                format!("seq=1&since=a:-1&epoch={E}"),
                "not a sequence number",
            ),
            (format!("seq=1&since=a:9007199254740992&epoch={E}"), "2^53"),
            (format!("seq=1&since=a:1@zz&epoch={E}"), "16 hex"),
            ("seq=1&since=a:1&epoch=123".to_string(), "16 hex"),
            (format!("seq=1&since=a:1,a:2&epoch={E}"), "twice"),
            (format!("seq=1&since=c:1&epoch={E}"), "does not subscribe"),
            (format!("seq=1&since=a/b:1&epoch={E}"), "allowed are"),
            (format!("seq=1&since=:1&epoch={E}"), "empty"),
            (format!("seq=1&since=a:1,,b:2&epoch={E}"), "TOPIC:SEQ"),
        ];
        for (q, want) in bad {
            let err = from_query(Some(&q), &t).unwrap_err();
            assert!(err.contains(want), "{q}: {err}");
        }
    }

    #[test]
    fn subscribe_members() {
        let t = topics(&["a", "b"]);
        let m =
            json!({"method":"SUBSCRIBE","params":["a","b"],"since":"a:17,b:40","epoch":E,"id":1});
        let s = from_subscribe(&m, &t, true).unwrap();
        assert_eq!(
            s[1],
            (
                "b".into(),
                Position {
                    epoch: e(E),
                    seq: 40
                }
            )
        );
        let m = json!({"method":"SUBSCRIBE","params":["a","b"],"since":{"a":17},"epoch":E,"id":1});
        assert_eq!(
            from_subscribe(&m, &t, true).unwrap(),
            vec![(
                "a".into(),
                Position {
                    epoch: e(E),
                    seq: 17
                }
            )]
        );
        let m = json!({"method":"SUBSCRIBE","params":["a"],"id":1});
        assert_eq!(from_subscribe(&m, &t, false).unwrap(), vec![]);
        let bad = [
            (json!({"since":"a:1","epoch":E}), false, "sequenced"),
            (json!({"since":{"a":1}}), true, "epoch member"),
            (json!({"since":{"a":-1},"epoch":E}), true, "number"),
            (
                json!({"since":{"a":9_007_199_254_740_992u64},"epoch":E}),
                true,
                "number",
            ),
            (
                json!({"since":{"c":1},"epoch":E}),
                true,
                "does not subscribe",
            ),
            (json!({"since":{"a/":1},"epoch":E}), true, "allowed"),
            (json!({"since":[1],"epoch":E}), true, "string"),
            (json!({"since":"a:1","epoch":5}), true, "string"),
            (json!({"since":"a:1"}), true, "no epoch"),
        ];
        for (m, seq, want) in bad {
            let err = from_subscribe(&m, &t, seq).unwrap_err();
            assert!(err.contains(want), "{m}: {err}");
        }
    }
}
