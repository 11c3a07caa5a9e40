//! Per-topic back-pressure policies: what happens when a connection's send queue goes over
//! its high-water mark, chosen by the topic of the frame being queued. Patterns are globs
//! (`*` any run of bytes, `?` one byte); the first matching pattern wins, else the default.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The action above the high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Close the connection with 1013 "try again later" (sequenced streams must not lose a
    /// message silently).
    Evict,
    /// Keep only the newest message of the topic in the queue (tickers, snapshots).
    Conflate,
    /// Keep only the newest `keep` messages of the topic.
    DropOldest,
    /// Stop reading from the topic's WebSocket publishers until the queue is below the
    /// low-water mark; HTTP publishers get 503.
    Pause,
}

impl Action {
    /// Every action, in counter order.
    pub const ALL: [Action; 4] = [
        Action::Evict,
        Action::Conflate,
        Action::DropOldest,
        Action::Pause,
    ];

    /// Stable name (config, /stats, /metrics).
    pub fn name(self) -> &'static str {
        match self {
            Action::Evict => "evict",
            Action::Conflate => "conflate",
            Action::DropOldest => "drop-oldest",
            Action::Pause => "pause",
        }
    }
}

/// Default high-water mark per connection queue.
pub const DEFAULT_HIGH_WATER: usize = 1 << 20;
/// Default number of messages `drop-oldest` keeps.
pub const DEFAULT_KEEP: usize = 16;

/// A resolved policy: every field set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Action above the high-water mark.
    pub policy: Action,
    /// Queue bytes above which the action applies.
    pub high_water_bytes: usize,
    /// Queue bytes below which a slow connection counts as caught up (pause released).
    pub low_water_bytes: usize,
    /// Messages `drop-oldest` keeps.
    pub keep: usize,
}

/// A configured rule with its limits resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPolicy {
    /// Glob over topic names.
    pub pattern: String,
    /// The resolved policy.
    #[serde(flatten)]
    pub resolved: Policy,
}

impl Policy {
    /// Fill unset limits: high from `default_high`, low a quarter of high, keep 16.
    pub fn resolve(
        policy: Action,
        high: Option<usize>,
        low: Option<usize>,
        keep: Option<usize>,
        default_high: usize,
    ) -> Result<Policy, String> {
        let high = high.unwrap_or(default_high);
        let low = low.unwrap_or(high / 4);
        let keep = keep.unwrap_or(DEFAULT_KEEP);
        if low > high {
            return Err(format!(
                "low_water_bytes {low} above high_water_bytes {high}"
            ));
        }
        if keep == 0 {
            return Err("keep must be at least 1".to_owned());
        }
        Ok(Policy {
            policy,
            high_water_bytes: high,
            low_water_bytes: low,
            keep,
        })
    }
}

/// The rules in order plus the default; [`Policies::lookup`] is what the hub calls per
/// delivered message (not per subscriber).
#[derive(Clone, Debug)]
pub struct Policies {
    rules: Vec<TopicPolicy>,
    default: Policy,
}

impl Policies {
    /// Rules (first match wins) and the default policy.
    pub fn new(rules: Vec<TopicPolicy>, default: Policy) -> Self {
        Policies { rules, default }
    }

    /// The policy for `topic`.
    pub fn lookup(&self, topic: &str) -> &Policy {
        self.rules
            .iter()
            .find(|r| glob(r.pattern.as_bytes(), topic.as_bytes()))
            .map_or(&self.default, |r| &r.resolved)
    }

    /// The default policy.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }
}

/// Glob match: `*` matches any run of bytes (including none), `?` exactly one byte, anything
/// else itself. Iterative with one backtrack point, so linear-ish and never recursive.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("ticker.*", "ticker.btc"));
        assert!(m("ticker.*", "ticker."));
        assert!(!m("ticker.*", "ticker"));
        assert!(m("*@trade", "btcusdt@trade"));
        assert!(!m("*@trade", "btcusdt@trades"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("a*b*c", "aXXbYYbZc"));
        assert!(!m("a*b*c", "aXXbYYbZ"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("**x", "x"));
        assert!(m("*a*", "bab"));
    }

    #[test]
    fn first_match_wins_and_defaults_fill() {
        let d = Policy::resolve(Action::Evict, None, None, None, 1 << 20).unwrap();
        assert_eq!(d.low_water_bytes, 1 << 18);
        assert_eq!(d.keep, 16);
        let rule = |p: &str, a| TopicPolicy {
            pattern: p.to_owned(),
            resolved: Policy::resolve(a, Some(100), None, Some(2), 0).unwrap(),
        };
        let ps = Policies::new(
            vec![rule("a.*", Action::Pause), rule("a*", Action::Conflate)],
            d,
        );
        assert_eq!(ps.lookup("a.x").policy, Action::Pause);
        assert_eq!(ps.lookup("ab").policy, Action::Conflate);
        assert_eq!(ps.lookup("b").policy, Action::Evict);
        assert_eq!(ps.lookup("a.x").low_water_bytes, 25);
        assert!(Policy::resolve(Action::Evict, Some(10), Some(11), None, 0).is_err());
        assert!(Policy::resolve(Action::Evict, None, None, Some(0), 0).is_err());
    }
}
