//! `naive-server`: the "bare send() loop" reference. One thread, std non-blocking sockets,
//! `poll(2)` over every descriptor each turn, the handshake via proto, and a broadcast that is a
//! plain `send()` per subscriber per message (a connection's unsent remainder waits in its own
//! buffer for POLLOUT, so frames never interleave). Same routes as shardcast: `/ws/<topic>`,
//! `/pub/<topic>`, `/room/<topic>`.

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

/// A single-threaded broadcast server over `poll(2)`.
pub struct NaiveServer {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    topics: HashMap<String, Vec<usize>>,
}

impl NaiveServer {
    /// Binds `addr` (non-blocking).
    pub fn bind(addr: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(NaiveServer {
            listener,
            conns: Vec::new(),
            topics: HashMap::new(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `turns` poll rounds have run (`None`: forever).
    pub fn serve(&mut self, turns: Option<u64>) -> io::Result<()> {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        let mut scratch = vec![0u8; 64 * 1024];
        let mut turn = 0u64;
        while turns.is_none_or(|t| turn < t) {
            turn += 1;
            fds.clear();
            slots.clear();
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
            for (i, c) in self.conns.iter().enumerate() {
                if let Some(c) = c {
                    let mut ev = libc::POLLIN;
                    if !c.pending.is_empty() {
                        ev |= libc::POLLOUT;
                    }
                    fds.push(pollfd(c.sock.as_raw_fd(), ev));
                    slots.push(i);
                }
            }
            // SAFETY: `fds` is a live, initialised slice of pollfd and its length is passed.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                self.accept_all();
            }
            for (k, &slot) in slots.iter().enumerate() {
                let re = fds[k + 1].revents;
                if re == 0 {
                    continue;
                }
                if re & libc::POLLOUT != 0 {
                    if let Some(c) = self.conns[slot].as_mut() {
                        c.flush();
                    }
                }
                if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.readable(slot, &mut scratch);
                }
            }
            self.reap();
        }
        Ok(())
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
            };
            match self.conns.iter().position(Option::is_none) {
                Some(i) => self.conns[i] = Some(conn),
                None => self.conns.push(Some(conn)),
            }
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
                Ok(n) => c.inbuf.extend_from_slice(&scratch[..n]),
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

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn route_of(path: &str) -> Option<(Route, &str)> {
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
                if route != Route::Publish {
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
    }

    #[test]
    fn publisher_reaches_subscribers_through_poll_loop() {
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
