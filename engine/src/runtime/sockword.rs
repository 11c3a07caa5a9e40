//! A driver's per-socket word: the slot's short generation and the socket's state bits in one
//! `u32`, so each driver's socket table entry is 16 bytes (descriptor, this word, the send
//! record pointer) for every connection, idle or not.

use crate::runtime::driver::ConnId;

/// The generation's bits; a driver's state bits go above them (8 bits: 24 to 31).
const GEN_MASK: u32 = (1 << ConnId::GEN_BITS) - 1;

/// The lowest state bit: [`OPEN`], which both drivers keep.
pub const FIRST_STATE_BIT: u32 = ConnId::GEN_BITS;

/// The socket is open (its slot's entry is live).
pub const OPEN: u32 = 1 << FIRST_STATE_BIT;

/// The lowest bit a driver may use for a state of its own (7 bits: 25 to 31).
pub const DRIVER_BIT: u32 = FIRST_STATE_BIT + 1;

/// One socket's generation (as submissions carry it) and state bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockWord(u32);

impl SockWord {
    /// A socket just opened for `id`: its short generation with [`OPEN`] set.
    pub fn open(id: ConnId) -> SockWord {
        SockWord::new(id, OPEN)
    }

    /// `id`'s short generation with the state bits `bits` set.
    pub fn new(id: ConnId, bits: u32) -> SockWord {
        debug_assert_eq!(bits & GEN_MASK, 0, "state bits sit above the generation");
        SockWord(id.short_gen() | bits)
    }

    /// The generation, as [`ConnId::short_gen`] gives it.
    pub fn gen(self) -> u32 {
        self.0 & GEN_MASK
    }

    /// True if any bit of `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// Set (`on`) or clear the bits of `bit`.
    pub fn set(&mut self, bit: u32, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// The field under `mask` (contiguous bits), shifted down.
    pub fn field(self, mask: u32) -> u32 {
        (self.0 & mask) >> mask.trailing_zeros()
    }

    /// Store `value` in the field under `mask`.
    pub fn set_field(&mut self, mask: u32, value: u32) {
        let shift = mask.trailing_zeros();
        debug_assert_eq!(value << shift & !mask, 0, "{value} fits the field");
        self.0 = (self.0 & !mask) | (value << shift & mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_bits_and_fields_stay_apart() {
        const A: u32 = OPEN;
        const B: u32 = 1 << DRIVER_BIT;
        const F: u32 = 3 << (DRIVER_BIT + 1);
        let id = ConnId {
            slot: 3,
            gen: (1 << ConnId::GEN_BITS) + 0xab_cdef,
        };
        let mut w = SockWord::open(id);
        assert_eq!(
            (w.gen(), w.has(A), w.has(B), w.field(F)),
            (0xab_cdef, true, false, 0)
        );
        assert_eq!(w.gen(), id.short_gen());
        w.set(B, true);
        for v in [3, 1, 2, 0, 2] {
            w.set_field(F, v);
            assert_eq!(w.field(F), v);
        }
        w.set(A, false);
        assert!(!w.has(A) && w.has(B));
        assert_eq!(
            (w.gen(), w.field(F)),
            (0xab_cdef, 2),
            "the rest is untouched"
        );
        assert_eq!(FIRST_STATE_BIT + 4 + 4, 32, "a driver has 8 state bits");
    }
}
