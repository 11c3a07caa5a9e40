//! `--resume`: one client session store for all of a run's wss:// connections, standing in for
//! the per-browser caches of a fleet of clients that reconnect.
//!
//! rustls's own in-memory cache keeps at most 8 TLS 1.3 tickets per server name: enough for one
//! browser, not for a storm of 256 handshakes in flight, where a burst of completions pushes out
//! the tickets that the next burst of ClientHellos would have taken (measured: 140 of 500
//! resumed at 64 in flight). Here the bound is [`MAX_TICKETS`], far above any concurrency the
//! generator runs, so every handshake that starts after the server handed out a ticket resumes.

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// TLS 1.3 tickets kept per server (each is used once; the oldest go first).
pub const MAX_TICKETS: usize = 65_536;

#[derive(Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// The store (one mutex: a handshake touches it once or twice).
#[derive(Default)]
pub struct TicketPool {
    servers: Mutex<HashMap<ServerName<'static>, Entry>>,
}

impl std::fmt::Debug for TicketPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketPool").finish_non_exhaustive()
    }
}

impl TicketPool {
    fn with<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut servers = self.servers.lock().expect("ticket pool lock");
        let entry = servers.entry(name.to_owned()).or_default();
        f(entry)
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(&name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |e| e.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(name, |e| e.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(name, |e| e.tls12 = None);
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&name, |e| {
            if e.tls13.len() == MAX_TICKETS {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest first: it is the furthest from expiring.
        self.with(name, |e| e.tls13.pop_back())
    }
}
