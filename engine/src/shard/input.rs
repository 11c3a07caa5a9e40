//! What arrives from clients: accepts (admission), the HTTP phase (request head, HTTP publish
//! body, the upgrade) and WebSocket input (decode, then the connection's role: control requests,
//! publishes, echoes, pongs, the close handshake).
//!
//! The decisions come from `conn/` (pure functions); the core applies them. Received bytes are
//! decoded straight from the driver's buffer; only a partial frame is copied into the
//! connection, whose decoder exists only while such a frame (or a fragmented message) does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::http::{Parse, RequestLimits, RequestParser};
use shardcast_proto::{
    encode_close, encode_frame, CloseCode, Decoder, DecoderConfig, Event, MessageKind, OpCode,
    Role as WsRole,
};

use crate::access::rate::Limit;
use crate::access::state::{self as access_state, ConnAccess};
use crate::conn::admission::{self, Load};
use crate::conn::control::{self, Subscriptions};
use crate::conn::heartbeat::Liveness;
use crate::conn::route::Route;
use crate::conn::state::{flag, Body, Conn, Http, Phase, Role, Rx};
use crate::conn::upgrade::{self, Admission, Decision};
use crate::continuity::params::{self, Continuity};
use crate::flow::queue::InboundCharge;
use crate::obs::latency::LatencyKind;
use crate::obs::stats::{self, Eviction, Refusal};
use crate::runtime::driver::{Admit, ConnId, IoRequest, Via};
use crate::runtime::shutdown::SHUTDOWN_REASON;
use crate::shard::Core;

impl Core {
    /// A connection was accepted from `peer` on the data listener: see
    /// [`handle_accepted_via`](Self::handle_accepted_via).
    pub fn handle_accepted(&mut self, peer: SocketAddr) -> Admit {
        self.handle_accepted_via(peer, Via::Data)
    }

    /// A connection was accepted from `peer` on listener `via`: admit it (a slot, reading its
    /// request under the handshake deadline; a TLS session when it came through a TLS data
    /// listener) or refuse it over the limits.
    pub fn handle_accepted_via(&mut self, peer: SocketAddr, via: Via) -> Admit {
        let st = &mut self.st;
        stats::add(&st.stats().connections_accepted, 1);
        let global = st
            .global_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let load = Load {
            global,
            shard: st.active,
            max_global: st.config.max_connections,
            max_shard: st.config.max_connections_per_shard,
            shutting_down: st.shutting_down,
        };
        if let Err(response) = admission::admit(load) {
            st.global_active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            st.stats().refuse(Refusal::MaxConnections);
            return Admit::Refuse(Bytes::from(response));
        }
        // Access (issue 14): the per-address limits, before a byte of the request is read.
        let now = crate::runtime::clock::monotonic_ms_at(st.now);
        let (verdict, effects) = st.access.admit_peer(peer.ip(), now);
        let s = &st.all_stats[st.id];
        stats::add(&s.access.ip_evictions, u64::from(effects.evicted));
        stats::add(&s.access.ip_untracked, u64::from(effects.untracked));
        let ticket = match verdict {
            Ok(ticket) => ticket,
            Err(refused) => {
                st.global_active
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                s.refuse(Refusal::TooManyRequests);
                s.access.refuse(refused.reason);
                let response = admission::too_many_requests(refused.retry_after_s);
                return Admit::Refuse(Bytes::from(response));
            }
        };
        st.active += 1;
        stats::add(&st.stats().connections_active, 1);
        let http = Box::new(Http {
            buf: st.buffer(),
            parser: RequestParser::new(RequestLimits {
                max_head_bytes: st.config.max_header_bytes,
                max_headers: st.config.max_headers,
            }),
            peer,
            accepted_at: st.now,
            body: None,
            charge: InboundCharge::new(st.ledger.clone()),
        });
        let mut conn = Conn::accepted(http);
        // A per-address ticket (only under a concurrent limit) is released when the slot is
        // freed (`handle_closed`).
        if ticket != 0 {
            conn.access = Some(Box::new(ConnAccess {
                ticket,
                ..ConnAccess::default()
            }));
        }
        let id = st.conns.insert(conn);
        let timeout = st
            .config
            .handshake_timeout_ms
            .min(crate::conn::heartbeat::MAX_DURATION_MS) as u32;
        st.set_deadline(id, st.now_ms.wrapping_add(timeout));
        st.io.push_back(IoRequest::Read(id));
        if via == Via::Data {
            self.tls_accepted(id);
        }
        Admit::Accept(id)
    }

    /// An accept failed with `error` (isolation): counted as `accept_errors{reason}`, logged
    /// at most once per 10 s with the count since (`warn_limited!`), and when out of descriptors
    /// the pending clients are answered 503 through the driver's reserve descriptor
    /// (`refused{descriptors}`).
    pub fn handle_accept_failed(
        &mut self,
        error: &std::io::Error,
        refuse: &mut dyn FnMut(&[u8]) -> usize,
    ) {
        use crate::runtime::accept::AcceptErrorReason;
        let st = &mut self.st;
        let why = AcceptErrorReason::of(error);
        st.stats().accept_error(why);
        // One line per 10 s for the process, with the count it stands for (`obs::logging`).
        crate::warn_limited!("accept failed", shard = st.id, error = %error);
        if why.out_of_descriptors() {
            let n = refuse(&upgrade::out_of_descriptors());
            for _ in 0..n {
                st.stats().refuse(Refusal::Descriptors);
            }
        }
    }

    /// `data` arrived on `id`.
    pub fn handle_received(&mut self, id: ConnId, data: &mut [u8]) {
        // wss://: decrypted first, then the same path (`shard/tls.rs`).
        if self.st.conns.get(id).is_some_and(|c| c.has(flag::TLS)) {
            return self.handle_ciphertext(id, data);
        }
        self.handle_plaintext(id, data);
    }

    /// Plaintext `data` arrived on `id` (as received, or decrypted).
    pub(crate) fn handle_plaintext(&mut self, id: ConnId, data: &mut [u8]) {
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        match c.phase {
            Phase::Http => {
                let mut grew = false;
                if let Some(http) = c.http.as_mut() {
                    http.buf.extend_from_slice(data);
                    grew = http.charge.set(http.buf.capacity());
                }
                // Isolation: a request (an HTTP publish body) is charged as it arrives; over
                // the shard's share of the ceiling it is refused (503).
                if grew && !self.st.governor.fits(self.st.charged(), 0) {
                    if let Some(http) = self.st.conns.get_mut(id).and_then(|c| c.http.take()) {
                        self.st.stats().refuse(Refusal::Memory);
                        return self.respond(id, http.buf, upgrade::no_memory());
                    }
                }
                self.advance_http(id);
            }
            Phase::Open => self.handle_ws_input(id, data),
            // A closing connection reads nothing more of what the peer says; lingering ones
            // discard until EOF.
            Phase::Closing | Phase::Linger | Phase::Ended => {}
        }
    }

    /// No more input on `id`: the peer's EOF (`error` false) or a socket error.
    pub fn handle_read_closed(&mut self, id: ConnId, error: bool) {
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        if c.has(flag::TLS) {
            self.tls_read_closed(id);
        }
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        c.set(flag::READ_EOF);
        match c.phase {
            // Our final frame still goes out; the linger is skipped (the peer is done).
            Phase::Closing if !error => {}
            // A stopped publisher's held input is still to be published: it ends once that is
            // decoded (`run_resumes`).
            Phase::Open if !error && c.has(flag::STOPPED) => {}
            Phase::Ended => {}
            _ => self.end(id, crate::runtime::driver::CloseMode::Graceful),
        }
    }

    /// True while the core wants input from `id`.
    pub fn wants_input(&self, id: ConnId) -> bool {
        self.st.conns.get(id).is_some_and(|c| {
            !c.has(flag::STOPPED) && matches!(c.phase, Phase::Http | Phase::Open | Phase::Linger)
        })
    }

    /// Parse what the request buffer holds and act on it once the head (and a publish's body)
    /// is complete.
    fn advance_http(&mut self, id: ConnId) {
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        let Some(mut http) = c.http.take() else {
            return;
        };
        loop {
            if let Some(body) = &http.body {
                if http.buf.len() < body.head_len + body.length {
                    break;
                }
                return self.finish_publish(id, *http);
            }
            let decision = match http.parser.parse(&http.buf) {
                Ok(Parse::Partial) => break,
                Err(e) => upgrade::malformed(e),
                Ok(Parse::Complete { request, head_len }) => {
                    let st = &self.st;
                    // The wall clock, read once per request head: token `exp` is Unix time.
                    let access = (&*st.access, crate::access::token::unix_now());
                    match upgrade::decide(
                        &request,
                        http.peer.ip(),
                        &st.config,
                        access,
                        st.id,
                        |t| st.publish_refusal(t),
                    ) {
                        Decision::Publish {
                            cors,
                            topic,
                            text,
                            length,
                        } => {
                            http.body = Some(Body {
                                topic,
                                text,
                                head_len,
                                length,
                                cors,
                            });
                            continue;
                        }
                        Decision::Upgrade(route, _, _)
                            if upgrade::topics_named(
                                &route,
                                self.st.config.max_topics_per_connection,
                            ) > self.st.subscription_room() =>
                        {
                            upgrade::no_subscription_room()
                        }
                        Decision::Upgrade(route, response, mut admission) => {
                            // Continuity: `seq=1`, `since=`, `epoch=` of a subscriber.
                            match continuity_of(&route, request.query()) {
                                Ok(cont) => {
                                    let leftover = http.buf.split_off(head_len);
                                    let accepted_at = http.accepted_at;
                                    self.st.recycle(http.buf);
                                    // permessage-deflate, before `upgrade` subscribes
                                    // (`shard/deflate.rs`).
                                    self.st.deflate_agreed(id, admission.deflate.take());
                                    let upgrade = (route, response, admission, cont);
                                    return self.upgrade(id, accepted_at, upgrade, leftover);
                                }
                                Err(why) => upgrade::bad_request(&why),
                            }
                        }
                        refuse => refuse,
                    }
                }
            };
            let response = match decision {
                Decision::Refuse(why, response) => {
                    self.st.stats().refuse(why);
                    response
                }
                Decision::Deny(why, reason, response) => {
                    self.st.stats().refuse(why);
                    self.st.stats().access.refuse(reason);
                    response
                }
                Decision::Answer(response) => response,
                _ => unreachable!("publish and upgrade return above"),
            };
            return self.respond(id, http.buf, response);
        }
        if let Some(c) = self.st.conns.get_mut(id) {
            c.http = Some(http);
        }
    }

    /// Answer an HTTP request and close (after the flush and the linger).
    fn respond(&mut self, id: ConnId, buf: Vec<u8>, response: Vec<u8>) {
        self.st.recycle(buf);
        self.st.close_with_bytes(id.slot, Bytes::from(response));
    }

    /// The request timed out before it was complete: 408, counted.
    pub(crate) fn handshake_timed_out(&mut self, id: ConnId) {
        if self.tls_timed_out(id) {
            return;
        }
        let Some(http) = self.st.conns.get_mut(id).and_then(|c| c.http.take()) else {
            return;
        };
        self.st.stats().refuse(Refusal::HandshakeTimeout);
        self.respond(id, http.buf, upgrade::timed_out());
    }

    fn finish_publish(&mut self, id: ConnId, http: Http) {
        let body = http.body.as_ref().expect("a publish has a body");
        let payload = &http.buf[body.head_len..body.head_len + body.length];
        let response =
            match upgrade::finish_publish(body.text, payload, self.st.publish_refusal(&body.topic))
            {
                Ok(kind) => {
                    let s = self.st.stats();
                    stats::add(&s.messages_in, 1);
                    stats::add(&s.bytes_in, payload.len() as u64);
                    let topic: Arc<str> = Arc::from(body.topic.as_str());
                    self.publish(&topic, kind, payload);
                    upgrade::published(body.cors.as_deref())
                }
                Err(Decision::Refuse(why, response)) => {
                    self.st.stats().refuse(why);
                    response
                }
                Err(_) => unreachable!("finish_publish refuses or accepts"),
            };
        self.respond(id, http.buf, response);
    }

    /// Switch `id` to WebSocket: write the 101, take its role, and decode what the client sent
    /// after the request head.
    fn upgrade(
        &mut self,
        id: ConnId,
        accepted_at: std::time::Instant,
        (route, response, admission, cont): (Route, Vec<u8>, Admission, Continuity),
        mut leftover: Vec<u8>,
    ) {
        let st = &mut self.st;
        st.latency.record(
            LatencyKind::Handshake,
            st.now.saturating_duration_since(accepted_at),
        );
        // The jitter seed mixes the shard, the slot and the start time, so a cohort
        // reconnecting together spreads out.
        let seed = (st.id as u64) << 48 ^ u64::from(st.now_ms) << 16 ^ u64::from(id.slot);
        let mut liveness = Liveness::new(st.now_ms, seed, &st.hb);
        let now_ms = st.now_ms;
        // Access: a token's expiry is one more deadline of the heartbeat sweep (1008).
        if let Some(exp) = admission.expires {
            let in_ms = st
                .access
                .expiry_in_ms(exp, crate::access::token::unix_now_ms());
            liveness.expire_token(now_ms, in_ms);
        }
        let Some(c) = st.conns.get_mut(id) else {
            return;
        };
        c.phase = Phase::Open;
        c.set(flag::REGISTERED);
        if cont.sequenced {
            c.set(flag::SEQ);
        }
        c.liveness = liveness;
        c.write_progress = now_ms;
        // Access: everything-granted is a flag, a token's grants live in the access box.
        match admission.grants {
            Some(g) if g.is_all() => c.set(flag::ALL_GRANTS),
            Some(g) => c.access.get_or_insert_with(Box::default).grants = Some(g),
            None => {}
        }
        st.registered += 1;
        st.push_bytes(id.slot, Bytes::from(response));
        let role = match route {
            // At most max_topics_per_connection, de-duplicated (`route`).
            Route::Subscribe { topics, combined } => {
                if combined {
                    if let Some(c) = self.st.conns.get_mut(id) {
                        c.set(flag::STREAM);
                    }
                }
                for t in &topics {
                    self.subscribe_since(id.slot, t, cont.since(t));
                }
                Role::Subscriber
            }
            Route::Publisher(t) => Role::Publisher(Arc::from(t)),
            Route::Room(t) => {
                self.subscribe_since(id.slot, &t, cont.since(&t));
                Role::Publisher(Arc::from(t))
            }
            Route::Echo => Role::Echo,
            Route::HttpPublish(_) | Route::Preflight(_) => unreachable!("answered over HTTP"),
        };
        if let Some(c) = self.st.conns.get_mut(id) {
            c.set_role(role);
        }
        if self.st.shutting_down {
            self.st.close_with_bytes(
                id.slot,
                encode_close(CloseCode::GOING_AWAY, SHUTDOWN_REASON),
            );
        }
        if !leftover.is_empty() {
            self.handle_ws_input(id, &mut leftover);
        }
    }

    /// WebSocket input on `id` (possibly empty: decode what it holds).
    pub(crate) fn handle_ws_input(&mut self, id: ConnId, data: &mut [u8]) {
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        let max = if c.is_subscriber() {
            self.st.config.max_control_message_bytes
        } else {
            self.st.config.max_message_bytes
        };
        let deflate = c.deflate.is_on();
        let mut rx = c.rx.take().unwrap_or_else(|| {
            let mut decoder = Decoder::new(DecoderConfig {
                role: WsRole::Server,
                max_message_size: max,
            });
            // permessage-deflate: RSV1 marks a compressed message (`inflate_message`).
            decoder.set_permessage_deflate(deflate);
            Box::new(Rx {
                decoder,
                leftover: Vec::new(),
                charge: InboundCharge::new(self.st.ledger.clone()),
            })
        });
        // A stopped publisher keeps what still arrives, undecoded, until it may go on.
        if c.has(flag::HELD) || c.has(flag::STOPPED) {
            rx.leftover.extend_from_slice(data);
            c.rx = Some(rx);
            return;
        }
        if rx.leftover.is_empty() {
            let used = self.decode_all(id, data, &mut rx);
            rx.leftover.extend_from_slice(&data[used..]);
        } else {
            rx.leftover.extend_from_slice(data);
            let mut input = std::mem::take(&mut rx.leftover);
            let used = self.decode_all(id, &mut input, &mut rx);
            input.drain(..used);
            rx.leftover = input;
        }
        let now = self.st.now_ms;
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        // Whole frames a stopped publisher has not decoded yet are this side's doing, not an
        // unfinished message of the client's: never timed out or evicted for (still charged).
        let held_back = c.has(flag::HELD) || c.has(flag::STOPPED);
        let unfinished =
            rx.decoder.in_fragmented_message() || (!held_back && !rx.leftover.is_empty());
        // Isolation: an unfinished message is bounded in time (`fragment_timeout_ms`).
        c.liveness.on_partial(now, unfinished);
        // Idle connections keep nothing: no decoder, no buffer.
        if (rx.leftover.is_empty() && !rx.decoder.in_fragmented_message()) || c.closing() {
            return;
        }
        if rx.leftover.is_empty() && rx.leftover.capacity() > 4096 {
            rx.leftover = Vec::new();
        }
        // Isolation: unfinished input is charged to the ledger; over the shard's share of the
        // ceiling, the connection that holds it is evicted (its buffers go with it).
        let held = rx.leftover.capacity() + rx.decoder.reassembly_bytes();
        if rx.charge.set(held) && unfinished && !self.st.room_for_input(id.slot, held) {
            drop(rx);
            return self.st.evict(id.slot, Eviction::Ceiling);
        }
        if let Some(c) = self.st.conns.get_mut(id) {
            c.rx = Some(rx);
        }
    }

    /// Decode and handle every complete event in `input`; returns the bytes consumed.
    fn decode_all(&mut self, id: ConnId, input: &mut [u8], rx: &mut Rx) -> usize {
        let publishes = match self.st.conns.get(id) {
            Some(c) => c.publishes().cloned(),
            None => return 0,
        };
        // Access: the inbound rate limit (every frame counts), one clock value per batch.
        let limit = *self
            .st
            .access
            .limit(publishes.is_some() || self.is_echo(id));
        let now_ns = self.st.clock.ns(self.st.now);
        let mut off = 0;
        let mut seen = false;
        while off < input.len() {
            if self.st.conns.get(id).is_none_or(|c| c.closing()) {
                break;
            }
            // Asked before every frame, so a publisher stopped mid-read publishes at most the
            // message that stopped it; the rest waits in its leftover.
            if let Some(t) = &publishes {
                if self.st.publishing_stopped(t) {
                    self.st.stop_publisher(id, t);
                    if let Some(c) = self.st.conns.get_mut(id) {
                        c.set(flag::HELD);
                    }
                    break;
                }
            }
            let d = rx.decoder.decode(&mut input[off..]);
            let consumed = d.consumed;
            if consumed > 0 && d.result.is_ok() && !self.allow_frame(id, &limit, now_ns) {
                off += consumed;
                break;
            }
            match d.result {
                Ok(None) if consumed == 0 => break,
                Ok(None) => {}
                Ok(Some(ev)) => {
                    seen = true;
                    self.handle_event(id, ev);
                }
                Err(e) => {
                    self.st.stats().protocol_error(e.code.0);
                    self.st
                        .close_with_bytes(id.slot, encode_close(e.code, e.reason));
                }
            }
            off += consumed;
        }
        if seen && self.st.hb.enabled() {
            let now = self.st.now_ms;
            if let Some(c) = self.st.conns.get_mut(id) {
                c.liveness.on_inbound(now);
            }
        }
        off
    }

    /// Act on one event of `id`, by its role.
    fn handle_event(&mut self, id: ConnId, ev: Event<'_>) {
        match ev {
            Event::Message(m) => {
                // permessage-deflate: a compressed message is inflated first, within the limit
                // (`shard/deflate.rs`; `None`: it failed and the connection is closing).
                let inflated = match m.compressed {
                    true => match self.inflate_message(id, m.kind, m.payload.as_bytes()) {
                        Some(out) => Some(out),
                        None => return,
                    },
                    false => None,
                };
                let payload = inflated.as_deref().unwrap_or(m.payload.as_bytes());
                let s = self.st.stats();
                stats::add(&s.messages_in, 1);
                stats::add(&s.bytes_in, payload.len() as u64);
                let Some(role) = self.st.conns.get(id).map(|c| c.role()) else {
                    return;
                };
                match role {
                    Role::Subscriber => {
                        if m.kind == MessageKind::Text {
                            let max = self.st.config.max_topics_per_connection;
                            let reply = control::handle(
                                payload,
                                &mut SubsOf {
                                    core: self,
                                    slot: id.slot,
                                },
                                max,
                            );
                            if reply.denied {
                                stats::add(&self.st.stats().access.subscribe_denied, 1);
                            }
                            let frame = encode_frame(OpCode::Text, reply.text.as_bytes());
                            self.st.push_own(id.slot, frame);
                        }
                    }
                    Role::Publisher(topic) => self.publish(&topic, m.kind, payload),
                    Role::Echo => {
                        let op = match m.kind {
                            MessageKind::Text => OpCode::Text,
                            MessageKind::Binary => OpCode::Binary,
                        };
                        // permessage-deflate: compressed for this connection if it negotiated it.
                        let frame = self.st.own_frame(id.slot, op, payload);
                        self.st.push_own(id.slot, frame);
                    }
                }
                if let Some(out) = inflated {
                    self.st.deflate.recycle(out);
                }
            }
            Event::Ping(p) => self.st.push_pong(id.slot, encode_frame(OpCode::Pong, p)),
            Event::Pong(_) => {}
            Event::Close(code) => {
                let code = code.map_or(CloseCode::NORMAL, |(c, _)| c);
                self.st.close_with_bytes(id.slot, encode_close(code, ""));
            }
        }
    }
}

/// A subscriber's continuity parameters (`seq=1`, `since=`, `epoch=`); other routes have none.
fn continuity_of(route: &Route, query: Option<&str>) -> Result<Continuity, String> {
    match route {
        Route::Subscribe { .. } | Route::Room(_) => params::from_query(query, route.subscribes()),
        _ => Ok(Continuity::default()),
    }
}

/// A connection's subscriptions as control messages see them.
struct SubsOf<'a> {
    core: &'a mut Core,
    slot: u32,
}

impl SubsOf<'_> {
    fn conn(&self) -> Option<&Conn> {
        self.core.st.conns.at(self.slot)
    }
}

impl Subscriptions for SubsOf<'_> {
    fn count(&self) -> usize {
        // Continuity: sequenced subscriptions still replaying count as subscribed.
        self.conn().map_or(0, |c| c.subs.len()) + self.core.st.desk.pending_topics(self.slot).len()
    }
    fn for_each(&self, f: &mut dyn FnMut(&str)) {
        if let Some(c) = self.conn() {
            c.subs.for_each(|t| f(t));
        }
        for t in self.core.st.desk.pending_topics(self.slot) {
            f(&t);
        }
    }
    fn contains(&self, topic: &str) -> bool {
        self.core
            .st
            .conns
            .at(self.slot)
            .is_some_and(|c| c.subs.contains(topic))
            || self.core.st.desk.is_pending(self.slot, topic)
    }
    fn subscribe(&mut self, topic: &str) {
        self.core.subscribe(self.slot, topic);
    }
    fn room(&self) -> usize {
        self.core.st.subscription_room()
    }
    fn unsubscribe(&mut self, topic: &str) {
        self.core.unsubscribe(self.slot, topic);
    }
    fn may_subscribe(&self, topic: &str) -> bool {
        let Some(c) = self.conn() else {
            return false;
        };
        let grants = c.access.as_ref().and_then(|a| a.grants.as_deref());
        c.has(flag::ALL_GRANTS) || self.core.st.access.may_subscribe(grants, topic)
    }
    fn combined(&self) -> bool {
        self.conn().is_some_and(|c| c.has(flag::STREAM))
    }
    fn set_combined(&mut self, on: bool) {
        if let Some(c) = self.core.st.conns.at_mut(self.slot) {
            if on {
                c.set(flag::STREAM);
            } else {
                c.clear(flag::STREAM);
            }
        }
    }
    fn sequenced(&self) -> bool {
        self.core
            .st
            .conns
            .at(self.slot)
            .is_some_and(|c| c.has(flag::SEQ))
    }
    fn subscribe_since(&mut self, topic: &str, since: Option<crate::continuity::Position>) {
        self.core.subscribe_since(self.slot, topic, since);
    }
}

impl Core {
    fn is_echo(&self, id: ConnId) -> bool {
        self.st.conns.get(id).is_some_and(|c| c.has(flag::ECHO))
    }

    /// Charge one inbound frame of `id` to its rate bucket; over the limit it is closed 1008
    /// and counted (access, issue 14).
    fn allow_frame(&mut self, id: ConnId, limit: &Limit, now_ns: u64) -> bool {
        let Some(c) = self.st.conns.get_mut(id) else {
            return false;
        };
        if access_state::allow_frame(&mut c.access, limit, now_ns) {
            return true;
        }
        stats::add(&self.st.stats().access.rate_limited, 1);
        let close = encode_close(CloseCode::POLICY, "too many requests");
        self.st.close_with_bytes(id.slot, close);
        false
    }
}
