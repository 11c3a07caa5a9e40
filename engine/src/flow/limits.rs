//! Start-up consistency of the size limits: one message the server accepts must never make a
//! subscriber "slow" on its own.
//!
//! A connection's high-water mark is compared with its *backlog*: what its kernel send buffer
//! holds (sampled while the socket is full) plus everything queued behind the frame being
//! written (`hub::Conn::backlog_with`). The frame in progress is exempt, so an idle subscriber
//! always takes one message of any accepted size. A fast subscriber can still be caught with
//! a full kernel buffer and one whole message waiting behind the one being written; for that
//! never to evict it, an `evict` mark must hold
//!
//! ```text
//! high_water_bytes >= max_message_bytes + MAX_FRAME_OVERHEAD + kernel allowance
//! kernel allowance  = 2.5 × send_buffer_bytes          (the kernel doubles SO_SNDBUF for
//!                                                       bookkeeping; 25% slack for the
//!                                                       skb it may add past that)
//!                   = tcp_wmem max                      (send_buffer_bytes = 0: autotuning)
//!                   + 72 KiB with TLS                   (the ciphertext of one send in flight,
//!                                                       `tls::MAX_SEND_CIPHERTEXT`)
//! ```
//!
//! An unset default mark is raised to that minimum (config resolution); at start-up a default
//! mark or an `evict` topic policy's mark below it is refused with the numbers. The default
//! mark is checked whatever the default policy: a connection's own frames (echo, replies) are
//! held to it and evict above it. Marks of the other policies may be smaller: crossing them
//! conflates, drops or pauses, never evicts.

/// Bytes a server frame adds to a message at most: a 10-byte header (64-bit length, no mask)
/// plus the `/stream` wrapper `{"stream":"<topic>","data":…}` around a text message with the
/// longest topic (21 + 128 bytes).
pub const MAX_FRAME_OVERHEAD: usize = 10 + 21 + crate::flow::topic::MAX_TOPIC_LEN;

/// The largest frame a message of `max_message` bytes becomes.
pub fn max_frame(max_message: usize) -> usize {
    max_message.saturating_add(MAX_FRAME_OVERHEAD)
}

/// Kernel memory one socket's send buffer may hold: `2.5 × send_buffer` when the send buffer
/// is capped (the kernel doubles `SO_SNDBUF`, and its write queue may pass that by the skb it
/// was adding: measured +0.3% on loopback, allowed 25%), else the autotuning maximum
/// `tcp_wmem_max`.
pub fn kernel_allowance(send_buffer: usize, tcp_wmem_max: usize) -> usize {
    if send_buffer == 0 {
        tcp_wmem_max
    } else {
        send_buffer.saturating_mul(5) / 2
    }
}

/// The smallest `evict` mark under which one accepted message never evicts a subscriber that
/// keeps up.
pub fn min_high_water(max_message: usize, kernel_allowance: usize) -> usize {
    max_frame(max_message).saturating_add(kernel_allowance)
}

/// Check one explicitly set `evict` mark; the error names the numbers and the ways out.
pub fn check_mark(
    what: &str,
    mark: usize,
    max_message: usize,
    kernel_allowance: usize,
) -> Result<(), String> {
    let min = min_high_water(max_message, kernel_allowance);
    if mark >= min {
        return Ok(());
    }
    Err(format!(
        "{what} = {mark} is below max_message_bytes ({max_message}) + {MAX_FRAME_OVERHEAD} \
         (frame header and /stream wrapper) + {kernel_allowance} (kernel send buffer: \
         2.5 x send_buffer_bytes, or tcp_wmem's max when send_buffer_bytes = 0; plus 72 KiB \
         of ciphertext with TLS) = {min}: \
         one accepted message could evict a subscriber that keeps up. Raise it to at least \
         {min}, or lower max_message_bytes or send_buffer_bytes"
    ))
}

/// `tcp_wmem`'s maximum on this host (`/proc/sys/net/ipv4/tcp_wmem`, third field), or 4 MiB
/// (the kernel default) when unreadable.
pub fn host_tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_consistent_with_a_two_mib_mark() {
        // 1 MiB messages, 256 KiB send buffers: 1 MiB + 159 + 640 KiB.
        let k = kernel_allowance(256 << 10, 16 << 20);
        assert_eq!(k, 640 << 10);
        assert_eq!(min_high_water(1 << 20, k), (1 << 20) + 159 + (640 << 10));
        assert!(check_mark("high_water_bytes", 2 << 20, 1 << 20, k).is_ok());
        assert!(kernel_allowance(0, 16 << 20) == 16 << 20, "autotuning");
    }

    #[test]
    fn the_refusal_names_the_minimum() {
        let k = kernel_allowance(256 << 10, 0);
        let min = min_high_water(1 << 20, k);
        assert!(check_mark("x", min, 1 << 20, k).is_ok());
        let e = check_mark("high_water_bytes", 1 << 20, 1 << 20, k).unwrap_err();
        assert!(e.contains(&format!("at least {min}")), "{e}");
        assert!(e.starts_with("high_water_bytes = 1048576"), "{e}");
    }

    #[test]
    fn host_value_is_sane() {
        assert!(host_tcp_wmem_max() >= 4096);
    }
}
