//! The one clock every process on the host agrees on: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! Publishers embed it in each payload and subscribers (possibly another process) subtract it
//! from their own reading, so `std::time::Instant` (opaque) will not do.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_tracks_instant() {
        let a = now_ns();
        let t = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now_ns();
        let el = t.elapsed().as_nanos() as u64;
        assert!(b > a);
        assert!(b - a >= 5_000_000);
        assert!((b - a).abs_diff(el) < 5_000_000);
    }
}
