//! Logging: where lines go, in which format, and how often.
//!
//! Contract:
//! - Everything logs to stderr through `tracing`, as `text` (human lines) or `json` (one JSON
//!   object per line: `timestamp`, `level`, `target`, `fields` with `message`), `--log-format`.
//! - Text is coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>), so files, pipes and journald never get escape codes; JSON never is.
//! - The `--log` filter gets `async_nats=warn` appended unless it names `async_nats` itself: the
//!   NATS client logs every connection event at INFO, once per reconnect attempt during an
//!   outage. The bridge logs each change of its link state once instead (`bridge::linklog`).
//! - A warning that can repeat at the rate of its cause (accept errors, write failures) goes
//!   through [`warn_limited!`]: the first occurrence logs at once, then at most one line per
//!   [`WARN_WINDOW`] per call site, saying how many occurrences it stands for
//!   (`accept failed (x180 in the last 10 s)`). The occurrences after the last line of a burst
//!   are reported with the next occurrence, if any. [`RateLimit`] is the decision with time as
//!   an input, so it is tested on a virtual clock.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Log line format.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `tracing`'s human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text lines get ANSI colours: only on a terminal, never with a non-empty `NO_COLOR`.
pub fn use_color(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter directives in effect for `log` (the `--log` option): `async_nats` is capped at
/// warn unless `log` names it.
pub fn directives(log: &str) -> String {
    if log.contains("async_nats") {
        log.to_owned()
    } else if log.trim().is_empty() {
        "async_nats=warn".to_owned()
    } else {
        format!("{log},async_nats=warn")
    }
}

/// Install the global subscriber: `format` lines on stderr, filtered by `log`.
pub fn init(format: LogFormat, log: &str) {
    let filter = tracing_subscriber::EnvFilter::new(directives(log));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => {
            let color = use_color(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(color).init();
        }
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// At most one line per this window per [`warn_limited!`] call site.
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// What one occurrence of a rate-limited event should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log a line standing for `count` occurrences (this one included) seen over the last
    /// `span_ms` (0 for the first line).
    Log {
        /// Occurrences since the previous line, this one included.
        count: u64,
        /// Milliseconds since the previous line.
        span_ms: u64,
    },
    /// Count it, log nothing.
    Suppress,
}

/// The rate limit of one call site (shared by every thread that reaches it).
#[derive(Debug)]
pub struct RateLimit {
    window_ms: u64,
    state: Mutex<LimitState>,
}

#[derive(Debug)]
struct LimitState {
    last_line_ms: Option<u64>,
    suppressed: u64,
}

impl RateLimit {
    /// A limit of one line per `window`.
    pub const fn new(window: Duration) -> RateLimit {
        RateLimit {
            window_ms: window.as_millis() as u64,
            state: Mutex::new(LimitState {
                last_line_ms: None,
                suppressed: 0,
            }),
        }
    }

    /// One occurrence at `now_ms` (a monotonic clock).
    pub fn handle(&self, now_ms: u64) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.last_line_ms {
            Some(last) if now_ms.saturating_sub(last) < self.window_ms => {
                s.suppressed += 1;
                Verdict::Suppress
            }
            last => {
                let verdict = Verdict::Log {
                    count: s.suppressed + 1,
                    span_ms: last.map_or(0, |l| now_ms.saturating_sub(l)),
                };
                s.last_line_ms = Some(now_ms);
                s.suppressed = 0;
                verdict
            }
        }
    }
}

/// Seconds for a "(xN in the last S s)" suffix: rounded, at least 1.
pub fn span_secs(span_ms: u64) -> u64 {
    (span_ms.saturating_add(500) / 1000).max(1)
}

/// `tracing::warn!` limited to one line per [`WARN_WINDOW`] at this call site:
/// `warn_limited!("accept failed", shard = id, error = %e)`. A line standing for several
/// occurrences reads `accept failed (x180 in the last 10 s)` and carries `repeats = 180`.
#[macro_export]
macro_rules! warn_limited {
    ($msg:literal $(, $($field:tt)+)?) => {{
        static LIMIT: $crate::obs::logging::RateLimit =
            $crate::obs::logging::RateLimit::new($crate::obs::logging::WARN_WINDOW);
        if let $crate::obs::logging::Verdict::Log { count, span_ms } =
            LIMIT.handle($crate::obs::stats::monotonic_ms())
        {
            if count == 1 {
                tracing::warn!($($($field)+,)? $msg);
            } else {
                tracing::warn!(
                    $($($field)+,)?
                    repeats = count,
                    "{} (x{} in the last {} s)",
                    $msg,
                    count,
                    $crate::obs::logging::span_secs(span_ms)
                );
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn color_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(
            use_color(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
        assert!(!use_color(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn nats_client_is_capped_at_warn_unless_named() {
        assert_eq!(directives("info"), "info,async_nats=warn");
        assert_eq!(directives(""), "async_nats=warn");
        assert_eq!(
            directives("debug,async_nats=trace"),
            "debug,async_nats=trace"
        );
        tracing_subscriber::EnvFilter::try_new(directives("warn,shardcast=debug")).unwrap();
    }

    #[test]
    fn one_line_per_window_with_the_count_it_stands_for() {
        let limit = RateLimit::new(Duration::from_secs(10));
        assert_eq!(
            limit.handle(1_000),
            Verdict::Log {
                count: 1,
                span_ms: 0
            }
        );
        // 179 more within the window: counted, not logged.
        for t in 0..179 {
            assert_eq!(limit.handle(1_001 + t * 50), Verdict::Suppress);
        }
        // The first after the window stands for them and itself.
        assert_eq!(
            limit.handle(11_000),
            Verdict::Log {
                count: 180,
                span_ms: 10_000
            }
        );
        assert_eq!((span_secs(10_000), span_secs(10_499)), (10, 10));
        // A lone occurrence much later is logged at once, as one.
        assert_eq!(
            limit.handle(500_000),
            Verdict::Log {
                count: 1,
                span_ms: 489_000
            }
        );
        assert_eq!(limit.handle(500_001), Verdict::Suppress);
        assert_eq!(span_secs(1), 1);
    }

    #[test]
    fn the_macro_compiles_with_and_without_fields() {
        let e = std::io::Error::other("x");
        for _ in 0..3 {
            crate::warn_limited!("test warning", shard = 1, error = %e);
            crate::warn_limited!("test warning without fields");
        }
    }
}
