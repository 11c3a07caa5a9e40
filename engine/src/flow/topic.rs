//! Topic names and the shard-local topic table (topic → subscribers).

use std::collections::HashMap;
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

/// Subscribers of one topic: a dense Vec for fan-out; `meta` is whatever the owner derives once
/// per live topic. There is no index: each subscriber remembers its position (returned by
/// [`TopicTable::insert`]), so removal is a swap-remove in O(1) and costs no memory per
/// subscription beyond the key in the Vec.
#[derive(Debug)]
struct Subscribers<K, V> {
    name: Arc<str>,
    list: Vec<K>,
    meta: V,
}

/// Shard-local map from topic to subscriber keys (connection slots), plus one value `V` per
/// topic computed when the topic gets its first subscriber (the shard keeps the topic's
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

impl<K: Copy + Eq> TopicTable<K> {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K: Copy + Eq, V> TopicTable<K, V> {
    /// Add `key` to `topic` (the caller knows it is not subscribed yet), computing the topic's
    /// value with `meta` if this is its first subscriber. Returns the topic's shared name,
    /// `key`'s position in the topic (keep it for [`remove_at`](Self::remove_at)) and whether
    /// the topic is new.
    pub fn insert(
        &mut self,
        topic: &str,
        key: K,
        meta: impl FnOnce(&str) -> V,
    ) -> (Arc<str>, u32, bool) {
        if let Some(subs) = self.topics.get_mut(topic) {
            subs.list.push(key);
            return (subs.name.clone(), (subs.list.len() - 1) as u32, false);
        }
        let name: Arc<str> = Arc::from(topic);
        self.topics.insert(
            name.clone(),
            Subscribers {
                name: name.clone(),
                list: vec![key],
                meta: meta(topic),
            },
        );
        (name, 0, true)
    }

    /// Remove the subscriber at `pos` of `topic`. Returns the key that moved into `pos` (its
    /// owner must remember the new position) and whether the topic is gone (no subscriber
    /// left).
    pub fn remove_at(&mut self, topic: &str, pos: u32) -> (Option<K>, bool) {
        let Some(subs) = self.topics.get_mut(topic) else {
            return (None, false);
        };
        let pos = pos as usize;
        if pos >= subs.list.len() {
            return (None, false);
        }
        subs.list.swap_remove(pos);
        let moved = subs.list.get(pos).copied();
        if subs.list.is_empty() {
            self.topics.remove(topic);
            return (None, true);
        }
        (moved, false)
    }

    /// Subscribers of `topic` (empty if none), for fan-out.
    pub fn subscribers(&self, topic: &str) -> &[K] {
        self.topics.get(topic).map_or(&[], |s| &s.list)
    }

    /// The shared name of a live topic (to reuse its `Arc<str>` in envelopes).
    pub fn name(&self, topic: &str) -> Option<Arc<str>> {
        self.topics.get(topic).map(|s| s.name.clone())
    }

    /// Everything fan-out needs about a live topic in one lookup: its shared name, its
    /// subscribers and its value.
    pub fn lookup(&self, topic: &str) -> Option<(&Arc<str>, &[K], &V)> {
        self.topics
            .get(topic)
            .map(|s| (&s.name, s.list.as_slice(), &s.meta))
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

    /// A model of the owner's side: every key remembers its position per topic.
    struct Owner {
        table: TopicTable<u32>,
        pos: std::collections::HashMap<(String, u32), u32>,
    }

    impl Owner {
        fn sub(&mut self, topic: &str, key: u32) -> bool {
            if self.pos.contains_key(&(topic.to_owned(), key)) {
                return false;
            }
            let (_, p, _) = self.table.insert(topic, key, |_| ());
            self.pos.insert((topic.to_owned(), key), p);
            true
        }
        fn unsub(&mut self, topic: &str, key: u32) -> bool {
            let Some(p) = self.pos.remove(&(topic.to_owned(), key)) else {
                return false;
            };
            if let (Some(moved), _) = self.table.remove_at(topic, p) {
                self.pos.insert((topic.to_owned(), moved), p);
            }
            true
        }
    }

    #[test]
    fn insert_remove_swap_and_positions() {
        let mut t: TopicTable<u32> = TopicTable::new();
        for k in 0..5u32 {
            let (name, pos, first) = t.insert("a", k, |_| ());
            assert_eq!((&*name, pos, first), ("a", k, k == 0));
        }
        assert_eq!(
            t.remove_at("a", 1),
            (Some(4), false),
            "4 moved into position 1"
        );
        assert_eq!(t.subscribers("a"), &[0, 4, 2, 3]);
        assert_eq!(
            t.remove_at("a", 3),
            (None, false),
            "the last one: nothing moves"
        );
        assert_eq!(t.remove_at("a", 9), (None, false), "out of range");
        assert_eq!(t.remove_at("zzz", 0), (None, false));
        for _ in 0..2 {
            assert!(!t.remove_at("a", 0).1);
        }
        assert_eq!(t.remove_at("a", 0), (None, true), "empty topic dropped");
        assert!(t.is_empty() && t.name("a").is_none());
    }

    #[test]
    fn model_check_against_hashset() {
        use std::collections::HashSet;
        let mut o = Owner {
            table: TopicTable::new(),
            pos: Default::default(),
        };
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
                assert_eq!(o.sub(&name, key), model.insert((topic, key)));
            } else {
                assert_eq!(o.unsub(&name, key), model.remove(&(topic, key)));
            }
        }
        for topic in 0..4u8 {
            let name = format!("t{topic}");
            let list = o.table.subscribers(&name).to_vec();
            for (i, k) in list.iter().enumerate() {
                assert_eq!(o.pos[&(name.clone(), *k)], i as u32, "positions stay exact");
            }
            let mut got = list;
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
