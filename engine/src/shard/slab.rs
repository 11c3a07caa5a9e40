//! The shard's connection slab: slots in chunks of [`CHUNK`] that never move (growing never
//! copies, and an untouched chunk tail costs no resident memory), a generation per slot
//! (bumped on removal, so a stale [`ConnId`] never reaches the next occupant) and a free list.

use crate::runtime::driver::ConnId;

/// Slots per chunk.
pub const CHUNK: usize = 1024;

const NONE: u32 = u32::MAX;

enum Entry<T> {
    Vacant { next: u32 },
    Occupied(T),
}

struct Slot<T> {
    gen: u32,
    entry: Entry<T>,
}

/// Slots of `T` addressed by [`ConnId`].
pub struct Slab<T> {
    chunks: Vec<Vec<Slot<T>>>,
    free: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: NONE,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots ever created (occupied or free): the range a sweep walks.
    pub fn slots(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    fn slot(&self, slot: u32) -> Option<&Slot<T>> {
        let s = slot as usize;
        self.chunks.get(s / CHUNK)?.get(s % CHUNK)
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Slot<T>> {
        let s = slot as usize;
        self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)
    }

    /// Store `value` in a free slot (the most recently freed first).
    pub fn insert(&mut self, value: T) -> ConnId {
        self.len += 1;
        if self.free != NONE {
            let slot = self.free;
            let s = self.slot_mut(slot).expect("free list points at a slot");
            let Entry::Vacant { next } = s.entry else {
                unreachable!("free list points at a vacant slot")
            };
            s.entry = Entry::Occupied(value);
            let gen = s.gen;
            self.free = next;
            return ConnId { slot, gen };
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let slot =
            ((self.chunks.len() - 1) * CHUNK + self.chunks.last().expect("pushed").len()) as u32;
        self.chunks.last_mut().expect("pushed").push(Slot {
            gen: 0,
            entry: Entry::Occupied(value),
        });
        ConnId { slot, gen: 0 }
    }

    /// The occupant of `slot`, whatever its generation.
    pub fn at(&self, slot: u32) -> Option<&T> {
        match &self.slot(slot)?.entry {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant { .. } => None,
        }
    }

    /// The occupant of `slot`, mutably.
    pub fn at_mut(&mut self, slot: u32) -> Option<&mut T> {
        match &mut self.slot_mut(slot)?.entry {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant { .. } => None,
        }
    }

    /// The connection `id`, if the slot still holds that generation (compared on
    /// [`ConnId::GEN_BITS`], as submissions carry it).
    pub fn get(&self, id: ConnId) -> Option<&T> {
        let s = self.slot(id.slot)?;
        if s.gen & GEN_MASK != id.gen & GEN_MASK {
            return None;
        }
        match &s.entry {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant { .. } => None,
        }
    }

    /// [`get`](Self::get), mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        let s = self.slot_mut(id.slot)?;
        if s.gen & GEN_MASK != id.gen & GEN_MASK {
            return None;
        }
        match &mut s.entry {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant { .. } => None,
        }
    }

    /// The full id of the occupant of `slot`.
    pub fn id_at(&self, slot: u32) -> Option<ConnId> {
        let s = self.slot(slot)?;
        matches!(s.entry, Entry::Occupied(_)).then_some(ConnId { slot, gen: s.gen })
    }

    /// Free `id`'s slot (bumping its generation); returns the occupant.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        self.get(id)?;
        let free = self.free;
        let s = self.slot_mut(id.slot).expect("checked");
        let Entry::Occupied(v) = std::mem::replace(&mut s.entry, Entry::Vacant { next: free })
        else {
            unreachable!("checked")
        };
        s.gen = s.gen.wrapping_add(1);
        self.free = id.slot;
        self.len -= 1;
        Some(v)
    }
}

const GEN_MASK: u32 = (1 << ConnId::GEN_BITS) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_reuse_with_generations() {
        let mut s: Slab<u64> = Slab::default();
        let ids: Vec<ConnId> = (0..3000).map(|i| s.insert(i)).collect();
        assert_eq!(s.len(), 3000);
        assert_eq!(s.slots(), 3000);
        assert_eq!(ids[2500], ConnId { slot: 2500, gen: 0 });
        assert_eq!(s.get(ids[1234]), Some(&1234));
        assert_eq!(s.remove(ids[1234]), Some(1234));
        assert_eq!(s.remove(ids[1234]), None, "removed once");
        assert_eq!(s.get(ids[1234]), None);
        let again = s.insert(7);
        assert_eq!(
            again,
            ConnId { slot: 1234, gen: 1 },
            "slot reused, new generation"
        );
        assert_eq!(
            s.get(ids[1234]),
            None,
            "the stale id does not reach the new occupant"
        );
        assert_eq!(s.get(again), Some(&7));
        assert_eq!(s.at(1234), Some(&7));
        assert_eq!(s.id_at(1234), Some(again));
        *s.get_mut(again).unwrap() = 8;
        assert_eq!(s.at_mut(1234).copied(), Some(8));
        assert_eq!(s.len(), 3000);
        assert_eq!(s.slots(), 3000, "no new slot while one was free");
    }

    #[test]
    fn chunks_never_move() {
        let mut s: Slab<[u8; 16]> = Slab::default();
        let first = s.insert([1; 16]);
        let p = s.get(first).unwrap() as *const _;
        for _ in 0..5 * CHUNK {
            s.insert([0; 16]);
        }
        assert_eq!(
            s.get(first).unwrap() as *const _,
            p,
            "the first slot stayed put"
        );
        assert_eq!(s.chunks.len(), 6);
    }

    /// A connection's slot is its `Conn` plus the generation: the vacancy tag sits in a niche
    /// of the `Conn` (docs/ENGINE.md, "Per-connection memory budget").
    #[test]
    fn a_slot_is_the_conn_and_its_generation() {
        use crate::conn::state::Conn;
        let (conn, slot) = (
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<Slot<Conn>>(),
        );
        eprintln!("slot: {slot} bytes");
        assert_eq!(slot, conn + 8, "a tag of its own would cost 8 more");
    }

    #[test]
    fn generations_compare_on_the_carried_bits() {
        let mut s: Slab<u8> = Slab::default();
        let mut id = s.insert(0);
        for _ in 0..3 {
            s.remove(id);
            id = s.insert(0);
        }
        assert_eq!(id.gen, 3);
        let carried = ConnId::unpack(id.pack(1)).1;
        assert_eq!(s.get(carried), Some(&0));
    }
}
