//! Compression settings: the on/off switch, the size threshold, the level and the per-topic
//! rules (`--compression-topic 'PATTERN=on|off'`, globs, first match wins, default on).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flow::policy::glob;

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Switch {
    /// True for [`Switch::On`].
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// Default `compression_min_bytes`: smaller messages gain too little to be worth a compressed
/// frame (a 100-byte JSON event shrinks by ~20%, a header's worth of bytes, and every client
/// pays an inflate per message).
pub const DEFAULT_MIN_BYTES: usize = 128;

/// Default `compression_level` (libdeflate's 1–12 scale; see docs/BENCHMARKS.md, "Compression").
pub const DEFAULT_LEVEL: u8 = 6;

/// One `--compression-topic` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Glob over topic names (`*` any run, `?` one byte).
    pub pattern: String,
    /// Whether matching topics are compressed.
    pub compression: Switch,
}

impl FromStr for TopicRule {
    type Err = String;

    /// `PATTERN=on` or `PATTERN=off`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, switch) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=on or PATTERN=off"))?;
        let compression = match switch.trim() {
            "on" => Switch::On,
            "off" => Switch::Off,
            other => return Err(format!("{s:?}: {other:?} is neither on nor off")),
        };
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("{s:?}: empty pattern"));
        }
        Ok(TopicRule {
            pattern: pattern.to_owned(),
            compression,
        })
    }
}

/// The resolved settings the shards use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// permessage-deflate is offered (negotiated with clients that ask).
    pub enabled: bool,
    /// Messages shorter than this are never compressed.
    pub min_bytes: usize,
    /// Compression level, 1–12.
    pub level: u8,
    /// Per-topic rules, first match wins; unmatched topics are compressed.
    pub rules: Vec<TopicRule>,
}

impl Settings {
    /// Whether messages of `topic` may be compressed (the rules; not the switch or the size).
    pub fn topic_enabled(&self, topic: &str) -> bool {
        self.rules
            .iter()
            .find(|r| glob(r.pattern.as_bytes(), topic.as_bytes()))
            .is_none_or(|r| r.compression.is_on())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_first_match_wins() {
        let r: TopicRule = "*.bin=off".parse().unwrap();
        assert_eq!((r.pattern.as_str(), r.compression), ("*.bin", Switch::Off));
        assert!("x".parse::<TopicRule>().is_err());
        assert!("x=maybe".parse::<TopicRule>().is_err());
        assert!("=on".parse::<TopicRule>().is_err());
        let s = Settings {
            enabled: true,
            min_bytes: 0,
            level: 1,
            rules: vec![
                "video.hd=on".parse().unwrap(),
                "video.*=off".parse().unwrap(),
            ],
        };
        assert!(s.topic_enabled("video.hd"));
        assert!(!s.topic_enabled("video.sd"));
        assert!(s.topic_enabled("trades"));
    }
}
