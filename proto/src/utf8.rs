//! Incremental, fail-fast UTF-8 validation across fragments and partial frames.

/// Validates a byte stream that arrives in pieces (fragments, partial reads).
///
/// Carries at most 3 bytes of an incomplete code point between calls. Fails at the first byte
/// that makes the stream impossible to complete validly (e.g. `C0`, `F5`, `ED A0` — a
/// surrogate, `F4 90` — above U+10FFFF), without waiting for the rest of the code point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator with no pending bytes.
    pub const fn new() -> Self {
        Self {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Whether an incomplete code point is pending.
    pub const fn is_pending(&self) -> bool {
        self.pending_len != 0
    }

    /// Validates the next piece of the stream. `Err(())` at the first impossible byte; the
    /// validator must not be used again after an error.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ()> {
        if self.pending_len != 0 {
            // Complete the carried code point one byte at a time: std's `error_len()` tells
            // "invalid" (Some) from "valid but incomplete" (None).
            while let Some((&b, rest)) = data.split_first() {
                self.pending[usize::from(self.pending_len)] = b;
                self.pending_len += 1;
                data = rest;
                match std::str::from_utf8(&self.pending[..usize::from(self.pending_len)]) {
                    Ok(_) => {
                        self.pending_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(()),
                    Err(_) => {}
                }
            }
            if self.pending_len != 0 {
                return Ok(());
            }
        }
        // Fast path: the whole piece is valid. Only on failure ask for the precise position.
        if simdutf8::basic::from_utf8(data).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(()),
            Err(e) => {
                // A truncated but so-far-possible code point (1..=3 bytes) at the end.
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the stream: `Err(())` if a code point is still incomplete. Resets the validator.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let pending = self.pending_len != 0;
        *self = Self::new();
        if pending {
            Err(())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<(), ()> {
        let mut v = Utf8Validator::new();
        for p in pieces {
            v.feed(p)?;
        }
        v.finish()
    }

    #[test]
    fn split_code_points_are_valid() {
        let s = "aé€😀z".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(feed_all(&[&s[..i], &s[i..j], &s[j..]]), Ok(()), "{i} {j}");
            }
        }
        for i in 0..s.len() {
            let one: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(feed_all(&one), Ok(()), "{i}");
        }
    }

    #[test]
    fn impossible_prefixes_fail_immediately() {
        for bad in [
            &[0xC0][..],
            &[0xC1],
            &[0xF5],
            &[0xFF],
            &[0x80],
            &[0xED, 0xA0],
            &[0xF4, 0x90],
            &[0xE0, 0x80],
            &[0xF0, 0x80],
            &[b'a', 0xCE, 0x41],
        ] {
            // Fails on this piece, before any further byte arrives.
            assert_eq!(Utf8Validator::new().feed(bad), Err(()), "{bad:x?}");
            // Also when the prefix arrives one byte at a time.
            let mut v = Utf8Validator::new();
            let failed = bad.iter().any(|b| v.feed(std::slice::from_ref(b)).is_err());
            assert!(failed, "bytewise {bad:x?}");
        }
    }

    #[test]
    fn incomplete_end_fails_at_finish() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xF0, 0x9F, 0x98]), Ok(()));
        assert!(v.is_pending());
        assert_eq!(v.finish(), Err(()));
        assert_eq!(v.finish(), Ok(()), "finish resets");
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xF4, 0x8F]), Ok(()), "F4 8F is a valid prefix");
        assert_eq!(v.feed(&[0xBF, 0xBF]), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn agrees_with_std_on_all_two_byte_pairs_split() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [a, b];
                let expected = std::str::from_utf8(&s).is_ok();
                assert_eq!(
                    feed_all(&[&s[..1], &s[1..]]).is_ok(),
                    expected,
                    "{a:x} {b:x}"
                );
            }
        }
    }
}
