//! Access counters of one shard: refusals by reason, closes by the inbound rate limit and by
//! token expiry, in-band subscriptions denied, and the per-address table's evictions.
//!
//! Contract: one writer (the shard), Relaxed atomics; [`AccessStats::snapshot`] copies them
//! into a plain [`AccessSnapshot`] that /stats serializes as the `access` object of each
//! shard (summed into `totals` by the admin thread) and [`render_metrics`] writes as
//! `shardcast_access_*` families.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Why the access layer refused a request (before any upgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessRefusal {
    /// 401: a credential is needed and none was presented.
    NoToken,
    /// 401 (403 for a wrong static publish token): the credential is malformed, forged,
    /// signed with an unaccepted key or algorithm, not valid yet, or for another issuer or
    /// audience.
    BadToken,
    /// 401: the token's `exp` has passed.
    ExpiredToken,
    /// 403: a valid credential that does not grant this topic.
    NotGranted,
    /// 403: publishing without any credential from a peer that is not trusted.
    Untrusted,
    /// 403: `Origin` not in `--allowed-origins`.
    Origin,
    /// 429: too many connection attempts from this address in the window.
    IpAttempts,
    /// 429: too many open connections from this address.
    IpConcurrent,
}

impl AccessRefusal {
    /// Every reason, in counter order.
    pub const ALL: [AccessRefusal; 8] = [
        AccessRefusal::NoToken,
        AccessRefusal::BadToken,
        AccessRefusal::ExpiredToken,
        AccessRefusal::NotGranted,
        AccessRefusal::Untrusted,
        AccessRefusal::Origin,
        AccessRefusal::IpAttempts,
        AccessRefusal::IpConcurrent,
    ];

    /// Stable name for /stats and /metrics.
    pub fn name(self) -> &'static str {
        match self {
            AccessRefusal::NoToken => "no_token",
            AccessRefusal::BadToken => "bad_token",
            AccessRefusal::ExpiredToken => "expired_token",
            AccessRefusal::NotGranted => "not_granted",
            AccessRefusal::Untrusted => "untrusted",
            AccessRefusal::Origin => "origin",
            AccessRefusal::IpAttempts => "ip_attempts",
            AccessRefusal::IpConcurrent => "ip_concurrent",
        }
    }
}

const REASONS: usize = AccessRefusal::ALL.len();

/// The counters (inside each shard's `ShardStats`).
#[derive(Debug, Default)]
pub struct AccessStats {
    refused: [AtomicU64; REASONS],
    /// Connections closed 1008 for going over their inbound rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed 1008 because their token expired (after the grace).
    pub token_expired: AtomicU64,
    /// In-band SUBSCRIBE requests refused because a topic was not granted.
    pub subscribe_denied: AtomicU64,
    /// Per-address table entries evicted while their window was still running.
    pub ip_evictions: AtomicU64,
    /// Connections admitted untracked because the address table had no slot for them.
    pub ip_untracked: AtomicU64,
}

impl AccessStats {
    /// Count a refusal.
    pub fn refuse(&self, why: AccessRefusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Refusals for one reason.
    pub fn refused(&self, why: AccessRefusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    /// Copy every counter.
    pub fn snapshot(&self) -> AccessSnapshot {
        AccessSnapshot {
            refused: std::array::from_fn(|i| self.refused[i].load(Relaxed)),
            rate_limited: self.rate_limited.load(Relaxed),
            token_expired: self.token_expired.load(Relaxed),
            subscribe_denied: self.subscribe_denied.load(Relaxed),
            ip_evictions: self.ip_evictions.load(Relaxed),
            ip_untracked: self.ip_untracked.load(Relaxed),
        }
    }
}

/// A copy of [`AccessStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessSnapshot {
    /// Indexed like [`AccessRefusal::ALL`].
    pub refused: [u64; REASONS],
    /// See [`AccessStats::rate_limited`].
    pub rate_limited: u64,
    /// See [`AccessStats::token_expired`].
    pub token_expired: u64,
    /// See [`AccessStats::subscribe_denied`].
    pub subscribe_denied: u64,
    /// See [`AccessStats::ip_evictions`].
    pub ip_evictions: u64,
    /// See [`AccessStats::ip_untracked`].
    pub ip_untracked: u64,
}

struct Refused<'a>(&'a [u64; REASONS]);

impl Serialize for Refused<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(REASONS))?;
        for why in AccessRefusal::ALL {
            m.serialize_entry(why.name(), &self.0[why as usize])?;
        }
        m.end()
    }
}

// /stats: {"refused": {"no_token": n, ...}, "rate_limited_closes": n, ...}
impl Serialize for AccessSnapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("refused", &Refused(&self.refused))?;
        m.serialize_entry("rate_limited_closes", &self.rate_limited)?;
        m.serialize_entry("token_expired_closes", &self.token_expired)?;
        m.serialize_entry("subscribe_denied", &self.subscribe_denied)?;
        m.serialize_entry("ip_table_evictions", &self.ip_evictions)?;
        m.serialize_entry("ip_untracked", &self.ip_untracked)?;
        m.end()
    }
}

/// Append the `shardcast_access_*` families, one series per shard (`shards` in shard order).
pub fn render_metrics<'a>(
    out: &mut String,
    shards: impl Iterator<Item = &'a AccessSnapshot> + Clone,
) {
    let family = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    };
    let name = "shardcast_access_refused_total";
    family(
        out,
        name,
        "Requests refused by the access layer before any upgrade, by reason.",
    );
    for (i, s) in shards.clone().enumerate() {
        for why in AccessRefusal::ALL {
            let n = s.refused[why as usize];
            let _ = writeln!(out, "{name}{{shard=\"{i}\",reason=\"{}\"}} {n}", why.name());
        }
    }
    type Scalar = (&'static str, &'static str, fn(&AccessSnapshot) -> u64);
    let scalars: [Scalar; 5] = [
        (
            "shardcast_access_rate_limited_closes_total",
            "Connections closed 1008 for sending more frames than their inbound rate limit.",
            |s| s.rate_limited,
        ),
        (
            "shardcast_access_token_expired_closes_total",
            "Connections closed 1008 because their token expired (after the grace).",
            |s| s.token_expired,
        ),
        (
            "shardcast_access_subscribe_denied_total",
            "In-band SUBSCRIBE requests refused because a topic was not granted.",
            |s| s.subscribe_denied,
        ),
        (
            "shardcast_access_ip_table_evictions_total",
            "Per-address limit entries evicted before their window ended (table full).",
            |s| s.ip_evictions,
        ),
        (
            "shardcast_access_ip_untracked_total",
            "Connections admitted without per-address tracking (no free slot).",
            |s| s.ip_untracked,
        ),
    ];
    for (name, help, get) in scalars {
        family(out, name, help);
        for (i, s) in shards.clone().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_snapshot_json_and_metrics() {
        let s = AccessStats::default();
        s.refuse(AccessRefusal::Origin);
        s.refuse(AccessRefusal::Origin);
        s.refuse(AccessRefusal::IpAttempts);
        s.rate_limited.fetch_add(3, Relaxed);
        let snap = s.snapshot();
        assert_eq!(s.refused(AccessRefusal::Origin), 2);
        let json = serde_json::to_value(snap).unwrap();
        assert_eq!(json["refused"]["origin"], 2);
        assert_eq!(json["refused"]["ip_attempts"], 1);
        assert_eq!(json["refused"]["no_token"], 0);
        assert_eq!(json["rate_limited_closes"], 3);
        let mut out = String::new();
        render_metrics(&mut out, [snap, AccessSnapshot::default()].iter());
        assert!(out.contains("shardcast_access_refused_total{shard=\"0\",reason=\"origin\"} 2\n"));
        assert!(out.contains("shardcast_access_rate_limited_closes_total{shard=\"1\"} 0\n"));
        for (i, r) in AccessRefusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
