//! TLS counters: per shard ([`TlsStats`], owned by the shard like the rest of `ShardStats`)
//! and their /stats and /metrics rendering.
//!
//! Contract: the shard that owns a session records its outcome once — [`TlsStats::handshake`]
//! when the handshake completes, [`TlsStats::fail`] when it fails (a session that fails after
//! its handshake counts as a failure too: `bad_record` for garbage after the handshake). Single
//! writer, Relaxed. /stats shows [`TlsSnapshot`] as a `tls` object per shard (summed into the
//! totals like every counter); /metrics gets [`render_metrics`]'s families.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::failure::Failure;
use super::reload::ReloadSnapshot;

const FAILURES: usize = Failure::ALL.len();

/// One shard's TLS counters.
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes: AtomicU64,
    resumed: AtomicU64,
    tls12: AtomicU64,
    failures: [AtomicU64; FAILURES],
}

/// A point-in-time copy of [`TlsStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSnapshot {
    /// Handshakes completed (full and resumed).
    pub handshakes: u64,
    /// Of those, resumed from a session ticket.
    pub resumed: u64,
    /// Of those, on TLS 1.2.
    pub tls12: u64,
    /// Failures, indexed like [`Failure::ALL`].
    pub failures: [u64; FAILURES],
}

impl TlsStats {
    /// Count a completed handshake.
    pub fn handshake(&self, resumed: bool, tls12: bool) {
        self.handshakes.fetch_add(1, Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Relaxed);
        }
        if tls12 {
            self.tls12.fetch_add(1, Relaxed);
        }
    }

    /// Count the handshake `session` just completed ([`Received::opened`]).
    ///
    /// [`Received::opened`]: super::Received::opened
    pub fn opened(&self, session: &super::Session) {
        let tls12 = session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        self.handshake(session.resumed(), tls12);
    }

    /// Count a failure.
    pub fn fail(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> TlsSnapshot {
        TlsSnapshot {
            handshakes: self.handshakes.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            tls12: self.tls12.load(Relaxed),
            failures: std::array::from_fn(|i| self.failures[i].load(Relaxed)),
        }
    }
}

// By hand: the failure array becomes an object keyed by reason, like `refused` in /stats.
impl serde::Serialize for TlsSnapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Failures<'a>(&'a [u64; FAILURES]);
        impl serde::Serialize for Failures<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(FAILURES))?;
                for (f, n) in Failure::ALL.iter().zip(self.0) {
                    m.serialize_entry(f.name(), n)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("handshakes", &self.handshakes)?;
        m.serialize_entry("resumed", &self.resumed)?;
        m.serialize_entry("tls12", &self.tls12)?;
        m.serialize_entry("failures", &Failures(&self.failures))?;
        m.end()
    }
}

/// A per-shard counter family: name, help, and how to read it.
type Series = (&'static str, &'static str, fn(&TlsSnapshot) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The TLS families of /metrics: one series per shard (in order), failures by reason, and the
/// process-wide reload counters when TLS is on.
pub fn render_metrics<'a>(
    out: &mut String,
    shards: impl Iterator<Item = &'a TlsSnapshot> + Clone,
    reload: Option<&ReloadSnapshot>,
) {
    let scalars: [Series; 3] = [
        (
            "shardcast_tls_handshakes_total",
            "TLS handshakes completed (full and resumed).",
            |s| s.handshakes,
        ),
        (
            "shardcast_tls_resumed_handshakes_total",
            "TLS handshakes resumed from a session ticket.",
            |s| s.resumed,
        ),
        (
            "shardcast_tls12_handshakes_total",
            "TLS handshakes completed on TLS 1.2 (the rest are TLS 1.3).",
            |s| s.tls12,
        ),
    ];
    for (name, help, get) in scalars {
        family(out, name, "counter", help);
        for (i, s) in shards.clone().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(s));
        }
    }
    let name = "shardcast_tls_handshake_failures_total";
    family(
        out,
        name,
        "counter",
        "TLS handshakes or sessions that failed, by reason.",
    );
    for (i, s) in shards.enumerate() {
        for f in Failure::ALL {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{i}\",reason=\"{}\"}} {}",
                f.name(),
                s.failures[f as usize]
            );
        }
    }
    if let Some(r) = reload {
        for (name, help, n) in [
            (
                "shardcast_tls_reloads_total",
                "Certificate reloads (SIGHUP) that published a new configuration.",
                r.reloads,
            ),
            (
                "shardcast_tls_reload_failures_total",
                "Certificate reloads that failed and kept the previous configuration.",
                r.reload_failures,
            ),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_json_and_metrics() {
        let s = TlsStats::default();
        s.handshake(false, false);
        s.handshake(true, true);
        s.fail(Failure::BadRecord);
        s.fail(Failure::Timeout);
        s.fail(Failure::Timeout);
        let snap = s.snapshot();
        assert_eq!((snap.handshakes, snap.resumed, snap.tls12), (2, 1, 1));
        let json = serde_json::to_value(snap).unwrap();
        assert_eq!(json["failures"]["timeout"], 2);
        assert_eq!(json["failures"]["bad_record"], 1);
        assert_eq!(json["resumed"], 1);
        let mut out = String::new();
        let reload = ReloadSnapshot {
            reloads: 3,
            reload_failures: 1,
        };
        render_metrics(
            &mut out,
            [snap, TlsSnapshot::default()].iter(),
            Some(&reload),
        );
        assert!(
            out.contains("shardcast_tls_handshakes_total{shard=\"0\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("shardcast_tls_handshakes_total{shard=\"1\"} 0\n"));
        assert!(out.contains(
            "shardcast_tls_handshake_failures_total{shard=\"0\",reason=\"timeout\"} 2\n"
        ));
        assert!(out.contains("shardcast_tls_reload_failures_total 1\n"));
    }
}
