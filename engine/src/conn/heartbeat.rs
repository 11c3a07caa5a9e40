//! Heartbeats and connection timeouts: pings, pong timeout, idle timeout, maximum lifetime.
//!
//! The decisions are sans-IO: [`Liveness`] is a connection's 16-byte state and time is an
//! input (milliseconds since the shard's epoch, a wrapping `u32`), so every rule is tested on a
//! virtual clock. Call order for one connection: [`Liveness::new`] when it is registered,
//! [`Liveness::on_inbound`] whenever frames arrive (a pong is just one of them), and
//! [`Liveness::check`] on every sweep, which says what to do now.
//!
//! The shard applies it with one coarse sweep, not a timer per connection: every
//! [`HeartbeatConfig::sweep_period`] the core walks its connections and applies the actions:
//! queue the shard's one pre-encoded ping frame (a `Bytes` clone), or queue a close frame and
//! close.

use std::time::Duration;

use shardcast_proto::CloseCode;

/// Largest accepted duration (ms): deadlines are compared as signed differences of wrapping
/// `u32` clocks, which is exact for distances below 2^31 ms (24.8 days).
pub const MAX_DURATION_MS: u64 = i32::MAX as u64;

/// Heartbeat settings in the units [`Liveness`] works in (ms; 0 = off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Ping every this many ms.
    pub ping_interval: u32,
    /// Close when nothing arrived this long after a ping.
    pub pong_timeout: u32,
    /// Close when nothing arrived at all for this long.
    pub idle_timeout: u32,
    /// Close after at most this long.
    pub max_lifetime: u32,
    /// Up to this percentage of `max_lifetime` is taken off, spread per connection.
    pub lifetime_jitter_pct: u8,
}

impl HeartbeatConfig {
    /// True when any rule is on (otherwise no sweep runs). A pong timeout alone does nothing
    /// without pings.
    pub fn enabled(&self) -> bool {
        self.ping_interval > 0 || self.idle_timeout > 0 || self.max_lifetime > 0
    }

    /// How often the shard sweep runs: a quarter of the shortest enabled duration, between
    /// 10 ms and 1 s. Actions are late by at most one period; with the defaults that is 1 s
    /// on a 25 s ping / 10 s pong timeout.
    pub fn sweep_period(&self) -> Duration {
        // The pong timeout only matters when pings are sent.
        let pong = if self.ping_interval > 0 {
            self.pong_timeout
        } else {
            0
        };
        let shortest = [
            self.ping_interval,
            pong,
            self.idle_timeout,
            self.max_lifetime,
        ]
        .into_iter()
        .filter(|&d| d > 0)
        .min()
        .unwrap_or(u32::MAX);
        Duration::from_millis(u64::from(shortest / 4).clamp(10, 1000))
    }

    /// This connection's lifetime: `max_lifetime` minus a jitter of up to
    /// `lifetime_jitter_pct` percent derived from `seed` (no RNG: the same seed gives the same
    /// lifetime). Never longer than `max_lifetime`, never 0 when enabled. 0 = no lifetime.
    pub fn lifetime(&self, seed: u64) -> u32 {
        if self.max_lifetime == 0 {
            return 0;
        }
        let span = u64::from(self.max_lifetime) * u64::from(self.lifetime_jitter_pct) / 100;
        let jitter = ((span + 1) * (splitmix64(seed) >> 32)) >> 32; // uniform in 0..=span
        (u64::from(self.max_lifetime) - jitter).max(1) as u32
    }
}

/// splitmix64's finalizer: spreads consecutive seeds (connection ids) over all 64 bits.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why the heartbeat closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No frame arrived within `pong_timeout` of a ping.
    PongTimeout,
    /// No frame arrived for `idle_timeout`.
    IdleTimeout,
    /// The connection reached its lifetime.
    MaxLifetime,
}

impl Reason {
    /// The close code: always 1001 (see docs/ENGINE.md): the server ends the connection and the
    /// client should reconnect. 1008 reads as a permanent refusal (auth, rate limit) to many
    /// clients; 1011 would report a server fault.
    pub fn code(self) -> CloseCode {
        CloseCode::GOING_AWAY
    }

    /// The close reason text.
    pub fn text(self) -> &'static str {
        match self {
            Reason::PongTimeout => "pong timeout",
            Reason::IdleTimeout => "idle timeout",
            Reason::MaxLifetime => "max connection lifetime",
        }
    }

    /// Close without lingering: a peer that stopped answering will not send its close reply.
    pub fn abort(self) -> bool {
        self == Reason::PongTimeout
    }
}

/// What [`Liveness::check`] wants done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet.
    None,
    /// Queue a ping.
    SendPing,
    /// Queue a close frame for this reason and close.
    Close(Reason),
}

/// A ping is outstanding (sent at `ping_at`, not answered yet).
const AWAITING: u8 = 1;
/// `expires` is set.
const EXPIRES: u8 = 2;

/// One connection's heartbeat state: 16 bytes. Times are ms since the shard epoch, wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// When the last frame arrived (or the connection started).
    last_inbound: u32,
    /// When the last ping was sent (or the connection started): the next one is due
    /// `ping_interval` later; with [`AWAITING`], the pong deadline runs from here.
    ping_at: u32,
    /// Lifetime deadline (with [`EXPIRES`]).
    expires: u32,
    flags: u8,
}

/// `now - since` on the wrapping clock.
fn elapsed(now: u32, since: u32) -> u32 {
    now.wrapping_sub(since)
}

/// `now` is at or past `deadline` (exact while they are less than 2^31 ms apart).
fn reached(now: u32, deadline: u32) -> bool {
    (now.wrapping_sub(deadline) as i32) >= 0
}

impl Liveness {
    /// State of a connection starting at `now`; `seed` picks its lifetime jitter.
    pub fn new(now: u32, seed: u64, cfg: &HeartbeatConfig) -> Self {
        let lifetime = cfg.lifetime(seed);
        Liveness {
            last_inbound: now,
            ping_at: now,
            expires: now.wrapping_add(lifetime),
            flags: if lifetime > 0 { EXPIRES } else { 0 },
        }
    }

    /// Frames arrived at `now`: the peer is alive, whatever the frames were (a pong, a
    /// message, a ping of its own).
    pub fn on_inbound(&mut self, now: u32) {
        self.last_inbound = now;
        self.flags &= !AWAITING;
    }

    /// True while a ping is unanswered.
    pub fn awaiting_pong(&self) -> bool {
        self.flags & AWAITING != 0
    }

    /// What to do at `now`. Returns [`Action::SendPing`] at most once per `ping_interval` and
    /// records the ping as sent; closes take precedence over pings. Pings keep their period
    /// whatever arrives in between, so `ping_at` is never older than one interval.
    pub fn check(&mut self, now: u32, cfg: &HeartbeatConfig) -> Action {
        let awaiting = self.awaiting_pong() && cfg.pong_timeout > 0;
        if awaiting && elapsed(now, self.ping_at) >= cfg.pong_timeout {
            return Action::Close(Reason::PongTimeout);
        }
        if cfg.idle_timeout > 0 && elapsed(now, self.last_inbound) >= cfg.idle_timeout {
            return Action::Close(Reason::IdleTimeout);
        }
        if self.flags & EXPIRES != 0 && reached(now, self.expires) {
            return Action::Close(Reason::MaxLifetime);
        }
        // While a ping is unanswered, another one would move the pong deadline: wait.
        if cfg.ping_interval > 0 && !awaiting && elapsed(now, self.ping_at) >= cfg.ping_interval {
            self.ping_at = now;
            self.flags |= AWAITING;
            return Action::SendPing;
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ping: u32, pong: u32, idle: u32, life: u32, jitter: u8) -> HeartbeatConfig {
        HeartbeatConfig {
            ping_interval: ping,
            pong_timeout: pong,
            idle_timeout: idle,
            max_lifetime: life,
            lifetime_jitter_pct: jitter,
        }
    }

    /// Run `check` at every ms of `len` from `from` (wrapping), as the sweep would: stop at
    /// the first close. Returns (time, action) of each non-None action.
    fn run_clock(l: &mut Liveness, c: &HeartbeatConfig, from: u32, len: u32) -> Vec<(u32, Action)> {
        let mut out = Vec::new();
        for t in (0..len).map(|i| from.wrapping_add(i)) {
            match l.check(t, c) {
                Action::None => {}
                a => out.push((t, a)),
            }
            if matches!(out.last(), Some((_, Action::Close(_)))) {
                break;
            }
        }
        out
    }

    #[test]
    fn state_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Liveness>(), 16);
    }

    #[test]
    fn ping_exactly_when_due_then_close_exactly_at_pong_deadline() {
        let c = cfg(100, 30, 0, 0, 0);
        let mut l = Liveness::new(1000, 0, &c);
        assert_eq!(l.check(1099, &c), Action::None);
        assert_eq!(l.check(1100, &c), Action::SendPing);
        assert!(l.awaiting_pong());
        assert_eq!(l.check(1100, &c), Action::None, "one ping per interval");
        assert_eq!(l.check(1129, &c), Action::None);
        assert_eq!(l.check(1130, &c), Action::Close(Reason::PongTimeout));
    }

    #[test]
    fn pong_resets_and_pings_keep_their_period() {
        let c = cfg(100, 30, 0, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        let mut pings = Vec::new();
        for t in 0..1000 {
            match l.check(t, &c) {
                Action::SendPing => pings.push(t),
                Action::None => {}
                a => panic!("{a:?} at {t}"),
            }
            if l.awaiting_pong() && t == pings.last().unwrap() + 29 {
                l.on_inbound(t); // the pong, 1 ms before the deadline
            }
        }
        assert_eq!(pings, (1..10).map(|i| i * 100).collect::<Vec<_>>());
    }

    #[test]
    fn any_inbound_frame_counts_but_only_after_the_ping() {
        let c = cfg(100, 30, 0, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        l.on_inbound(99); // before the ping: does not answer it
        assert_eq!(l.check(100, &c), Action::SendPing);
        assert_eq!(l.check(129, &c), Action::None);
        l.on_inbound(129); // e.g. a SUBSCRIBE message, not a pong
        assert_eq!(run_clock(&mut l, &c, 130, 70), vec![]);
        assert_eq!(l.check(200, &c), Action::SendPing);
        assert_eq!(l.check(230, &c), Action::Close(Reason::PongTimeout));
    }

    #[test]
    fn pong_timeout_longer_than_interval_does_not_stack_pings() {
        let c = cfg(100, 250, 0, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        assert_eq!(
            run_clock(&mut l, &c, 0, 400),
            vec![
                (100, Action::SendPing),
                (350, Action::Close(Reason::PongTimeout))
            ]
        );
    }

    #[test]
    fn pong_timeout_zero_pings_forever_without_closing() {
        let c = cfg(100, 0, 0, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        let acts = run_clock(&mut l, &c, 0, 1000);
        assert_eq!(acts.len(), 9);
        assert!(acts.iter().all(|&(_, a)| a == Action::SendPing));
    }

    #[test]
    fn idle_timeout_counts_every_inbound_frame() {
        let c = cfg(0, 0, 500, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        assert_eq!(l.check(499, &c), Action::None);
        l.on_inbound(499);
        assert_eq!(l.check(998, &c), Action::None);
        assert_eq!(l.check(999, &c), Action::Close(Reason::IdleTimeout));
        // With pings answered, idle never fires.
        let c = cfg(100, 50, 300, 0, 0);
        let mut l = Liveness::new(0, 0, &c);
        for t in 0..2000 {
            assert_ne!(l.check(t, &c), Action::Close(Reason::IdleTimeout));
            if l.awaiting_pong() {
                l.on_inbound(t + 1);
            }
        }
    }

    #[test]
    fn lifetime_exact_without_jitter() {
        let c = cfg(0, 0, 0, 1000, 0);
        let mut l = Liveness::new(5, 42, &c);
        assert_eq!(
            run_clock(&mut l, &c, 5, 1001),
            vec![(1005, Action::Close(Reason::MaxLifetime))]
        );
    }

    #[test]
    fn lifetime_jitter_is_bounded_deterministic_and_spread() {
        let c = cfg(0, 0, 0, 86_400_000, 10);
        let lives: Vec<u32> = (0..10_000u64).map(|id| c.lifetime(id)).collect();
        assert_eq!(
            lives,
            (0..10_000u64).map(|id| c.lifetime(id)).collect::<Vec<_>>()
        );
        let (min, max) = (*lives.iter().min().unwrap(), *lives.iter().max().unwrap());
        assert!(min >= 77_760_000 && max <= 86_400_000, "{min}..{max}");
        // Spread over the whole window: each tenth of it gets roughly a tenth of the ids.
        let mut buckets = [0u32; 10];
        for l in &lives {
            buckets[((86_400_000 - l) as u64 * 10 / 8_640_001) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
        // Extremes: 100% jitter never yields 0; 0% is exact.
        let full = cfg(0, 0, 0, 1, 100);
        assert!((0..100).all(|s| full.lifetime(s) == 1));
        assert_eq!(cfg(0, 0, 0, 0, 10).lifetime(7), 0);
    }

    #[test]
    fn everything_off_when_zero() {
        let c = cfg(0, 0, 0, 0, 10);
        assert!(!c.enabled());
        let mut l = Liveness::new(0, 1, &c);
        assert_eq!(run_clock(&mut l, &c, 0, 100_000), vec![]);
        assert!(
            !cfg(0, 10_000, 0, 0, 0).enabled(),
            "pong timeout alone does nothing"
        );
    }

    #[test]
    fn no_wraparound_bug_near_u32_max() {
        let start = u32::MAX - 110;
        let c = cfg(100, 30, 0, 0, 0);
        let mut l = Liveness::new(start, 0, &c);
        assert_eq!(
            run_clock(&mut l, &c, start, 200),
            vec![
                (start + 100, Action::SendPing),
                (start.wrapping_add(130), Action::Close(Reason::PongTimeout))
            ]
        );
        assert!(
            start.wrapping_add(130) < start,
            "the close is after the wrap"
        );
        let c = cfg(0, 0, 400, 0, 0);
        let mut l = Liveness::new(start, 0, &c);
        assert_eq!(
            run_clock(&mut l, &c, start, 401),
            vec![(start.wrapping_add(400), Action::Close(Reason::IdleTimeout))]
        );
        let c = cfg(0, 0, 0, 300, 0);
        let mut l = Liveness::new(start, 0, &c);
        assert_eq!(
            run_clock(&mut l, &c, start, 301),
            vec![(start.wrapping_add(300), Action::Close(Reason::MaxLifetime))]
        );
    }

    #[test]
    fn sweep_period_bounds() {
        assert_eq!(
            cfg(25_000, 10_000, 0, 0, 0).sweep_period().as_millis(),
            1000
        );
        assert_eq!(cfg(200, 300, 0, 0, 0).sweep_period().as_millis(), 50);
        assert_eq!(cfg(0, 0, 0, 400, 0).sweep_period().as_millis(), 100);
        assert_eq!(
            cfg(0, 40, 0, 86_400_000, 0).sweep_period().as_millis(),
            1000
        );
        assert_eq!(cfg(1, 1, 0, 0, 0).sweep_period().as_millis(), 10);
    }
}
