//! One connection's access state, kept out of the idle slot.
//!
//! Contract: the shard's connection slot holds one `Option<Box<ConnAccess>>` (8 bytes, `None`
//! for most connections). The box exists while the connection needs one of: a token's grants
//! (in-band SUBSCRIBE is checked against them; trusted peers and the static token use a flag
//! of the slot instead, public-only connections need nothing), a per-address ticket (only
//! under `--ip-max-connections`), or a rate bucket that is not full (it took a frame recently).
//! [`ConnAccess::is_idle`] says when it can be dropped again: the heartbeat sweep drops it,
//! so a subscriber that only answers pings holds it from a pong until the next sweep.

use std::rc::Rc;

use super::grants::Grants;
use super::rate::{Bucket, Limit};

/// Access state of one connection (24 bytes, boxed).
#[derive(Debug, Default)]
pub struct ConnAccess {
    /// Inbound rate limit state.
    pub bucket: Bucket,
    /// Per-address ticket to release at close (0: none).
    pub ticket: u64,
    /// A token's grants (`None`: public topics, or everything with the slot's flag).
    pub grants: Option<Rc<Grants>>,
}

impl ConnAccess {
    /// Nothing left that `None` would not say as well, at `now_ns`: no grants, no ticket, and
    /// a bucket that is full again under `limit`.
    pub fn is_idle(&self, limit: &Limit, now_ns: u64) -> bool {
        self.ticket == 0 && self.grants.is_none() && self.bucket.is_full(limit, now_ns)
    }
}

/// Charge one inbound frame at `now_ns` to `slot`'s bucket under `limit`, creating the box
/// on the first frame; false when over the limit (the caller closes 1008).
pub fn allow_frame(slot: &mut Option<Box<ConnAccess>>, limit: &Limit, now_ns: u64) -> bool {
    if !limit.is_on() {
        return true;
    }
    slot.get_or_insert_with(Box::default)
        .bucket
        .allow(limit, now_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_only_while_needed() {
        assert_eq!(std::mem::size_of::<ConnAccess>(), 24);
        assert_eq!(std::mem::size_of::<Option<Box<ConnAccess>>>(), 8);
        let limit = Limit::new(5, 2);
        let mut slot = None;
        assert!(allow_frame(&mut slot, &Limit::OFF, 0));
        assert!(slot.is_none(), "no limit: no state");
        assert!(allow_frame(&mut slot, &limit, 1_000));
        assert!(allow_frame(&mut slot, &limit, 1_000));
        assert!(!allow_frame(&mut slot, &limit, 1_000), "burst of 2 used up");
        let a = slot.as_ref().unwrap();
        assert!(!a.is_idle(&limit, 1_000));
        // Two frames at 5/s: full again 400 ms later.
        assert!(!a.is_idle(&limit, 400_000_000));
        assert!(a.is_idle(&limit, 400_001_000));
        let held = ConnAccess {
            ticket: 7,
            ..ConnAccess::default()
        };
        assert!(!held.is_idle(&limit, u64::MAX));
    }
}
