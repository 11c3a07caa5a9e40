//! Which shards want which topics, and which topics are paused: the bridge's bookkeeping for
//! interest-based subscriptions. Plain data, no I/O, so the transitions are unit-tested.

use std::collections::HashMap;
use std::sync::Arc;

/// What a change of interest asks of the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The first shard became interested: subscribe the subject; the subscription is current
    /// while [`Interest::is_current`] holds for this generation.
    Subscribe(u64),
    /// The last shard lost interest: drop the subscription.
    Unsubscribe,
    /// Nothing to do on the NATS side.
    None,
}

#[derive(Debug)]
struct Entry {
    /// Interested shards (few: a Vec beats a set).
    shards: Vec<usize>,
    /// Generation of the subscription made for this run of interest.
    generation: u64,
}

/// Interested shards per topic, and per topic how many shards hold it paused.
#[derive(Debug, Default)]
pub struct Interest {
    topics: HashMap<Arc<str>, Entry>,
    paused: HashMap<Arc<str>, usize>,
    /// Generations never repeat, so a subscription made for an earlier run of interest (on,
    /// off, on again) is recognised as stale when it completes.
    next_generation: u64,
}

impl Interest {
    /// Shard `shard` got its first subscriber of `topic` (`on`) or lost its last one.
    pub fn set(&mut self, topic: &Arc<str>, shard: usize, on: bool) -> Change {
        if on {
            let generation = &mut self.next_generation;
            let entry = self.topics.entry(topic.clone()).or_insert_with(|| {
                *generation += 1;
                Entry {
                    shards: Vec::new(),
                    generation: *generation,
                }
            });
            if entry.shards.contains(&shard) {
                return Change::None;
            }
            entry.shards.push(shard);
            if entry.shards.len() == 1 {
                Change::Subscribe(entry.generation)
            } else {
                Change::None
            }
        } else {
            let Some(entry) = self.topics.get_mut(topic) else {
                return Change::None;
            };
            entry.shards.retain(|&s| s != shard);
            if entry.shards.is_empty() {
                self.topics.remove(topic);
                Change::Unsubscribe
            } else {
                Change::None
            }
        }
    }

    /// The shards interested in `topic` (empty if none).
    pub fn shards(&self, topic: &str) -> &[usize] {
        self.topics.get(topic).map_or(&[], |e| &e.shards)
    }

    /// True if a subscription of `generation` still serves the current interest in `topic`.
    pub fn is_current(&self, topic: &str, generation: u64) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|e| e.generation == generation)
    }

    /// Topics with at least one interested shard.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no shard is interested in anything.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// One more (`up`) or one fewer shard holds `topic` paused. Returns the new paused state
    /// when it changed (0 → 1 holders: `Some(true)`, 1 → 0: `Some(false)`).
    pub fn pause(&mut self, topic: &Arc<str>, up: bool) -> Option<bool> {
        if up {
            let n = self.paused.entry(topic.clone()).or_insert(0);
            *n += 1;
            (*n == 1).then_some(true)
        } else {
            let n = self.paused.get_mut(topic)?;
            *n -= 1;
            if *n == 0 {
                self.paused.remove(topic);
                Some(false)
            } else {
                None
            }
        }
    }

    /// True while some shard holds `topic` paused.
    pub fn is_paused(&self, topic: &str) -> bool {
        self.paused.contains_key(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_at_first_shard_unsubscribe_at_last() {
        let mut i = Interest::default();
        let t: Arc<str> = Arc::from("t");
        let Change::Subscribe(g1) = i.set(&t, 0, true) else {
            panic!("first interest subscribes")
        };
        assert_eq!(i.set(&t, 1, true), Change::None);
        assert_eq!(i.set(&t, 1, true), Change::None, "repeated notice");
        assert_eq!(i.shards("t"), &[0, 1]);
        assert_eq!(i.set(&t, 0, false), Change::None);
        assert!(i.is_current("t", g1));
        assert_eq!(i.set(&t, 1, false), Change::Unsubscribe);
        assert!(i.is_empty() && !i.is_current("t", g1));
        assert_eq!(i.set(&t, 1, false), Change::None, "unknown topic");
        let Change::Subscribe(g2) = i.set(&t, 1, true) else {
            panic!("interest again subscribes again")
        };
        assert_ne!(g1, g2);
        assert!(!i.is_current("t", g1), "the earlier subscription is stale");
        assert!(i.is_current("t", g2));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn pause_counts_shards() {
        let mut i = Interest::default();
        let t: Arc<str> = Arc::from("t");
        assert_eq!(i.pause(&t, true), Some(true));
        assert_eq!(i.pause(&t, true), None);
        assert!(i.is_paused("t") && !i.is_paused("u"));
        assert_eq!(i.pause(&t, false), None);
        assert_eq!(i.pause(&t, false), Some(false));
        assert!(!i.is_paused("t"));
        assert_eq!(i.pause(&t, false), None, "resume of an unpaused topic");
    }
}
