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

use crate::conn::admission::{self, Load};
use crate::conn::control::{self, Subscriptions};
use crate::conn::heartbeat::Liveness;
use crate::conn::route::Route;
use crate::conn::state::{flag, Body, Conn, Http, Phase, Role, Rx};
use crate::conn::upgrade::{self, Decision};
use crate::continuity::params::{self, Continuity};
use crate::obs::latency::LatencyKind;
use crate::obs::stats::{self, Refusal};
use crate::runtime::driver::{Admit, ConnId, IoRequest};
use crate::shard::Core;

impl Core {
    /// A connection was accepted from `peer`: admit it (a slot, reading its request under the
    /// handshake deadline) or refuse it over the limits.
    pub fn handle_accepted(&mut self, peer: SocketAddr) -> Admit {
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
        });
        let id = st.conns.insert(Conn::accepted(http));
        let timeout = st
            .config
            .handshake_timeout_ms
            .min(crate::conn::heartbeat::MAX_DURATION_MS) as u32;
        st.set_deadline(id, st.now_ms.wrapping_add(timeout));
        st.io.push_back(IoRequest::Read(id));
        Admit::Accept(id)
    }

    /// `data` arrived on `id`.
    pub fn handle_received(&mut self, id: ConnId, data: &mut [u8]) {
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        match c.phase {
            Phase::Http => {
                if let Some(http) = c.http.as_mut() {
                    http.buf.extend_from_slice(data);
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
                    match upgrade::decide(&request, http.peer.ip(), &st.config, st.id, |t| {
                        st.publish_refusal(t)
                    }) {
                        Decision::Publish {
                            topic,
                            text,
                            length,
                        } => {
                            http.body = Some(Body {
                                topic,
                                text,
                                head_len,
                                length,
                            });
                            continue;
                        }
                        Decision::Upgrade(route, response) => {
                            // Continuity: `seq=1`, `since=`, `epoch=` of a subscriber.
                            match continuity_of(&route, request.query()) {
                                Ok(cont) => {
                                    let leftover = http.buf.split_off(head_len);
                                    let accepted_at = http.accepted_at;
                                    self.st.recycle(http.buf);
                                    return self.upgrade(
                                        id,
                                        accepted_at,
                                        (route, cont),
                                        response,
                                        leftover,
                                    );
                                }
                                Err(why) => upgrade::bad_request(&why),
                            }
                        }
                        refuse => refuse,
                    }
                }
            };
            let Decision::Refuse(why, response) = decision else {
                unreachable!("publish and upgrade return above")
            };
            self.st.stats().refuse(why);
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
                    upgrade::published()
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
        (route, cont): (Route, Continuity),
        response: Vec<u8>,
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
        let liveness = Liveness::new(st.now_ms, seed, &st.hb);
        let now_ms = st.now_ms;
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
        st.registered += 1;
        st.push_bytes(id.slot, Bytes::from(response));
        let max_topics = st.config.max_topics_per_connection;
        let role = match route {
            Route::Subscribe(t) => {
                self.subscribe_since(id.slot, &t, cont.since(&t));
                Role::Subscriber
            }
            Route::Stream(ts) => {
                if let Some(c) = self.st.conns.get_mut(id) {
                    c.set(flag::STREAM);
                }
                for t in ts.iter().take(max_topics) {
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
            Route::HttpPublish(_) => unreachable!("decided as a publish"),
        };
        if let Some(c) = self.st.conns.get_mut(id) {
            c.role = role;
        }
        if self.st.shutting_down {
            self.st
                .close_with_bytes(id.slot, encode_close(CloseCode::GOING_AWAY, ""));
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
        let max = match c.role {
            Role::Subscriber => self.st.config.max_control_message_bytes,
            _ => self.st.config.max_message_bytes,
        };
        let mut rx = c.rx.take().unwrap_or_else(|| {
            Box::new(Rx {
                decoder: Decoder::new(DecoderConfig {
                    role: WsRole::Server,
                    max_message_size: max,
                }),
                leftover: Vec::new(),
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
        let Some(c) = self.st.conns.get_mut(id) else {
            return;
        };
        // Idle connections keep nothing: no decoder, no buffer.
        if rx.leftover.is_empty() && !rx.decoder.in_fragmented_message() {
            return;
        }
        if rx.leftover.is_empty() && rx.leftover.capacity() > 4096 {
            rx.leftover = Vec::new();
        }
        c.rx = Some(rx);
    }

    /// Decode and handle every complete event in `input`; returns the bytes consumed.
    fn decode_all(&mut self, id: ConnId, input: &mut [u8], rx: &mut Rx) -> usize {
        let publishes = match self.st.conns.get(id).map(|c| &c.role) {
            Some(Role::Publisher(t)) => Some(t.clone()),
            Some(_) => None,
            None => return 0,
        };
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
                let payload = m.payload.as_bytes();
                let s = self.st.stats();
                stats::add(&s.messages_in, 1);
                stats::add(&s.bytes_in, payload.len() as u64);
                let Some(role) = self.st.conns.get(id).map(|c| c.role.clone()) else {
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
                            self.st
                                .push_own(id.slot, encode_frame(OpCode::Text, reply.as_bytes()));
                        }
                    }
                    Role::Publisher(topic) => self.publish(&topic, m.kind, payload),
                    Role::Echo => {
                        let op = match m.kind {
                            MessageKind::Text => OpCode::Text,
                            MessageKind::Binary => OpCode::Binary,
                        };
                        self.st.push_own(id.slot, encode_frame(op, payload));
                    }
                }
            }
            Event::Ping(p) => self.st.push_own(id.slot, encode_frame(OpCode::Pong, p)),
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
    let topics = match route {
        Route::Subscribe(t) | Route::Room(t) => std::slice::from_ref(t),
        Route::Stream(ts) => ts.as_slice(),
        _ => return Ok(Continuity::default()),
    };
    params::from_query(query, topics)
}

/// A connection's subscriptions as control messages see them.
struct SubsOf<'a> {
    core: &'a mut Core,
    slot: u32,
}

impl Subscriptions for SubsOf<'_> {
    fn list(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .core
            .st
            .conns
            .at(self.slot)
            .map(|c| c.subs.names().iter().map(|t| t.to_string()).collect())
            .unwrap_or_default();
        // Continuity: sequenced subscriptions still replaying count as subscribed.
        list.extend(self.core.st.desk.pending_topics(self.slot));
        list
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
    fn unsubscribe(&mut self, topic: &str) {
        self.core.unsubscribe(self.slot, topic);
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
