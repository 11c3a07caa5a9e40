//! Reading HdrHistogram V2 interval logs (files written by `shardcast --histogram-log`, or the
//! body of the admin listener's `/histograms`), and a minimal blocking HTTP GET for the latter.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

/// Timeout for each admin request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The sum of every interval histogram in `log` (an empty histogram when it has none).
pub fn sum_intervals(log: &[u8]) -> io::Result<Histogram<u64>> {
    // Auto-resizing, so intervals with any range (and precision up to 3 digits) add in.
    let mut total = Histogram::<u64>::new(3).expect("3 significant digits are valid");
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(log) {
        let entry = entry.map_err(|e| invalid(format!("interval log: {e:?}")))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| invalid(format!("interval log base64: {e}")))?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| invalid(format!("interval log histogram: {e:?}")))?;
        total
            .add(&h)
            .map_err(|e| invalid(format!("adding intervals: {e:?}")))?;
    }
    Ok(total)
}

/// `GET path` from `host:port` over plain HTTP/1.1; the body of a 200 response.
pub fn http_get(authority: &str, path: &str) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(authority)?;
    tcp.set_read_timeout(Some(HTTP_TIMEOUT))?;
    tcp.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("GET {path}: incomplete response")))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        // The admin listener says why in the body's first line (e.g. the valid kinds).
        let first = head.lines().next().unwrap_or("");
        let body = String::from_utf8_lossy(&response[split + 4..]);
        let why = body.lines().next().unwrap_or("");
        return Err(invalid(format!("GET {path}: {first}: {why}")));
    }
    Ok(response[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;

    #[test]
    fn intervals_are_summed() {
        let mut log = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("test")
            .begin_log_with(&mut log, &mut ser)
            .unwrap();
        for v in [10u64, 20_000] {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
            h.record_n(v, 3).unwrap();
            w.write_histogram(&h, Duration::ZERO, Duration::from_secs(1), Tag::new("t"))
                .unwrap();
        }
        let total = sum_intervals(&log).unwrap();
        assert_eq!(total.len(), 6);
        assert_eq!(total.value_at_quantile(0.5), 10);
        // 2 significant digits: 20 000 comes back within 1%.
        assert!((19_800..=20_200).contains(&total.max()), "{}", total.max());
    }
}
