//! Peer baseline for `shardcast-bench`: the same routes as shardcast, written the way a typical
//! Rust user writes a broadcast server: tokio's multi-thread runtime, tokio-tungstenite, one task
//! per connection and a `tokio::sync::broadcast` channel per topic.
//!
//! Routes: `/ws/<topic>` subscribes (its messages are ignored), `/pub/<topic>` publishes every
//! message it sends, `/room/<topic>` does both (the sender receives its own messages).
//! Usage: `tokio-tungstenite-peer [--listen IP:PORT] [--capacity N]`.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Topic name to its channel; a channel lives as long as the process (typical, and simplest).
type Topics = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Subscribe,
    Publish,
    Room,
}

fn parse_route(path: &str) -> Option<(Route, String)> {
    let path = path.split('?').next().unwrap_or(path);
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let route = match parts.next()? {
        "ws" => Route::Subscribe,
        "pub" => Route::Publish,
        "room" => Route::Room,
        _ => return None,
    };
    let topic = parts.next().filter(|t| !t.is_empty() && !t.contains('/'))?;
    Some((route, topic.to_string()))
}

fn channel(topics: &Topics, topic: &str, capacity: usize) -> broadcast::Sender<Message> {
    let mut map = topics.lock().expect("topics lock");
    map.entry(topic.to_string())
        .or_insert_with(|| broadcast::channel(capacity).0)
        .clone()
}

// tungstenite's handshake callback signature returns its (large) ErrorResponse by value.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, topics: Topics, capacity: usize) {
    let _ = stream.set_nodelay(true);
    let mut route = None;
    let callback = |req: &Request, resp: Response| {
        route = parse_route(req.uri().path());
        if route.is_some() {
            Ok(resp)
        } else {
            let mut not_found =
                tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(None);
            *not_found.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some((route, topic)) = route else { return };
    let tx = channel(&topics, &topic, capacity);
    let (mut sink, mut source) = ws.split();
    let mut rx = (route != Route::Publish).then(|| tx.subscribe());
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(msg @ (Message::Binary(_) | Message::Text(_)))) => {
                    if route != Route::Subscribe {
                        // No receivers is not an error for a broadcast.
                        let _ = tx.send(msg);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = async { rx.as_mut().expect("guarded by select").recv().await }, if rx.is_some() => match out {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                // A lagging receiver skips what it missed: what a typical server does.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut capacity = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen IP:PORT"),
            "--capacity" => {
                capacity = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--capacity N")
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        println!(
            "tokio-tungstenite listening on {}",
            listener.local_addr().expect("local addr")
        );
        let topics: Topics = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream, topics.clone(), capacity));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(parse_route("/ws/a"), Some((Route::Subscribe, t)) if t == "a"));
        assert!(matches!(parse_route("/pub/b?x=1"), Some((Route::Publish, t)) if t == "b"));
        assert!(matches!(parse_route("/room/c"), Some((Route::Room, t)) if t == "c"));
        assert!(parse_route("/ws/").is_none());
        assert!(parse_route("/other/x").is_none());
        assert!(parse_route("/ws/a/b").is_none());
    }
}
