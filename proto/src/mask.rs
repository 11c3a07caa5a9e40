//! In-place (un)masking of payload bytes (RFC 6455 section 5.3).
//!
//! `phase` is the offset, modulo 4, of `buf[0]` within the frame payload, so a payload can be
//! unmasked in pieces as it arrives.

/// Masks/unmasks `buf` in place, word-at-a-time.
///
/// Works on 16-byte words through `u128` XORs over `chunks_exact_mut`, which LLVM lowers to
/// SIMD loads/stores without any `unsafe`; the tail (< 16 bytes) is done bytewise.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let key = rotated(key, phase);
    let mut wide = [0u8; 16];
    for (i, b) in wide.iter_mut().enumerate() {
        *b = key[i & 3];
    }
    // Native byte order on both sides: the XOR is bytewise, so only consistency matters.
    let wide = u128::from_ne_bytes(wide);
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u128::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 16 (hence of 4), so the rotated key still lines up.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Reference implementation: one byte at a time. Used by tests and benchmarks.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(i + phase) & 3];
    }
}

/// The key rotated so that index 0 applies to `buf[0]` at payload offset `phase`.
fn rotated(key: [u8; 4], phase: usize) -> [u8; 4] {
    let p = phase & 3;
    [key[p], key[(p + 1) & 3], key[(p + 2) & 3], key[(p + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(base: &[u8], offset: usize, len: usize, phase: usize) {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut fast = base.to_vec();
        let mut slow = base.to_vec();
        apply_mask(&mut fast[offset..offset + len], key, phase);
        apply_mask_scalar(&mut slow[offset..offset + len], key, phase);
        assert_eq!(fast, slow, "offset {offset} len {len} phase {phase}");
    }

    #[test]
    fn fast_matches_scalar_on_every_length_phase_and_offset() {
        let base: Vec<u8> = (0..4096 + 16).map(|i| (i * 31 + 7) as u8).collect();
        // Every length 0..=4096 and every phase; the start offset (alignment within the larger
        // buffer) cycles through 0..16 with the length.
        for len in 0..=4096 {
            for phase in 0..4 {
                check(&base[..len + 16], len % 16, len, phase);
            }
        }
        // Full cross product of offsets and phases for short and around-word-size lengths.
        for offset in 0..16 {
            for len in (0..=300).chain(1000..1040) {
                for phase in 0..4 {
                    check(&base[..offset + len], offset, len, phase);
                }
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let mut whole: Vec<u8> = (0..100u8).collect();
        let mut parts = whole.clone();
        apply_mask(&mut whole, key, 0);
        let (a, rest) = parts.split_at_mut(7);
        let (b, c) = rest.split_at_mut(50);
        apply_mask(a, key, 0);
        apply_mask(b, key, 7);
        apply_mask(c, key, 57);
        assert_eq!(whole, parts);
        assert_eq!(&whole[..5], &[1, 1 ^ 2, 2 ^ 3, 3 ^ 4, 4 ^ 1]);
    }
}
