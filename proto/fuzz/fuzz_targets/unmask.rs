//! Fuzz the word-at-a-time masking against the scalar reference.
//!
//! Input layout: 4 key bytes, 1 byte for phase (low 2 bits) and start offset (next 4 bits),
//! then the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast_proto::mask::{apply_mask, apply_mask_scalar};

fuzz_target!(|data: &[u8]| {
    let [k0, k1, k2, k3, sel, rest @ ..] = data else {
        return;
    };
    let key = [*k0, *k1, *k2, *k3];
    let phase = usize::from(sel & 3);
    let offset = usize::from((sel >> 2) & 15).min(rest.len());
    let mut fast = rest.to_vec();
    let mut slow = rest.to_vec();
    apply_mask(&mut fast[offset..], key, phase);
    apply_mask_scalar(&mut slow[offset..], key, phase);
    assert_eq!(fast, slow);
});
