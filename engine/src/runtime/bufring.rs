//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the shard lends the kernel a
//! pool of receive buffers, and a multishot receive takes one only when data is there — so an
//! idle connection owns no receive buffer at all.
//!
//! Memory: the ring itself (16 B per entry, page-aligned, from `mmap`) and one contiguous block
//! of `entries × size` bytes for the buffers. The kernel picks a buffer at the ring's head and
//! reports its id in the completion; the driver hands the bytes to the core, which copies what
//! it keeps, and [`BufRing::recycle`] puts the buffer back at the tail. New entries become
//! visible to the kernel only at [`BufRing::publish`] (one release store of the tail per turn).
//!
//! Ownership (see `runtime::driver`): a buffer belongs to the kernel from the moment it is
//! published until a completion names it; then to the driver until it is recycled.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// A registered provided-buffer ring and its buffers.
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    size: usize,
    bufs: Box<[u8]>,
    tail: u16,
    group: u16,
    registered: bool,
}

impl BufRing {
    /// Register a ring of `entries` (a power of two, at most 32768) buffers of `size` bytes as
    /// buffer group `group` of `uring`, every buffer lent to the kernel.
    pub fn new(uring: &IoUring, group: u16, entries: u16, size: usize) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two up to 32768",
            ));
        }
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked
        // before use. mmap memory is page-aligned, as the kernel requires of the ring.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: ring.cast(),
            ring_bytes,
            entries,
            size,
            bufs: vec![0u8; usize::from(entries) * size].into_boxed_slice(),
            tail: 0,
            group,
            registered: false,
        };
        // SAFETY: `ring` is a live mapping of `entries` entries, unmapped only in Drop after the
        // group is unregistered (or the io_uring instance, dropped first, is gone).
        unsafe {
            uring
                .submitter()
                .register_buf_ring(br.ring as u64, entries, group)?
        };
        br.registered = true;
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The buffer group id (for `RecvMulti`).
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed back.
    pub fn get(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = usize::from(bid) * self.size;
        &mut self.bufs[start..start + len.min(self.size)]
    }

    /// Give buffer `bid` back to the kernel (visible at the next [`publish`](Self::publish)).
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let idx = usize::from(self.tail & mask);
        let addr = self.bufs[usize::from(bid) * self.size..].as_ptr() as u64;
        // SAFETY: `idx < entries`, so the entry is inside the mapping; the kernel reads only
        // entries between its head and the published tail, and this one is past the published
        // tail until `publish`.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every recycled buffer visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the ring base is the first entry of a live, initialized mapping; the tail
        // field shares its memory with the first entry's reserved field, which the kernel only
        // reads, and a u16 there is suitably aligned for an AtomicU16.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is not used after this;
        // the io_uring instance that read it is dropped before this ring (field order in the
        // driver), so the kernel no longer reads it.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
        let _ = self.registered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_lent_recycled_and_published() {
        let Ok(uring) = IoUring::new(8) else {
            return; // io_uring refused here: nothing to test (the epoll driver runs instead)
        };
        assert!(
            BufRing::new(&uring, 1, 3, 64).is_err(),
            "not a power of two"
        );
        let mut br = BufRing::new(&uring, 7, 4, 64).unwrap();
        assert_eq!((br.group(), br.buf_size()), (7, 64));
        assert_eq!(br.tail, 4, "every buffer lent at start");
        br.get(2, 10).copy_from_slice(&[9; 10]);
        assert_eq!(br.get(2, 100).len(), 64, "clamped to the buffer size");
        assert_eq!(&br.get(2, 10)[..], &[9; 10]);
        br.recycle(2);
        br.publish();
        assert_eq!(br.tail, 5);
        // SAFETY: reading back the entry the recycle wrote (index 4 & 3 = 0), and the tail.
        let (entry, tail) = unsafe {
            (
                &*br.ring,
                (*(BufRingEntry::tail(br.ring) as *const AtomicU16)).load(Ordering::Acquire),
            )
        };
        assert_eq!((entry.bid(), entry.len()), (2, 64));
        assert_eq!(entry.addr(), br.bufs[128..].as_ptr() as u64);
        assert_eq!(tail, 5);
    }
}
