//! The access options: flattened into the server's one option set (`config.rs`), so each
//! is a CLI flag, a top-level TOML key and a `SHARDCAST_*` variable like every other option.
//!
//! Contract: [`AccessOverrides`] is one layer with every option optional; [`AccessOverrides::or`]
//! merges layers; [`AccessOverrides::finish`] applies defaults and validates into
//! [`AccessConfig`]. Validation loads the JWT keys once, so a bad key file fails at start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::origin::AllowedOrigins;
use super::token::Verifier;
use super::trust::TrustLoopback;
use crate::obs::latency::Recording as OnOff;

/// Default inbound rate of subscribers (frames per second): Binance's 5 messages/s.
pub const SUBSCRIBER_RATE: u32 = 5;
/// Default burst of subscribers.
pub const SUBSCRIBER_BURST: u32 = 10;
/// Default inbound rate of publishers, rooms and echo clients.
pub const PUBLISHER_RATE: u32 = 100_000;
/// Default per-address connection attempts per window (Binance: 300 per 5 minutes).
pub const IP_CONNECT_LIMIT: u32 = 300;
/// Default per-address window.
pub const IP_CONNECT_WINDOW_MS: u64 = 300_000;
/// Default per-address table size (24 bytes per slot).
pub const IP_TABLE_ENTRIES: usize = 65_536;

/// The effective access options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessConfig {
    /// Who is trusted without credentials.
    pub trust_loopback: TrustLoopback,
    /// HS256 secret (redacted when printed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA or EC).
    pub jwt_public_key: Vec<PathBuf>,
    /// Required `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Required `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// How long a connection may outlive its token's `exp`.
    pub token_expiry_grace_ms: u64,
    /// Topic globs anyone may subscribe to.
    pub public_topics: Vec<String>,
    /// Origins allowed to upgrade and publish (empty: no check).
    pub allowed_origins: Vec<String>,
    /// Inbound frames per second of a subscriber connection (0 = no limit).
    pub subscriber_rate: u32,
    /// Burst of a subscriber connection.
    pub subscriber_burst: u32,
    /// Inbound frames per second of a publisher, room or echo connection (0 = no limit).
    pub publisher_rate: u32,
    /// Burst of a publisher, room or echo connection.
    pub publisher_burst: u32,
    /// Connection attempts per address per window (0 = no limit).
    pub ip_connect_limit: u32,
    /// The window of `ip_connect_limit`.
    pub ip_connect_window_ms: u64,
    /// Open connections per address (0 = no limit).
    pub ip_max_connections: u32,
    /// Apply the per-address limits to loopback peers too.
    pub ip_limit_loopback: OnOff,
    /// Slots of the per-address table.
    pub ip_table_entries: usize,
}

/// One layer of access options.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
pub struct AccessOverrides {
    /// Trust loopback peers without credentials (only requests with no Origin, Sec-Fetch-* or forwarding header): auto = while no publish token or JWT key is configured, on = always, off = never [default: auto]
    #[arg(long, env = "SHARDCAST_TRUST_LOOPBACK")]
    pub trust_loopback: Option<TrustLoopback>,
    /// Shared secret for HS256 access tokens (prefer --jwt-secret-file: arguments are visible to other users) [default: none]
    #[arg(long, env = "SHARDCAST_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (trailing newline ignored) [default: none]
    #[arg(long, env = "SHARDCAST_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256/PS256, EC P-256 for ES256) verifying access tokens; repeatable for rotation; env: comma-separated [default: none]
    #[arg(long, env = "SHARDCAST_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Option<Vec<PathBuf>>,
    /// Tokens must carry this iss claim [default: not checked]
    #[arg(long, env = "SHARDCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Tokens must carry this aud claim [default: not checked]
    #[arg(long, env = "SHARDCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// A connection whose token expires is closed 1008 this many ms after exp [default: 0]
    #[arg(long, env = "SHARDCAST_TOKEN_EXPIRY_GRACE_MS")]
    pub token_expiry_grace_ms: Option<u64>,
    /// Topic globs anyone may subscribe to without a token; comma-separated [default: * without a JWT key, none with one]
    #[arg(long, env = "SHARDCAST_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Option<Vec<String>>,
    /// Origins allowed to open WebSockets and POST (scheme://host[:port], *.domain wildcards, :* any port); comma-separated; requests without Origin are unaffected [default: none, no check]
    #[arg(long, env = "SHARDCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Inbound frames per second per subscriber connection (data, ping, pong, close, each fragment); over it: close 1008; 0 = no limit [default: 5]
    #[arg(long, env = "SHARDCAST_SUBSCRIBER_RATE")]
    pub subscriber_rate: Option<u32>,
    /// Frames a subscriber may send at once before the rate applies [default: 10]
    #[arg(long, env = "SHARDCAST_SUBSCRIBER_BURST")]
    pub subscriber_burst: Option<u32>,
    /// Inbound frames per second per publisher, room or echo connection; 0 = no limit [default: 100000]
    #[arg(long, env = "SHARDCAST_PUBLISHER_RATE")]
    pub publisher_rate: Option<u32>,
    /// Frames a publisher, room or echo connection may send at once [default: publisher_rate]
    #[arg(long, env = "SHARDCAST_PUBLISHER_BURST")]
    pub publisher_burst: Option<u32>,
    /// Connection attempts per source address (IPv6: per /64) per window; over it: 429 with Retry-After; 0 = no limit [default: 300]
    #[arg(long, env = "SHARDCAST_IP_CONNECT_LIMIT")]
    pub ip_connect_limit: Option<u32>,
    /// Window of ip_connect_limit in ms [default: 300000]
    #[arg(long, env = "SHARDCAST_IP_CONNECT_WINDOW_MS")]
    pub ip_connect_window_ms: Option<u64>,
    /// Open connections per source address (IPv6: per /64); over it: 429; 0 = no limit [default: 0]
    #[arg(long, env = "SHARDCAST_IP_MAX_CONNECTIONS")]
    pub ip_max_connections: Option<u32>,
    /// Apply the per-address limits to loopback peers too (off: loopback, e.g. a same-host proxy, is exempt) [default: off]
    #[arg(long, env = "SHARDCAST_IP_LIMIT_LOOPBACK")]
    pub ip_limit_loopback: Option<OnOff>,
    /// Slots of the per-address table (24 bytes each; full: idle entries are evicted, counted) [default: 65536]
    #[arg(long, env = "SHARDCAST_IP_TABLE_ENTRIES")]
    pub ip_table_entries: Option<usize>,
}

impl AccessOverrides {
    /// Fill every unset option from `lower`.
    pub fn or(self, lower: AccessOverrides) -> AccessOverrides {
        AccessOverrides {
            trust_loopback: self.trust_loopback.or(lower.trust_loopback),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            jwt_secret_file: self.jwt_secret_file.or(lower.jwt_secret_file),
            jwt_public_key: self.jwt_public_key.or(lower.jwt_public_key),
            jwt_issuer: self.jwt_issuer.or(lower.jwt_issuer),
            jwt_audience: self.jwt_audience.or(lower.jwt_audience),
            token_expiry_grace_ms: self.token_expiry_grace_ms.or(lower.token_expiry_grace_ms),
            public_topics: self.public_topics.or(lower.public_topics),
            allowed_origins: self.allowed_origins.or(lower.allowed_origins),
            subscriber_rate: self.subscriber_rate.or(lower.subscriber_rate),
            subscriber_burst: self.subscriber_burst.or(lower.subscriber_burst),
            publisher_rate: self.publisher_rate.or(lower.publisher_rate),
            publisher_burst: self.publisher_burst.or(lower.publisher_burst),
            ip_connect_limit: self.ip_connect_limit.or(lower.ip_connect_limit),
            ip_connect_window_ms: self.ip_connect_window_ms.or(lower.ip_connect_window_ms),
            ip_max_connections: self.ip_max_connections.or(lower.ip_max_connections),
            ip_limit_loopback: self.ip_limit_loopback.or(lower.ip_limit_loopback),
            ip_table_entries: self.ip_table_entries.or(lower.ip_table_entries),
        }
    }

    /// Defaults and validation.
    pub fn finish(self) -> Result<AccessConfig, String> {
        let jwt_configured = self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || self.jwt_public_key.as_ref().is_some_and(|k| !k.is_empty());
        let publisher_rate = self.publisher_rate.unwrap_or(PUBLISHER_RATE);
        let config = AccessConfig {
            trust_loopback: self.trust_loopback.unwrap_or(TrustLoopback::Auto),
            jwt_secret: self.jwt_secret,
            jwt_secret_file: self.jwt_secret_file,
            jwt_public_key: self.jwt_public_key.unwrap_or_default(),
            jwt_issuer: self.jwt_issuer,
            jwt_audience: self.jwt_audience,
            token_expiry_grace_ms: self.token_expiry_grace_ms.unwrap_or(0),
            public_topics: self.public_topics.unwrap_or_else(|| {
                if jwt_configured {
                    Vec::new()
                } else {
                    vec!["*".to_owned()]
                }
            }),
            allowed_origins: self.allowed_origins.unwrap_or_default(),
            subscriber_rate: self.subscriber_rate.unwrap_or(SUBSCRIBER_RATE),
            subscriber_burst: self.subscriber_burst.unwrap_or(SUBSCRIBER_BURST),
            publisher_rate,
            publisher_burst: self.publisher_burst.unwrap_or(publisher_rate),
            ip_connect_limit: self.ip_connect_limit.unwrap_or(IP_CONNECT_LIMIT),
            ip_connect_window_ms: self.ip_connect_window_ms.unwrap_or(IP_CONNECT_WINDOW_MS),
            ip_max_connections: self.ip_max_connections.unwrap_or(0),
            ip_limit_loopback: self.ip_limit_loopback.unwrap_or(OnOff::Off),
            ip_table_entries: self.ip_table_entries.unwrap_or(IP_TABLE_ENTRIES),
        };
        config.validate()?;
        Ok(config)
    }
}

impl AccessConfig {
    fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return Err("set jwt_secret or jwt_secret_file, not both".to_owned());
        }
        if self.public_topics.iter().any(|p| p.trim().is_empty()) {
            return Err("public_topics: empty pattern".to_owned());
        }
        AllowedOrigins::parse(&self.allowed_origins)
            .map_err(|e| format!("allowed_origins: {e}"))?;
        if self.ip_connect_window_ms == 0 || self.ip_connect_window_ms > i32::MAX as u64 {
            return Err("ip_connect_window_ms must be 1..=2147483647".to_owned());
        }
        if self.ip_table_entries == 0 {
            return Err("ip_table_entries must be at least 1".to_owned());
        }
        if self.token_expiry_grace_ms > i32::MAX as u64 {
            return Err("token_expiry_grace_ms must be at most 2147483647".to_owned());
        }
        self.verifier()?;
        Ok(())
    }

    /// The configured JWT verifier (reads the key files), or `None` without keys.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, Some(path)) => {
                let s = std::fs::read(path)
                    .map_err(|e| format!("cannot read jwt_secret_file {}: {e}", path.display()))?;
                Some(s.trim_ascii_end().to_vec())
            }
            (None, None) => None,
        };
        Verifier::new(
            secret.as_deref(),
            &self.jwt_public_key,
            self.jwt_issuer.clone(),
            self.jwt_audience.clone(),
        )
    }

    /// True when access tokens can be verified.
    pub fn jwt_configured(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || !self.jwt_public_key.is_empty()
    }

    /// A copy safe to print (the secret redacted).
    pub fn redacted(&self) -> AccessConfig {
        let mut c = self.clone();
        if c.jwt_secret.is_some() {
            c.jwt_secret = Some("<redacted>".to_owned());
        }
        c
    }
}
