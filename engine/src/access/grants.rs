//! What one identity may do: topic globs it may subscribe to and publish into.
//!
//! Contract: patterns are the same globs as `--topic-policy` (`*` any run, `?` one byte;
//! [`crate::flow::policy::glob`]), checked in order, linear in the number of patterns and the topic
//! length. [`Grants::all`] (trusted peers, the static publish token) allows everything. A
//! connection keeps its grants behind one `Rc` (8 bytes): in-band SUBSCRIBE is checked
//! against them; connections without a credential keep none and may use public topics only.

use std::rc::Rc;

use crate::flow::policy::glob;

/// Topic globs for subscribing and publishing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Everything is allowed (patterns ignored).
    all: bool,
    /// Globs of topics that may be subscribed.
    subscribe: Vec<Box<str>>,
    /// Globs of topics that may be published into.
    publish: Vec<Box<str>>,
}

thread_local! {
    static ALL: Rc<Grants> = Rc::new(Grants { all: true, ..Grants::default() });
}

impl Grants {
    /// Grants from two lists of globs.
    pub fn new(subscribe: Vec<String>, publish: Vec<String>) -> Grants {
        let boxed = |v: Vec<String>| v.into_iter().map(String::into_boxed_str).collect();
        Grants {
            all: false,
            subscribe: boxed(subscribe),
            publish: boxed(publish),
        }
    }

    /// Everything allowed; one shared instance per thread.
    pub fn all() -> Rc<Grants> {
        ALL.with(Rc::clone)
    }

    /// True for [`Grants::all`].
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// May subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.all || matches_any(&self.subscribe, topic)
    }

    /// May publish into `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.all || matches_any(&self.publish, topic)
    }

    /// Heap bytes these grants hold (for the per-connection memory formula).
    pub fn heap_bytes(&self) -> usize {
        let list =
            |v: &[Box<str>]| std::mem::size_of_val(v) + v.iter().map(|p| p.len()).sum::<usize>();
        list(&self.subscribe) + list(&self.publish)
    }
}

/// True if any of `patterns` matches `topic`.
pub fn matches_any<S: AsRef<str>>(patterns: &[S], topic: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob(p.as_ref().as_bytes(), topic.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_per_direction() {
        let g = Grants::new(
            vec!["ticker.*".into(), "btcusdt@trade".into()],
            vec!["chat.room?".into()],
        );
        assert!(g.may_subscribe("ticker.btc"));
        assert!(g.may_subscribe("btcusdt@trade"));
        assert!(!g.may_subscribe("btcusdt@trades"));
        assert!(
            !g.may_subscribe("chat.room1"),
            "publish grants do not subscribe"
        );
        assert!(g.may_publish("chat.room1"));
        assert!(!g.may_publish("chat.room12"));
        assert!(!g.may_publish("ticker.btc"));
        assert!(!g.is_all());
        assert_eq!(g.heap_bytes(), 3 * 16 + 8 + 13 + 10);
    }

    #[test]
    fn all_and_none() {
        let all = Grants::all();
        assert!(all.is_all() && all.may_publish("x") && all.may_subscribe("y"));
        assert!(Rc::ptr_eq(&all, &Grants::all()), "one shared instance");
        let none = Grants::default();
        assert!(!none.may_publish("x") && !none.may_subscribe("x"));
        assert!(matches_any(&["*"], "anything"));
        assert!(!matches_any::<&str>(&[], "anything"));
    }
}
