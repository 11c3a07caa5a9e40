//! Admission at accept: the global and per-shard connection limits, and no new connection once
//! graceful shutdown began. A refused connection gets `503` written best effort (never waiting)
//! and is closed; it never gets a slot. Over the per-address limits (`access::ipguard`) it
//! gets `429` with `Retry-After` the same way.

use shardcast_proto::handshake::write_rejection;
use shardcast_proto::http::{write_response, HttpError, Status};

/// Connection counts and limits at the moment of an accept.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Open connections over all shards, before this one.
    pub global: usize,
    /// Open connections on this shard, before this one.
    pub shard: usize,
    /// `max_connections`.
    pub max_global: usize,
    /// `max_connections_per_shard`, if set (otherwise only the global limit applies).
    pub max_shard: Option<usize>,
    /// Graceful shutdown has begun.
    pub shutting_down: bool,
}

/// `Ok` to admit, or the 503 response to write.
pub fn admit(load: Load) -> Result<(), Vec<u8>> {
    if load.global >= load.max_global
        || load.max_shard.is_some_and(|m| load.shard >= m)
        || load.shutting_down
    {
        let mut out = Vec::new();
        write_rejection(
            &mut out,
            &HttpError::new(Status::ServiceUnavailable, "server is full"),
        );
        return Err(out);
    }
    Ok(())
}

/// The 429 for a peer over its per-address limits.
pub fn too_many_requests(retry_after_s: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_response(
        &mut out,
        Status::TooManyRequests,
        &[("Retry-After", &retry_after_s.to_string())],
        "text/plain; charset=utf-8",
        b"too many connections from this address, retry later",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_shutdown_refuse_with_503() {
        let load = Load {
            global: 9,
            shard: 4,
            max_global: 10,
            max_shard: Some(5),
            shutting_down: false,
        };
        assert!(admit(load).is_ok());
        // Without a per-shard limit a full shard still admits while the global count has room.
        assert!(admit(Load {
            shard: 5,
            max_shard: None,
            ..load
        })
        .is_ok());
        for l in [
            Load { global: 10, ..load },
            Load { shard: 5, ..load },
            Load {
                shutting_down: true,
                ..load
            },
        ] {
            let r = admit(l).unwrap_err();
            assert!(
                r.starts_with(b"HTTP/1.1 503"),
                "{}",
                String::from_utf8_lossy(&r)
            );
        }
        let r = String::from_utf8(too_many_requests(42)).unwrap();
        assert!(r.starts_with("HTTP/1.1 429"), "{r}");
        assert!(r.contains("Retry-After: 42\r\n"), "{r}");
    }
}
