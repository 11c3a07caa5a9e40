//! A tiny WebSocket client for the README tour: connects to a shardcast URL and prints every
//! message it receives (and which shard served it), optionally sending control messages first.
//!
//! ```text
//! cargo run -p shardcast --example tail -- ws://127.0.0.1:8080/ws/prices
//! cargo run -p shardcast --example tail -- ws://127.0.0.1:8080/stream?streams=a/b
//! cargo run -p shardcast --example tail -- ws://127.0.0.1:8080/ws/a '{"method":"SUBSCRIBE","params":["b"],"id":1}'
//! cargo run -p shardcast --example tail -- --count 3 ws://127.0.0.1:8080/ws/prices
//! ```
//! Uses `tungstenite`, an implementation nobody on this project wrote.

use std::process::ExitCode;
use tungstenite::Message;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--count N` exits after N data messages (handy in scripts).
    let mut count: Option<u64> = None;
    if let Some(i) = args.iter().position(|a| a == "--count") {
        if i + 1 >= args.len() {
            eprintln!("--count needs a number");
            return ExitCode::from(2);
        }
        match args[i + 1].parse() {
            Ok(n) => count = Some(n),
            Err(_) => {
                eprintln!("--count needs a number");
                return ExitCode::from(2);
            }
        }
        args.drain(i..=i + 1);
    }
    let Some(url) = args.first().cloned() else {
        eprintln!("usage: tail [--count N] ws://HOST:PORT/ws/<topic> [control-message ...]");
        return ExitCode::from(2);
    };
    let (mut ws, response) = match tungstenite::connect(url.as_str()) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("connect {url}: {e}");
            return ExitCode::from(1);
        }
    };
    let shard = response
        .headers()
        .get("x-shardcast-shard")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    eprintln!("connected to {url} (shard {shard})");
    for control in &args[1..] {
        if let Err(e) = ws.send(Message::text(control.as_str())) {
            eprintln!("send: {e}");
            return ExitCode::from(1);
        }
    }
    let mut seen = 0u64;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => println!("{t}"),
            Ok(Message::Binary(b)) => println!("<{} bytes binary>", b.len()),
            Ok(Message::Close(frame)) => {
                eprintln!("closed by server: {frame:?}");
                return ExitCode::SUCCESS;
            }
            Ok(_) => continue,
            Err(e) => {
                eprintln!("read: {e}");
                return ExitCode::from(1);
            }
        }
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            let _ = ws.close(None);
            return ExitCode::SUCCESS;
        }
    }
}
