//! `naive-server`: the "bare send() loop" reference. One thread, std non-blocking sockets,
//! level-triggered `epoll` (a connection's interest is `EPOLLIN`, plus `EPOLLOUT` only while it
//! has an unsent remainder), the handshake via proto, and a broadcast that is a plain `send()`
//! per subscriber per message (the remainder waits in the connection's own buffer, so frames
//! never interleave). Same routes as shardcast: `/ws/<topic>`, `/pub/<topic>`,
//! `/room/<topic>`, `/echo`. The floor a server's per-operation CPU is compared with: it does
//! the least work per message a readiness loop can do (reads until the socket is empty, one
//! `send` per message), with none of the engine's accounting.

use shardcast_proto::handshake::{self, write_rejection, write_switching_protocols};
use shardcast_proto::http::{HttpError, Parse, RequestParser, Status};
use shardcast_proto::{encode_frame, encode_pong, Decoder, DecoderConfig, Event, MessageKind};
use shardcast_proto::{OpCode, Role};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

/// `naive-server` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct NaiveArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Subscribe,
    Publish,
    Room,
    Echo,
}

enum State {
    Handshake(RequestParser),
    Open {
        route: Route,
        topic: String,
        decoder: Decoder,
    },
}

struct Conn {
    sock: TcpStream,
    state: State,
    inbuf: Vec<u8>,
    /// Bytes a non-blocking send() could not take yet.
    pending: Vec<u8>,
    /// Close once `pending` is flushed.
    closing: bool,
    dead: bool,
    /// `EPOLLOUT` is in this connection's interest (it has an unsent remainder).
    want_out: bool,
}

impl Conn {
    /// Plain non-blocking send; whatever the kernel does not take waits in `pending`.
    fn send(&mut self, bytes: &[u8]) {
        if self.dead {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(bytes);
            return;
        }
        match self.sock.write(bytes) {
            Ok(n) => self.pending.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.pending.extend_from_slice(bytes),
            Err(_) => self.dead = true,
        }
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.sock.write(&self.pending) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.closing {
            self.dead = true;
        }
    }
}

/// What a received message asks the loop to do (the loop owns every other connection).
enum Action {
    Broadcast(String, OpCode, Vec<u8>),
    Subscribe(String),
}

/// A single-threaded broadcast server over `epoll`.
pub struct NaiveServer {
    listener: TcpListener,
    ep: std::os::fd::OwnedFd,
    conns: Vec<Option<Conn>>,
    topics: HashMap<String, Vec<usize>>,
}

const LISTENER: u64 = u64::MAX;

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` lives across the call; epoll_ctl reads it (ignored for DEL).
    unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
}

impl NaiveServer {
    /// Binds `addr` (non-blocking).
    pub fn bind(addr: &str) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` was just returned by epoll_create1 and is owned by nothing else.
        let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        );
        Ok(NaiveServer {
            listener,
            ep,
            conns: Vec::new(),
            topics: HashMap::new(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `turns` epoll rounds have run (`None`: forever).
    pub fn serve(&mut self, turns: Option<u64>) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut scratch = vec![0u8; 64 * 1024];
        let mut turn = 0u64;
        while turns.is_none_or(|t| turn < t) {
            turn += 1;
            // SAFETY: `events` is a live buffer of `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    100,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (data, re) = (ev.u64, ev.events);
                if data == LISTENER {
                    self.accept_all();
                    continue;
                }
                let slot = data as usize;
                if re & libc::EPOLLOUT as u32 != 0 {
                    if let Some(c) = self.conns[slot].as_mut() {
                        c.flush();
                    }
                }
                if re & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.readable(slot, &mut scratch);
                }
            }
            self.update_interest();
            self.reap();
        }
        Ok(())
    }

    /// `EPOLLOUT` only while a connection has an unsent remainder.
    fn update_interest(&mut self) {
        let ep = self.ep.as_raw_fd();
        for (slot, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            let want = !c.pending.is_empty() && !c.dead;
            if want != c.want_out {
                c.want_out = want;
                let events = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
                ctl(
                    ep,
                    libc::EPOLL_CTL_MOD,
                    c.sock.as_raw_fd(),
                    events,
                    slot as u64,
                );
            }
        }
    }

    fn accept_all(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = sock.set_nodelay(true);
            let conn = Conn {
                sock,
                state: State::Handshake(RequestParser::default()),
                inbuf: Vec::new(),
                pending: Vec::new(),
                closing: false,
                dead: false,
                want_out: false,
            };
            let slot = match self.conns.iter().position(Option::is_none) {
                Some(i) => {
                    self.conns[i] = Some(conn);
                    i
                }
                None => {
                    self.conns.push(Some(conn));
                    self.conns.len() - 1
                }
            };
            let fd = self.conns[slot]
                .as_ref()
                .expect("just stored")
                .sock
                .as_raw_fd();
            ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                libc::EPOLLIN as u32,
                slot as u64,
            );
        }
    }

    fn readable(&mut self, slot: usize, scratch: &mut [u8]) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        loop {
            match c.sock.read(scratch) {
                Ok(0) => {
                    c.dead = true;
                    break;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&scratch[..n]);
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.dead = true;
                    break;
                }
            }
        }
        let actions = process(c);
        for a in actions {
            match a {
                Action::Subscribe(topic) => self.topics.entry(topic).or_default().push(slot),
                Action::Broadcast(topic, op, payload) => {
                    let frame = encode_frame(op, &payload);
                    let subs = self.topics.get(&topic).map_or(&[][..], Vec::as_slice);
                    for &s in subs {
                        if let Some(sub) = self.conns[s].as_mut() {
                            sub.send(&frame);
                        }
                    }
                }
            }
        }
    }

    fn reap(&mut self) {
        let mut any = false;
        for c in self.conns.iter_mut() {
            if c.as_ref().is_some_and(|c| c.dead) {
                // Closing the socket drops it from the epoll set.
                *c = None;
                any = true;
            }
        }
        if any {
            let conns = &self.conns;
            self.topics.retain(|_, subs| {
                subs.retain(|&s| conns[s].is_some());
                !subs.is_empty()
            });
        }
    }
}

fn route_of(path: &str) -> Option<(Route, &str)> {
    if path == "/echo" {
        return Some((Route::Echo, "echo"));
    }
    let (route, topic) = if let Some(t) = path.strip_prefix("/ws/") {
        (Route::Subscribe, t)
    } else if let Some(t) = path.strip_prefix("/pub/") {
        (Route::Publish, t)
    } else {
        (Route::Room, path.strip_prefix("/room/")?)
    };
    (!topic.is_empty() && !topic.contains('/')).then_some((route, topic))
}

/// Runs the connection's state machine over its input; returns what the loop must do.
fn process(c: &mut Conn) -> Vec<Action> {
    let mut actions = Vec::new();
    if let State::Handshake(parser) = &mut c.state {
        let (reply, opened, used) = match parser.parse(&c.inbuf) {
            Ok(Parse::Partial) => return actions,
            Ok(Parse::Complete { request, head_len }) => {
                let mut out = Vec::new();
                let checked = handshake::validate_upgrade(&request).and_then(|up| {
                    route_of(up.path())
                        .map(|(r, t)| (up.accept_key(), r, t.to_string()))
                        .ok_or(HttpError::new(Status::NotFound, "unknown route"))
                });
                match checked {
                    Ok((accept, route, topic)) => {
                        write_switching_protocols(&mut out, &accept, None, &[]);
                        (out, Some((route, topic)), head_len)
                    }
                    Err(e) => {
                        write_rejection(&mut out, &e);
                        (out, None, head_len)
                    }
                }
            }
            Err(e) => {
                let mut out = Vec::new();
                write_rejection(&mut out, &e);
                (out, None, c.inbuf.len())
            }
        };
        c.inbuf.drain(..used);
        c.send(&reply);
        match opened {
            Some((route, topic)) => {
                if matches!(route, Route::Subscribe | Route::Room) {
                    actions.push(Action::Subscribe(topic.clone()));
                }
                c.state = State::Open {
                    route,
                    topic,
                    decoder: Decoder::new(DecoderConfig {
                        role: Role::Server,
                        max_message_size: 1 << 20,
                    }),
                };
            }
            None => {
                c.closing = true;
                c.flush();
                return actions;
            }
        }
    }
    let State::Open {
        route,
        topic,
        decoder,
    } = &mut c.state
    else {
        return actions;
    };
    let mut pos = 0;
    let mut replies: Vec<bytes::Bytes> = Vec::new();
    loop {
        let d = decoder.decode(&mut c.inbuf[pos..]);
        pos += d.consumed;
        match d.result {
            Ok(None) if d.consumed == 0 => break,
            Ok(None) | Ok(Some(Event::Pong(_))) => {}
            Ok(Some(Event::Message(m))) if *route == Route::Echo => {
                let op = match m.kind {
                    MessageKind::Text => OpCode::Text,
                    MessageKind::Binary => OpCode::Binary,
                };
                replies.push(encode_frame(op, m.payload.as_bytes()));
            }
            Ok(Some(Event::Message(m))) => {
                if *route != Route::Subscribe {
                    let op = match m.kind {
                        MessageKind::Text => OpCode::Text,
                        MessageKind::Binary => OpCode::Binary,
                    };
                    actions.push(Action::Broadcast(
                        topic.clone(),
                        op,
                        m.payload.as_bytes().to_vec(),
                    ));
                }
            }
            Ok(Some(Event::Ping(p))) => replies.push(encode_pong(p)),
            Ok(Some(Event::Close(_))) | Err(_) => {
                c.closing = true;
                break;
            }
        }
    }
    c.inbuf.drain(..pos);
    for r in replies {
        c.send(&r);
    }
    if c.closing {
        c.flush();
    }
    actions
}

/// Runs the server until killed.
pub fn run(args: NaiveArgs) -> Result<(), String> {
    let mut server = NaiveServer::bind(&args.listen).map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    println!("naive listening on {addr}");
    server.serve(None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(route_of("/ws/a") == Some((Route::Subscribe, "a")));
        assert!(route_of("/room/r") == Some((Route::Room, "r")));
        assert!(route_of("/pub/").is_none());
        assert!(route_of("/other").is_none());
        assert!(route_of("/echo") == Some((Route::Echo, "echo")));
    }

    #[test]
    fn publisher_reaches_subscribers_through_the_epoll_loop() {
        use tungstenite::Message;
        let mut server = NaiveServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        // Bounded: 100 ms poll timeout, at most 50 turns.
        let srv = std::thread::spawn(move || server.serve(Some(50)));
        let (mut sub, _) = tungstenite::connect(format!("ws://{addr}/ws/t")).unwrap();
        let (mut room, _) = tungstenite::connect(format!("ws://{addr}/room/t")).unwrap();
        let (mut publ, _) = tungstenite::connect(format!("ws://{addr}/pub/t")).unwrap();
        for ws in [&sub, &room] {
            let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() else {
                unreachable!("plain TCP")
            };
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        for i in 0..3u8 {
            publ.send(Message::Binary(vec![i; 20].into())).unwrap();
        }
        room.send(Message::Text("hi".into())).unwrap();
        // Per publisher order is kept; across the two publishers it is arrival order.
        let expect = |ws: &mut tungstenite::WebSocket<_>| {
            let mut got: Vec<Message> = (0..4).map(|_| ws.read().unwrap()).collect();
            got.sort_by_key(|m| m.is_text());
            got
        };
        let want = vec![
            Message::Binary(vec![0; 20].into()),
            Message::Binary(vec![1; 20].into()),
            Message::Binary(vec![2; 20].into()),
            Message::Text("hi".into()),
        ];
        assert_eq!(expect(&mut sub), want);
        assert_eq!(expect(&mut room), want);
        drop((sub, room, publ));
        srv.join().unwrap().unwrap();
    }
}
