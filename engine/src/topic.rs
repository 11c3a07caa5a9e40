//! Topic names and the shard-local topic table (topic → subscribers).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Longest topic name in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Check a topic name: 1..=128 bytes of ASCII `[A-Za-z0-9._:@-]`.
pub fn validate(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic is empty".to_owned());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic is {} bytes, the limit is {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        return Err(format!(
            "topic contains {c:?}; allowed are A-Z a-z 0-9 . _ : @ -"
        ));
    }
    Ok(())
}

/// Subscribers of one topic: a dense Vec for fan-out plus an index map so removal is a
/// swap-remove in O(1); `meta` is whatever the owner derives once per live topic.
#[derive(Debug)]
struct Subscribers<K, V> {
    list: Vec<K>,
    index: HashMap<K, usize>,
    meta: V,
}

/// Shard-local map from topic to subscriber keys (connection ids), plus one value `V` per
/// topic computed when the topic gets its first subscriber (the hub keeps the topic's
/// resolved policy there, so fan-out never re-matches patterns). Topics with no subscribers
/// are dropped, so the table only holds live topics.
#[derive(Debug)]
pub struct TopicTable<K, V = ()> {
    topics: HashMap<Arc<str>, Subscribers<K, V>>,
}

impl<K, V> Default for TopicTable<K, V> {
    fn default() -> Self {
        Self {
            topics: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> TopicTable<K> {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `key` to `topic`; returns false if it was already subscribed.
    pub fn subscribe(&mut self, topic: &str, key: K) -> bool {
        self.subscribe_with(topic, key, |_| ())
    }
}

impl<K: Copy + Eq + Hash, V> TopicTable<K, V> {
    /// Add `key` to `topic`, computing the topic's value with `meta` if this is its first
    /// subscriber; returns false if `key` was already subscribed.
    pub fn subscribe_with(&mut self, topic: &str, key: K, meta: impl FnOnce(&str) -> V) -> bool {
        let subs = match self.topics.get_mut(topic) {
            Some(s) => s,
            None => self
                .topics
                .entry(Arc::from(topic))
                .or_insert_with(|| Subscribers {
                    list: Vec::new(),
                    index: HashMap::new(),
                    meta: meta(topic),
                }),
        };
        if subs.index.contains_key(&key) {
            return false;
        }
        subs.index.insert(key, subs.list.len());
        subs.list.push(key);
        true
    }

    /// Remove `key` from `topic`; returns false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str, key: K) -> bool {
        let Some(subs) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(pos) = subs.index.remove(&key) else {
            return false;
        };
        subs.list.swap_remove(pos);
        if let Some(&moved) = subs.list.get(pos) {
            subs.index.insert(moved, pos);
        }
        if subs.list.is_empty() {
            self.topics.remove(topic);
        }
        true
    }

    /// True if `key` is subscribed to `topic` (O(1)).
    pub fn contains(&self, topic: &str, key: K) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|s| s.index.contains_key(&key))
    }

    /// Subscribers of `topic` (empty if none), for fan-out.
    pub fn subscribers(&self, topic: &str) -> &[K] {
        self.topics.get(topic).map_or(&[], |s| &s.list)
    }

    /// The shared name of a live topic (to reuse its `Arc<str>` in envelopes).
    pub fn name(&self, topic: &str) -> Option<Arc<str>> {
        self.topics.get_key_value(topic).map(|(k, _)| k.clone())
    }

    /// Everything fan-out needs about a live topic in one lookup: its shared name, its
    /// subscribers and its value.
    pub fn lookup(&self, topic: &str) -> Option<(&Arc<str>, &[K], &V)> {
        self.topics
            .get_key_value(topic)
            .map(|(name, s)| (name, s.list.as_slice(), &s.meta))
    }

    /// Number of topics with at least one subscriber.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no topic has subscribers.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("btcusdt@trade").is_ok());
        assert!(validate("a.b_c:d-E9").is_ok());
        assert!(validate(&"x".repeat(128)).is_ok());
        assert!(validate(&"x".repeat(129)).unwrap_err().contains("128"));
        assert!(validate("").unwrap_err().contains("empty"));
        assert!(validate("a/b").unwrap_err().contains("'/'"));
        assert!(validate("é").is_err());
        assert!(validate("a b").is_err());
    }

    #[test]
    fn subscribe_unsubscribe_swap_remove() {
        let mut t = TopicTable::new();
        for k in 0..5u32 {
            assert!(t.subscribe("a", k));
        }
        assert!(!t.subscribe("a", 3));
        assert!(t.contains("a", 3) && !t.contains("a", 9) && !t.contains("zz", 3));
        assert!(t.subscribe("b", 1));
        assert_eq!(t.len(), 2);
        assert!(t.unsubscribe("a", 1));
        assert!(!t.unsubscribe("a", 1));
        assert!(t.unsubscribe("a", 4));
        let mut s = t.subscribers("a").to_vec();
        s.sort();
        assert_eq!(s, vec![0, 2, 3]);
        // The index stays consistent after swap-removes: every remaining key can be removed.
        for k in [3, 0, 2] {
            assert!(t.unsubscribe("a", k));
        }
        assert!(t.subscribers("a").is_empty());
        assert_eq!(t.len(), 1, "empty topic dropped");
        assert!(t.name("b").is_some() && t.name("a").is_none());
        assert!(t.unsubscribe("b", 1));
        assert!(t.is_empty());
        assert!(!t.unsubscribe("zzz", 1));
    }

    #[test]
    fn model_check_against_hashset() {
        use std::collections::HashSet;
        let mut t = TopicTable::new();
        let mut model: HashSet<(u8, u32)> = HashSet::new();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let topic = (x % 4) as u8;
            let key = ((x >> 8) % 50) as u32;
            let name = format!("t{topic}");
            if x & 1 << 40 == 0 {
                assert_eq!(t.subscribe(&name, key), model.insert((topic, key)));
            } else {
                assert_eq!(t.unsubscribe(&name, key), model.remove(&(topic, key)));
            }
        }
        for topic in 0..4u8 {
            let mut got = t.subscribers(&format!("t{topic}")).to_vec();
            got.sort();
            let mut want: Vec<u32> = model
                .iter()
                .filter(|(tp, _)| *tp == topic)
                .map(|(_, k)| *k)
                .collect();
            want.sort();
            assert_eq!(got, want);
        }
    }
}
