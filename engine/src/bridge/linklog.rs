//! What the bridge logs about its NATS link: one line per change of state, never one per retry.
//!
//! Contract: feed every client event with [`LinkLog::handle`] and the time (a monotonic clock in
//! ms); it returns the line to log, if any. The link starts `connecting`; the first failed
//! attempt, or the loss of an established connection, logs one WARN and the link is `down`;
//! further failed attempts while down log nothing (they are counted:
//! `shardcast_bridge_connect_failures_total`); the next connection logs one INFO `up` line with
//! how long the link was down and how many attempts failed meanwhile. A NATS outage of any
//! length is therefore two lines.

/// A client event, as far as the link state is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection was established.
    Connected,
    /// An established connection was lost.
    Disconnected,
    /// A round of connection attempts failed (the client retries with backoff).
    ConnectFailed(String),
}

/// A line to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkLine {
    /// The link came up (INFO).
    Up {
        /// How long it had not been up (0 on a first connection that never failed).
        down_ms: u64,
        /// Failed attempts while it was down.
        failed_attempts: u64,
    },
    /// The link went down (WARN): the first failed attempt, or a lost connection.
    Down {
        /// What happened.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Up,
    Down,
}

/// The link state as the log sees it.
#[derive(Debug)]
pub struct LinkLog {
    state: State,
    not_up_since_ms: u64,
    failed: u64,
}

impl LinkLog {
    /// A link that starts connecting at `now_ms`.
    pub fn new(now_ms: u64) -> LinkLog {
        LinkLog {
            state: State::Connecting,
            not_up_since_ms: now_ms,
            failed: 0,
        }
    }

    /// One event at `now_ms`; the line to log, if the state changed.
    pub fn handle(&mut self, event: LinkEvent, now_ms: u64) -> Option<LinkLine> {
        match (self.state, event) {
            (State::Up, LinkEvent::Connected) | (State::Down, LinkEvent::Disconnected) => None,
            (State::Connecting | State::Down, LinkEvent::Connected) => {
                let line = LinkLine::Up {
                    down_ms: if self.failed == 0 && self.state == State::Connecting {
                        0
                    } else {
                        now_ms.saturating_sub(self.not_up_since_ms)
                    },
                    failed_attempts: self.failed,
                };
                self.state = State::Up;
                self.failed = 0;
                Some(line)
            }
            (State::Up | State::Connecting, LinkEvent::Disconnected) => {
                self.state = State::Down;
                self.not_up_since_ms = now_ms;
                Some(LinkLine::Down {
                    reason: "connection lost".into(),
                })
            }
            (State::Connecting, LinkEvent::ConnectFailed(e)) => {
                self.state = State::Down;
                self.failed = 1;
                Some(LinkLine::Down {
                    reason: format!("cannot connect: {e}"),
                })
            }
            (State::Up, LinkEvent::ConnectFailed(_)) => None,
            (State::Down, LinkEvent::ConnectFailed(_)) => {
                self.failed += 1;
                None
            }
        }
    }
}

impl LinkLine {
    /// Log the line (`reconnect_max_ms`: the backoff cap, for the down line).
    pub fn log(&self, reconnect_max_ms: u64) {
        match self {
            LinkLine::Up {
                down_ms,
                failed_attempts,
            } => tracing::info!(down_ms, failed_attempts, "nats bridge: up"),
            LinkLine::Down { reason } => tracing::warn!(
                "nats bridge: down ({reason}); retrying every <= {reconnect_max_ms} ms, logging again only when it is up"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> LinkEvent {
        LinkEvent::ConnectFailed("connection refused".into())
    }

    #[test]
    fn an_outage_is_one_down_line_and_one_up_line() {
        let mut log = LinkLog::new(0);
        // NATS down at start: the first failure logs, the next 400 do not.
        assert_eq!(
            log.handle(failed(), 10),
            Some(LinkLine::Down {
                reason: "cannot connect: connection refused".into()
            })
        );
        for t in 0..400 {
            assert_eq!(log.handle(failed(), 20 + t * 1700), None);
        }
        assert_eq!(
            log.handle(LinkEvent::Connected, 700_000),
            Some(LinkLine::Up {
                down_ms: 700_000,
                failed_attempts: 401
            })
        );
        assert_eq!(log.handle(LinkEvent::Connected, 700_001), None);
        // Lost later: one line, then silence until it is back.
        assert_eq!(
            log.handle(LinkEvent::Disconnected, 800_000),
            Some(LinkLine::Down {
                reason: "connection lost".into()
            })
        );
        assert_eq!(log.handle(LinkEvent::Disconnected, 800_001), None);
        assert_eq!(log.handle(failed(), 800_050), None);
        assert_eq!(
            log.handle(LinkEvent::Connected, 803_000),
            Some(LinkLine::Up {
                down_ms: 3_000,
                failed_attempts: 1
            })
        );
    }

    #[test]
    fn a_first_connection_is_up_with_no_downtime() {
        let mut log = LinkLog::new(5);
        assert_eq!(
            log.handle(LinkEvent::Connected, 40),
            Some(LinkLine::Up {
                down_ms: 0,
                failed_attempts: 0
            })
        );
        assert_eq!(log.handle(failed(), 50), None, "a stale failure while up");
    }
}
