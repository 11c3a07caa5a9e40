//! Reading the server's `/stats` JSON from its admin listener (plain HTTP/1.1, one request per
//! connection), so a scenario can sample counters such as `retained_bytes` while it runs.

use serde_json::{Map, Value};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Parses `http://IP:PORT[/...]` into the admin address (an IP literal: loopback only).
pub fn parse_admin_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("admin URL must start with http://: {url}"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .parse()
        .map_err(|e| format!("bad admin address {hostport:?}: {e}"))
}

/// GETs `/stats` and returns its JSON body.
pub fn fetch_stats(addr: SocketAddr, timeout: Duration) -> io::Result<Value> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    parse_response(&resp)
}

fn parse_response(resp: &[u8]) -> io::Result<Value> {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let line = head.lines().next().unwrap_or("").to_string();
        return Err(io::Error::other(format!("/stats answered {line}")));
    }
    let body = &resp[split + 4..];
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&body).map_err(|e| io::Error::other(format!("/stats JSON: {e}")))
}

fn dechunk(mut b: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::other("bad chunked body");
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(bad)?);
        b = b.get(size + 2..).ok_or_else(bad)?;
    }
}

/// The numeric fields of a /stats document, nested objects flattened with dotted keys
/// (`totals.messages_out`); per-shard arrays are left out. Fields added by later server builds
/// (`retained_bytes`, eviction counters) appear without a change here.
pub fn numeric_fields(stats: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    flatten("", stats, &mut out);
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Number(_) if !prefix.is_empty() => {
            out.insert(prefix.to_string(), v.clone());
        }
        Value::Object(o) => {
            for (k, v) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        assert_eq!(
            parse_admin_url("http://127.0.0.1:9090/stats").unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert!(parse_admin_url("ws://127.0.0.1:1").is_err());
    }

    #[test]
    fn plain_and_chunked_bodies() {
        let plain =
            b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{\"retained_bytes\":5,\"x\":\"s\"}";
        let v = parse_response(plain).unwrap();
        assert_eq!(v["retained_bytes"], 5);
        assert_eq!(numeric_fields(&v).len(), 1);
        let nested: Value =
            serde_json::from_str(r#"{"a":1,"totals":{"b":2,"c":{"d":3}},"shards":[{"e":4}]}"#)
                .unwrap();
        let m = numeric_fields(&nested);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["a", "totals.b", "totals.c.d"]
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap()["a"], 1);
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }

    #[test]
    fn fetches_from_a_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 512];
            let n = s.read(&mut b).unwrap();
            assert!(b[..n].starts_with(b"GET /stats "));
            let body = "{\"active_connections\":3}";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).unwrap();
        });
        let v = fetch_stats(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(v["active_connections"], 3);
    }
}
