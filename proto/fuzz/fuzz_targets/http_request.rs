//! Fuzz the request parser and upgrade validation.
//!
//! Input layout: byte 0 chooses how the rest is split into reads (0 = one read), the remaining
//! bytes are what the peer sends. Properties: nothing panics, and feeding in pieces gives the
//! same outcome as feeding everything at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast_proto::handshake::{validate_upgrade, write_rejection, write_switching_protocols};
use shardcast_proto::http::{write_response, HttpError, Parse, RequestLimits, RequestParser, Status};

/// Comparable outcome: `Ok(None)` partial, `Ok(Some(head_len))` complete, or the error.
fn outcome(r: &Result<Parse<'_>, HttpError>) -> Result<Option<usize>, HttpError> {
    match r {
        Ok(Parse::Partial) => Ok(None),
        Ok(Parse::Complete { head_len, .. }) => Ok(Some(*head_len)),
        Err(e) => Err(*e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // Small limits so the fuzzer reaches the limit paths quickly.
    let limits = RequestLimits { max_head_bytes: 1024, max_headers: 16 };

    let mut whole_parser = RequestParser::new(limits);
    let whole = whole_parser.parse(input);

    // Grow the buffer in pseudo-random steps derived from `split`.
    let mut parser = RequestParser::new(limits);
    let mut end = 0;
    let mut step = 0usize;
    let pieces = loop {
        end = if split == 0 {
            input.len()
        } else {
            step += 1;
            (end + 1 + (usize::from(split).wrapping_mul(step * 7 + 3) % 37)).min(input.len())
        };
        let r = parser.parse(&input[..end]);
        if end == input.len() || !matches!(r, Ok(Parse::Partial)) {
            break r;
        }
    };
    assert_eq!(outcome(&pieces), outcome(&whole), "split feed disagrees with whole feed");

    let mut out = Vec::new();
    match whole {
        Ok(Parse::Complete { request, .. }) => {
            let _ = request.content_length();
            let _ = request.query_param("token");
            let _ = request.is_websocket_upgrade();
            match validate_upgrade(&request) {
                Ok(up) => {
                    let _ = (up.origin(), up.authorization(), up.path(), up.query());
                    let chosen = up.protocols().last();
                    write_switching_protocols(&mut out, &up.accept_key(), chosen, &[]);
                }
                Err(e) => write_rejection(&mut out, &e),
            }
        }
        Ok(Parse::Partial) => {}
        Err(e) => {
            write_rejection(&mut out, &e);
            write_response(&mut out, Status::Ok, &[], "text/plain", input);
        }
    }
});
