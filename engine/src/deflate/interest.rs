//! Which topics some connection that negotiated permessage-deflate reads, anywhere in the
//! process: the publisher's cheap test for "is a compressed variant worth building?".
//!
//! Each participant (shard, NATS bridge) keeps one table. A shard counts its own compressing
//! subscribers per topic and wire variant; when the count leaves or returns to zero it tells
//! every other participant (a mesh notice, like the NATS bridge's interest notices), which
//! counts the shards that have any. So a publish asks one hash lookup on its own shard, no
//! shared state, no atomics: `local > 0 || shards > 0`.
//!
//! Notices travel the same FIFO rings as messages, so a subscriber that arrives on shard B
//! may miss compressed variants of the messages shard A publishes before B's notice reaches
//! it: it then gets the plain frames, which RFC 7692 allows for any message. Never wrong, at
//! worst briefly uncompressed.

use std::collections::HashMap;
use std::sync::Arc;

use shardcast_proto::MessageKind;

/// The wire variant a connection reads: the plain frame (`/ws`, `/room`, and binary messages
/// on `/stream`) or the `/stream` wrapper (text messages on `/stream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `frame`.
    Plain = 0,
    /// `stream_frame`.
    Stream = 1,
}

impl Variant {
    /// The variant a connection in `stream_mode` reads (for text messages).
    pub fn of(stream_mode: bool) -> Variant {
        if stream_mode {
            Variant::Stream
        } else {
            Variant::Plain
        }
    }
}

/// Which compressed variants a message needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// The compressed plain frame.
    pub frame: bool,
    /// The compressed `/stream` wrapper.
    pub stream_frame: bool,
}

impl Want {
    /// Nothing to build.
    pub fn none(self) -> bool {
        !self.frame && !self.stream_frame
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// This participant's compressing subscribers, per variant.
    local: [u32; 2],
    /// Other shards with any, per variant.
    shards: [u32; 2],
}

/// The interest table of one participant; see the module docs.
#[derive(Debug, Default)]
pub struct Interest {
    topics: HashMap<Arc<str>, Counts>,
}

impl Interest {
    /// A local compressing subscriber of `topic` reading `variant` arrived (`on`) or left.
    /// True when this participant's interest changed (first one in, last one out): the
    /// caller tells the others.
    pub fn local(&mut self, topic: &Arc<str>, variant: Variant, on: bool) -> bool {
        let v = variant as usize;
        if on {
            let c = self.topics.entry(topic.clone()).or_default();
            c.local[v] += 1;
            return c.local[v] == 1;
        }
        let Some(c) = self.topics.get_mut(topic) else {
            return false;
        };
        if c.local[v] == 0 {
            return false;
        }
        c.local[v] -= 1;
        let changed = c.local[v] == 0;
        self.prune(topic);
        changed
    }

    /// Another shard got its first (`on`) or lost its last compressing subscriber of `topic`
    /// reading `variant`.
    pub fn remote(&mut self, topic: &Arc<str>, variant: Variant, on: bool) {
        let v = variant as usize;
        if on {
            self.topics.entry(topic.clone()).or_default().shards[v] += 1;
        } else if let Some(c) = self.topics.get_mut(topic) {
            c.shards[v] = c.shards[v].saturating_sub(1);
            self.prune(topic);
        }
    }

    fn prune(&mut self, topic: &str) {
        if self
            .topics
            .get(topic)
            .is_some_and(|c| c.local == [0, 0] && c.shards == [0, 0])
        {
            self.topics.remove(topic);
        }
    }

    /// The compressed variants a message of `kind` to `topic` needs. `/stream` connections
    /// read binary messages as the plain frame.
    pub fn want(&self, topic: &str, kind: MessageKind) -> Want {
        if self.topics.is_empty() {
            return Want::default();
        }
        let Some(c) = self.topics.get(topic) else {
            return Want::default();
        };
        let any = |v: Variant| c.local[v as usize] > 0 || c.shards[v as usize] > 0;
        match kind {
            MessageKind::Text => Want {
                frame: any(Variant::Plain),
                stream_frame: any(Variant::Stream),
            },
            MessageKind::Binary => Want {
                frame: any(Variant::Plain) || any(Variant::Stream),
                stream_frame: false,
            },
        }
    }

    /// Topics with any interest (for tests and gauges).
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// No interest at all.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_in_last_out_and_remote_counts() {
        let t: Arc<str> = Arc::from("t");
        let mut i = Interest::default();
        assert!(i.want("t", MessageKind::Text).none());
        assert!(i.local(&t, Variant::Plain, true));
        assert!(
            !i.local(&t, Variant::Plain, true),
            "second subscriber: no notice"
        );
        assert_eq!(
            i.want("t", MessageKind::Text),
            Want {
                frame: true,
                stream_frame: false
            }
        );
        assert!(!i.local(&t, Variant::Plain, false));
        assert!(i.local(&t, Variant::Plain, false), "last one out");
        assert!(!i.local(&t, Variant::Plain, false), "underflow ignored");
        assert!(i.is_empty());
        // A remote /stream reader: text needs the wrapper, binary the plain frame.
        i.remote(&t, Variant::Stream, true);
        i.remote(&t, Variant::Stream, true);
        assert_eq!(
            i.want("t", MessageKind::Text),
            Want {
                frame: false,
                stream_frame: true
            }
        );
        assert_eq!(
            i.want("t", MessageKind::Binary),
            Want {
                frame: true,
                stream_frame: false
            }
        );
        assert!(i.want("other", MessageKind::Text).none());
        i.remote(&t, Variant::Stream, false);
        assert_eq!(i.len(), 1);
        i.remote(&t, Variant::Stream, false);
        i.remote(&t, Variant::Stream, false);
        assert!(i.is_empty());
    }
}
