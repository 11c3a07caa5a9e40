//! Admission at accept: the global and per-shard connection limits, and no new connection once
//! graceful shutdown began. A refused connection gets `503` written best effort (never waiting)
//! and is closed; it never gets a slot.

use shardcast_proto::handshake::write_rejection;
use shardcast_proto::http::{HttpError, Status};

/// Connection counts and limits at the moment of an accept.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Open connections over all shards, before this one.
    pub global: usize,
    /// Open connections on this shard, before this one.
    pub shard: usize,
    /// `max_connections`.
    pub max_global: usize,
    /// `max_connections_per_shard`.
    pub max_shard: usize,
    /// Graceful shutdown has begun.
    pub shutting_down: bool,
}

/// `Ok` to admit, or the 503 response to write.
pub fn admit(load: Load) -> Result<(), Vec<u8>> {
    if load.global >= load.max_global || load.shard >= load.max_shard || load.shutting_down {
        let mut out = Vec::new();
        write_rejection(
            &mut out,
            &HttpError::new(Status::ServiceUnavailable, "server is full"),
        );
        return Err(out);
    }
    Ok(())
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
            max_shard: 5,
            shutting_down: false,
        };
        assert!(admit(load).is_ok());
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
    }
}
