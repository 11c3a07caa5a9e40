//! Topic ↔ NATS subject mapping and the headers a bridged message carries.
//!
//! A topic is 1..=128 bytes of `[A-Za-z0-9._:@-]` (`topic::validate`). Every one of those
//! characters is valid in a NATS subject, and none is a wildcard (`*`, `>`), so a topic maps to
//! `PREFIX + topic` unchanged, with one exception: NATS splits subjects into tokens at `.` and
//! rejects empty tokens, so a topic with a leading, trailing or doubled dot (`.a`, `a.`, `a..b`)
//! would be an invalid subject. Each empty token becomes `~`, a character topics cannot contain,
//! so the mapping stays injective (no two topics share a subject) and readable.

use shardcast_proto::MessageKind;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "shardcast.";

/// Header naming the host that published a message (its [`origin_id`]).
pub const ORIGIN_HEADER: &str = "Shardcast-Origin";

/// Header carrying the message kind, [`TEXT`] or [`BINARY`], so that text vs binary survives
/// the hop (NATS payloads are plain bytes).
pub const KIND_HEADER: &str = "Shardcast-Kind";

/// Header with the epoch of a message's number on its origin host (continuity: 16 hex digits).
pub const EPOCH_HEADER: &str = "Shardcast-Epoch";

/// Header with a message's number on its origin host (continuity: decimal).
pub const SEQ_HEADER: &str = "Shardcast-Seq";

/// The numbering a message's headers carry, if both are present and valid.
pub fn numbering(epoch: Option<&str>, seq: Option<&str>) -> Option<crate::continuity::Position> {
    let epoch = crate::continuity::Epoch::parse(epoch?).ok()?;
    let seq = seq?.parse::<u64>().ok()?;
    (1..=crate::continuity::MAX_SEQ)
        .contains(&seq)
        .then_some(crate::continuity::Position { epoch, seq })
}

/// [`KIND_HEADER`] value of a text message.
pub const TEXT: &str = "text";

/// [`KIND_HEADER`] value of a binary message.
pub const BINARY: &str = "binary";

/// Check a subject prefix: empty, or one or more non-empty tokens each followed by `.`, with no
/// whitespace, no control characters and no wildcard tokens.
pub fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Ok(());
    }
    let Some(tokens) = prefix.strip_suffix('.') else {
        return Err("nats_subject_prefix must be empty or end with '.'");
    };
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("nats_subject_prefix must not contain whitespace or control characters");
    }
    for token in tokens.split('.') {
        if token.is_empty() {
            return Err(
                "nats_subject_prefix must not contain empty tokens ('..' or a leading '.')",
            );
        }
        if token == "*" || token == ">" {
            return Err("nats_subject_prefix must not contain wildcard tokens (* or >)");
        }
    }
    Ok(())
}

/// The subject of `topic` under `prefix` (see the module docs).
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 2);
    out.push_str(prefix);
    for (i, token) in topic.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(if token.is_empty() { "~" } else { token });
    }
    out
}

/// A fresh id for this process (16 hex digits): the [`ORIGIN_HEADER`] of what it publishes.
/// Random per start (std's `RandomState` keys come from the OS), mixed with the pid, so two
/// hosts, or a host and its restarted self, never share one.
pub fn origin_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// What to do with a message that arrived from NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Deliver it as this kind.
    Deliver(MessageKind),
    /// This host published it (it came back): ignore it, its subscribers already have it.
    Own,
    /// Labelled text but not UTF-8, or an unknown kind: dropped and counted (a text frame
    /// that is not UTF-8 would make every client close with 1007).
    Invalid,
}

/// Classify a message from NATS by its headers. Without a [`KIND_HEADER`] (a publisher that is
/// not shardcast), UTF-8 payloads are text and anything else binary.
pub fn classify(origin: Option<&str>, kind: Option<&str>, payload: &[u8], own: &str) -> Inbound {
    if origin == Some(own) {
        return Inbound::Own;
    }
    let utf8 = || std::str::from_utf8(payload).is_ok();
    match kind {
        Some(BINARY) => Inbound::Deliver(MessageKind::Binary),
        Some(TEXT) if utf8() => Inbound::Deliver(MessageKind::Text),
        Some(_) => Inbound::Invalid,
        None if utf8() => Inbound::Deliver(MessageKind::Text),
        None => Inbound::Deliver(MessageKind::Binary),
    }
}

/// The [`KIND_HEADER`] value for `kind`.
pub fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => TEXT,
        MessageKind::Binary => BINARY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_valid_subjects() {
        assert_eq!(
            subject("shardcast.", "btcusdt@trade"),
            "shardcast.btcusdt@trade"
        );
        assert_eq!(
            subject("shardcast.", "md.btc:usd-1_x"),
            "shardcast.md.btc:usd-1_x"
        );
        assert_eq!(subject("", "a"), "a");
        assert_eq!(subject("p.", ".a"), "p.~.a");
        assert_eq!(subject("p.", "a."), "p.a.~");
        assert_eq!(subject("p.", "a..b"), "p.a.~.b");
        assert_eq!(subject("p.", "."), "p.~.~");
    }

    /// Every valid topic gives a valid subject (no empty token, no wildcard, no whitespace),
    /// and distinct topics give distinct subjects.
    #[test]
    fn mapping_is_valid_and_injective_over_generated_topics() {
        let alphabet = b"a.b_:@-.";
        let mut seen = std::collections::HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 6) as usize;
            let topic: String = (0..len)
                .map(|i| alphabet[((x >> (8 + 5 * i)) % alphabet.len() as u64) as usize] as char)
                .collect();
            crate::flow::topic::validate(&topic).unwrap();
            let s = subject(DEFAULT_PREFIX, &topic);
            for token in s.split('.') {
                assert!(
                    !token.is_empty() && token != "*" && token != ">",
                    "{topic} -> {s}"
                );
            }
            if let Some(other) = seen.insert(s.clone(), topic.clone()) {
                assert_eq!(other, topic, "two topics share subject {s}");
            }
        }
    }

    #[test]
    fn prefixes() {
        for ok in ["", "shardcast.", "a.b.", "eu-1.md."] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "shardcast",
            ".",
            "a..",
            ".a.",
            "a.*.",
            "a.>.",
            "a b.",
            "a\t.",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inbound_kinds_and_own_messages() {
        let own = "00000000000000aa";
        let text = Inbound::Deliver(MessageKind::Text);
        let binary = Inbound::Deliver(MessageKind::Binary);
        assert_eq!(classify(Some(own), Some(TEXT), b"x", own), Inbound::Own);
        assert_eq!(classify(Some("other"), Some(TEXT), b"{}", own), text);
        assert_eq!(classify(Some("other"), Some(BINARY), b"{}", own), binary);
        assert_eq!(classify(None, Some(BINARY), &[0xff], own), binary);
        assert_eq!(classify(None, Some(TEXT), &[0xff], own), Inbound::Invalid);
        assert_eq!(classify(None, Some("json"), b"{}", own), Inbound::Invalid);
        assert_eq!(classify(None, None, b"plain", own), text);
        assert_eq!(classify(None, None, &[0xc3, 0x28], own), binary);
        assert_eq!(kind_name(MessageKind::Text), TEXT);
        assert_eq!(kind_name(MessageKind::Binary), BINARY);
    }

    #[test]
    fn origin_ids_differ() {
        let (a, b) = (origin_id(), origin_id());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
